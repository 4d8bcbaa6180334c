"""Dataset preparation: a source -> OUT/Processed/{train,val[,test]}/{0,1}/*.npy plus manifests.

Sources (see sources.py): the RSNA challenge layout, class folders (Kermany style, with their own
train/val/test folders kept), or a MedMNIST .npz.

Outputs (all written atomically, so an interrupted run never leaves a half-written file):
  Processed/<split>/<label>/<stem>.npy   float32 (S, S) in [0, 1], S = --image-size (224 by default)
  manifest.csv    file, label, split, patient, source, xxh3_128 (hash of the saved pixels), sex, age, view, finding
  boxes.csv       file, patient, x, y, width, height   (ground-truth boxes in the S-px space)
  rejected.csv    source, reason                        (every input file not in the manifest)
  stats.json      counts, training-split pixel mean/std, data fingerprint, settings, version
A rerun with the same settings skips finished images (resume); nothing is silently dropped:
manifest rows + rejected rows = input files.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xxhash
from tqdm import tqdm

from pneumocam import __version__
from pneumocam.config import CAM_STRIDE, PrepareConfig, workers_or_cores
from pneumocam.data import (
    DICOM_SUFFIXES,
    SOURCE_FORMATS,
    ImageReadError,
    Judge,
    SourceItem,
    data_fingerprint,
    detect_format,
    discover,
    from_header,
    import_dicom_support,
    read_header,
    read_image_and_size,
    read_npy,
    read_size,
    read_source_metadata,
    square_geometry,
    to_model_input,
)
from pneumocam.data import FIELDS as METADATA_FIELDS
from pneumocam.errors import PneumocamError
from pneumocam.files import prefetch, remove_stale_temporaries, save_npy, write_csv, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SETTINGS_FILE = "prepare_settings.json"


@dataclass(frozen=True)
class PrepareReport:
    out_dir: Path
    counts: dict
    n_written: int
    n_resumed: int
    n_rejected: int
    mean: float
    std: float
    fingerprint: str


@dataclass(frozen=True)
class _Job:
    item: SourceItem
    split: str
    out_file: str  # relative to OUT
    out_root: str
    resize_mode: str
    image_size: int
    finished: bool  # its output exists already (a resumed run)

    @property
    def out_path(self) -> Path:
        return Path(self.out_root) / self.out_file


def assign_splits(items: list[SourceItem], val_fraction: float, seed: int, test_fraction: float = 0.0) -> list[str]:
    """The split of each item. A split the source fixes is kept, image by image; the others are split into
    train/val (and test, with test_fraction) stratified by label, grouped by patient and seeded.

    A patient's label for stratification is the max over their images (any pneumonia -> 1). Patients
    whose images the source itself puts in two splits stay there (see shared_patients).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PneumocamError(f"--val-fraction and --test-fraction must be in [0, 1) and leave images for training, "
                             f"got {val_fraction} and {test_fraction}")
    if test_fraction and any(it.split == "test" for it in items):
        raise PneumocamError("the source has its own test split, which is kept as it is: drop --test-fraction")
    patient_label: dict[str, int] = {}
    for it in items:
        if not it.split:
            patient_label[it.patient] = max(patient_label.get(it.patient, 0), it.label)
    rng = np.random.default_rng(seed)
    carved: dict[str, str] = {}
    for label in sorted(set(patient_label.values())):
        patients = sorted(p for p, lab in patient_label.items() if lab == label)
        rng.shuffle(patients)
        n_test = _share(len(patients), test_fraction)
        n_val = _share(len(patients) - n_test, val_fraction / (1 - test_fraction))
        for i, patient in enumerate(patients):
            carved[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [it.split or carved[it.patient] for it in items]


def _share(n: int, fraction: float) -> int:
    """round(n * fraction) half up (not banker's rounding), and at least 1 of 2+ when fraction > 0, so that
    every class is represented in each carved split where possible."""
    count = int(np.floor(n * fraction + 0.5))
    return 1 if fraction > 0 and count == 0 and n > 1 else count


def shared_patients(items: list[SourceItem]) -> set[str]:
    """Patients whose images the source's own folders put in two splits (e.g. Kermany's train and test)."""
    origins: dict[str, set[str]] = {}
    for it in items:
        if it.origin_split:
            origins.setdefault(it.patient, set()).add(it.origin_split)
    return {patient for patient, splits in origins.items() if len(splits) > 1}


def _process(job: _Job) -> dict:
    """Decode (or, on resume, reload) one image; returns its manifest facts or a rejection reason."""
    out_path = job.out_path
    item = job.item
    header: dict = {}  # a DICOM's patient fields, from the same parse as its pixels
    dicom = item.array is None and Path(item.source).suffix.lower() in DICOM_SUFFIXES
    try:
        if job.finished:
            array = read_npy(out_path)
            if dicom:  # one header parse gives both the patient fields and the size
                header, (height, width) = read_header(item.source)
            else:
                height, width = read_size(item.source) if item.boxes else (0, 0)
        else:
            if item.array is None:  # decoded at reduced scale where possible; boxes need the full size
                image, (height, width) = read_image_and_size(item.source, min_side=job.image_size, header=header)
            else:
                image = item.array
                height, width = image.shape
            array = to_model_input(image, job.image_size, job.resize_mode)
            save_npy(out_path, array)
    except ImageReadError as exc:
        return {"source": item.source, "reason": exc.reason}
    except Exception as exc:  # a batch never dies on one file: record what happened instead
        return {"source": item.source, "reason": f"{type(exc).__name__}: {exc}"}
    geometry = square_geometry(height, width, job.image_size, job.resize_mode) if item.boxes else None
    # boxes given in another pixel space (RSNA's 1024 px) follow the image's actual size
    sx, sy = (width / item.box_space, height / item.box_space) if item.box_space else (1.0, 1.0)
    values = array.astype(np.float64).ravel()
    return {
        "file": job.out_file,
        "resumed": job.finished,
        # the pixels as saved; xxh3, not sha256: nothing here needs a cryptographic hash (the fingerprint stays sha256)
        "xxh3_128": xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array)),
        "sum": float(values.sum()),
        # einsum: one pass, no temporary, and no BLAS threads (np.dot's would oversubscribe the workers)
        "sumsq": float(np.einsum("i,i->", values, values)),
        "n": int(values.size),
        "boxes": [tuple(round(v, 3) for v in geometry.box_to_output(x * sx, y * sy, w * sx, h * sy))
                  for x, y, w, h in item.boxes],
        "header": header,
    }


def _check_settings(out_dir: Path, config: PrepareConfig, sources: list[Path]) -> None:
    resolved = [str(source.resolve()) for source in sources]
    settings = {"source": resolved[0] if len(resolved) == 1 else resolved, **config.split_settings()}
    path = out_dir / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            raise PneumocamError(
                f"{out_dir} was prepared with different settings ({previous}); "
                "use a new output folder or delete it to start over"
            )
    write_json(path, settings)


@dataclass(frozen=True)
class _Discovered:
    items: list[SourceItem]
    splits: list[str]
    rejected: list[dict]
    fmt: str
    metadata: dict  # patient -> raw sex/age/view/finding from the source's metadata.csv and class table
    n_shared_patients: int


def _discover_source(source: Path, config: PrepareConfig) -> _Discovered:
    """One source's items and splits, carved exactly as if it were prepared alone."""
    if not source.exists():
        raise PneumocamError(f"{source}: source not found")
    fmt = detect_format(source) if config.source_format == "auto" else config.source_format
    if fmt not in SOURCE_FORMATS:
        raise PneumocamError(f"unknown --format {fmt!r}; choose from {sorted(SOURCE_FORMATS)}")
    items, rejected = discover(source, fmt, config.class_map, config.box_space)
    if not items:
        raise PneumocamError(f"{source}: no usable images found ({len(rejected)} rejected)")
    # patient sex/age/view for sources without headers (a metadata.csv, as in rsna_1000) and RSNA's finding
    metadata = read_source_metadata(source)
    splits = assign_splits(items, config.val_fraction, config.seed, config.test_fraction)
    shared = shared_patients(items)
    if shared:
        log.warning("%s: %d patients have images in two of the source's own splits; they are kept where the source "
                    "put them (see stats.json: patients_in_several_source_splits)", source, len(shared))
    return _Discovered(items, splits, rejected, fmt, metadata, len(shared))


def _namespaced(found: _Discovered, name: str) -> _Discovered:
    """Prefix file stems and patient ids with the source's name, so that two sources never collide. A common
    prefix keeps the patients' order, so each source's splits stay those it gets when prepared alone."""
    items = [replace(it, stem=f"{name}__{it.stem}", patient=f"{name}:{it.patient}") for it in found.items]
    metadata = {f"{name}:{patient}": values for patient, values in found.metadata.items()}
    return replace(found, items=items, metadata=metadata)


def prepare(source: str | Path | list, out_dir: str | Path, config: PrepareConfig = PrepareConfig()) -> PrepareReport:
    """Prepare every image under `source` into `out_dir`; see the module docstring for the outputs.

    Several sources (a list) go into one data set, e.g. Kermany and RSNA for a model that must serve both:
    each is split as if prepared alone, and its file names and patient ids are prefixed with its folder name.
    """
    sources = [Path(s) for s in source] if isinstance(source, list | tuple) else [Path(source)]
    out_dir = Path(out_dir)
    if config.image_size < 2 * CAM_STRIDE or config.image_size % CAM_STRIDE:
        raise PneumocamError(f"--image-size {config.image_size}: must be a multiple of {CAM_STRIDE} and at least "
                             f"{2 * CAM_STRIDE} (the network's feature map has one cell per {CAM_STRIDE} px)")
    if len({s.name for s in sources}) != len(sources):
        raise PneumocamError(f"sources must have different folder names, got {[s.name for s in sources]}")
    found = [_discover_source(s, config) for s in sources]
    if len(found) > 1:
        found = [_namespaced(f, s.name) for f, s in zip(found, sources, strict=True)]
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, config, sources)
    if stale := remove_stale_temporaries(out_dir):
        log.info("removed %d temporary files left by an interrupted run", stale)
    finished = _finished_outputs(out_dir)
    jobs = []
    for f in found:
        for it, split in zip(f.items, f.splits, strict=True):
            out_file = f"Processed/{split}/{it.label}/{it.stem}.npy"
            jobs.append(_Job(it, split, out_file, str(out_dir), config.resize_mode, config.image_size,
                             out_file in finished))
    if n_finished := sum(job.finished for job in jobs):
        log.info("resuming: %d of %d images are prepared already", n_finished, len(jobs))
    results = _run_jobs(jobs, workers_or_cores(config.workers))
    fmt = "+".join(f.fmt for f in found)
    metadata = {k: v for f in found for k, v in f.metadata.items()}
    return _write_outputs(out_dir, jobs, results, [r for f in found for r in f.rejected], fmt,
                          sum(f.n_shared_patients for f in found), metadata)


def _finished_outputs(out_dir: Path) -> set[str]:
    """The .npy files already under OUT/Processed, relative to OUT: one listing per folder instead of
    a stat per image in the workers."""
    processed = out_dir / "Processed"
    if not processed.is_dir():
        return set()
    return {path.relative_to(out_dir).as_posix() for path in processed.glob("*/*/*.npy")}


def _run_jobs(jobs: list[_Job], workers: int) -> list[dict]:
    bar = dict(total=len(jobs), desc="prepare", unit="img", smoothing=0.1)
    results: list[dict] = []
    if workers <= 1 or len(jobs) < 8:
        with tqdm(**bar) as progress:
            for start, stop in _ranges(len(jobs), 8):
                results += _process_jobs(jobs, start, stop)
                progress.update(stop - start)
        return results
    if any(job.item.array is None and Path(job.item.source).suffix.lower() in DICOM_SUFFIXES for job in jobs):
        import_dicom_support()  # once here, inherited by the forked workers, instead of once in each
    # small chunks, so no worker is left with a long last chunk while the other cores idle; workers get the
    # job list once and then only (start, stop) ranges, so the main process pickles no job per image
    size = max(1, min(8, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers, initializer=_set_worker_jobs, initargs=(jobs,)) as pool, \
            tqdm(**bar) as progress:
        for chunk in pool.map(_process_range, _ranges(len(jobs), size)):
            results += chunk
            progress.update(len(chunk))
    return results


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


_worker_jobs: list[_Job] = []  # a pool worker's copy of the job list (set once by _set_worker_jobs)


def _set_worker_jobs(jobs: list[_Job]) -> None:
    global _worker_jobs
    _worker_jobs = jobs


def _process_range(bounds: tuple[int, int]) -> list[dict]:
    return _process_jobs(_worker_jobs, *bounds)


def _process_jobs(jobs: list[_Job], start: int, stop: int) -> list[dict]:
    # this range's files and the next range's start reading now, behind the decoding, so a cold read never idles a core
    prefetch(_input_path(job) for job in jobs[start : stop + (stop - start)] if job.finished or job.item.array is None)
    return [_process(job) for job in jobs[start:stop]]


def _input_path(job: _Job) -> str:
    """The file _process reads for `job`: its earlier output when resuming, else its source."""
    return str(job.out_path) if job.finished else job.item.source


def _write_outputs(out_dir: Path, jobs: list[_Job], results: list[dict], rejected: list[dict], fmt: str,
                   n_shared_patients: int = 0, patient_metadata: dict | None = None):
    manifest, boxes, counts = [], [], Counter()
    judge = Judge()
    sums = {split: np.zeros(3) for split in SPLITS}  # pixel sum, sum of squares, count per split
    rejected = list(rejected)
    for job, res in zip(jobs, results, strict=True):
        if "reason" in res:
            rejected.append(res)
            continue
        it = job.item
        raw = dict((patient_metadata or {}).get(it.patient, {}))
        raw.update({k: v for k, v in from_header(res["header"]).items() if v})  # a DICOM's own header wins
        manifest.append({"file": res["file"], "label": it.label, "split": job.split, "patient": it.patient,
                         "source": it.source_label or it.source, "xxh3_128": res["xxh3_128"], **judge(raw)})
        boxes += [{"file": res["file"], "patient": it.patient, "x": x, "y": y, "width": w, "height": h}
                  for x, y, w, h in res["boxes"]]
        counts[(job.split, it.label)] += 1
        sums[job.split] += (res["sum"], res["sumsq"], res["n"])
    if not manifest:
        raise PneumocamError(f"every input was rejected; see the reasons in {out_dir / 'rejected.csv'}")
    write_csv(out_dir / "rejected.csv", ["source", "reason"], rejected)
    write_csv(out_dir / "manifest.csv", ["file", "label", "split", "patient", "source", "xxh3_128",
                                         *METADATA_FIELDS], manifest)
    write_csv(out_dir / "boxes.csv", ["file", "patient", "x", "y", "width", "height"], boxes)
    # mean/std of the training split; a source without one (e.g. a test-only set) uses all its images
    stats_split = "train" if sums["train"][2] else "all"
    total, total_sq, n_pixels = sums["train"] if sums["train"][2] else sum(sums.values())
    if not sums["train"][2]:
        log.warning("no training images: stats.json mean/std are computed over all splits")
    mean = total / n_pixels
    std = float(np.sqrt(max(total_sq / n_pixels - mean**2, 0.0)))
    fingerprint = data_fingerprint(manifest)
    settings = json.loads((out_dir / SETTINGS_FILE).read_text())
    stats = {
        "mean": round(mean, 6), "std": round(std, 6), "stats_split": stats_split,
        "image_size": settings["image_size"],
        "counts": {s: {str(lab): counts[(s, lab)] for lab in (0, 1)} for s in SPLITS},
        "n_images": len(manifest), "n_rejected": len(rejected), "n_boxes": len(boxes),
        "patients_in_several_source_splits": n_shared_patients,
        "metadata": judge.summary(),  # images with a known sex/age/view, and values found malformed (left empty)
        "fingerprint": fingerprint, "source_format": fmt, "settings": settings, "pneumocam_version": __version__,
    }
    write_json(out_dir / "stats.json", stats)
    n_resumed = sum(1 for r in results if r.get("resumed"))
    log.info("prepared %d images (%d resumed), rejected %d", len(manifest), n_resumed, len(rejected))
    return PrepareReport(out_dir, stats["counts"], len(manifest) - n_resumed, n_resumed, len(rejected),
                         stats["mean"], stats["std"], fingerprint)

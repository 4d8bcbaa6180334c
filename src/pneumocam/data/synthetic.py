"""Phantom chest radiographs with known lesion boxes, written in the RSNA challenge layout.

A phantom has a body outline, two lung fields, heart, spine, clavicles and ribs, low-frequency
density variation, detector noise and random contrast. Every image, positive or not, may carry
bright distractors (ECG electrodes, a side marker), so "find a bright spot" does not solve the task,
and each lung's density varies independently, so "a brighter lung" does not either: a positive has
1-3 soft, patchy opacities inside the lung fields, each with its ground-truth box.
Each image is drawn from its own seeded generator (seed, index), so the output does not depend on
the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import logging
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pneumocam.config import SynthConfig, workers_or_cores
from pneumocam.files import atomic_open

log = logging.getLogger(__name__)

WORK_SIZE = 256  # anatomy is drawn at this size, then upsampled; detector noise is added at full size
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"


@dataclass(frozen=True)
class Phantom:
    patient_id: str
    image: np.ndarray  # (size, size) uint8, MONOCHROME2
    boxes: tuple[tuple[float, float, float, float], ...]  # (x, y, width, height) in image pixels
    view: str

    @property
    def target(self) -> int:
        return int(bool(self.boxes))


def _grid() -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(WORK_SIZE) + 0.5) / WORK_SIZE
    return np.meshgrid(coords, coords)  # xx, yy in [0, 1]


def _ellipse(xx, yy, cx, cy, ax, ay, softness=0.08) -> np.ndarray:
    d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    return 1.0 / (1.0 + np.exp((d - 1.0) / softness))


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled with bicubic interpolation."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BICUBIC))


def _anatomy(rng: np.random.Generator, xx, yy) -> tuple[np.ndarray, np.ndarray]:
    """Returns the image (float, roughly [0, 1]) and a lung mask in [0, 1]."""
    j = lambda scale: rng.uniform(-scale, scale)  # noqa: E731 - a local jitter shorthand
    body = _ellipse(xx, yy, 0.5 + j(0.02), 0.58 + j(0.02), 0.43 + j(0.03), 0.55 + j(0.03), 0.05)
    lung_l = _ellipse(xx, yy, 0.32 + j(0.02), 0.46 + j(0.02), 0.135 + j(0.015), 0.27 + j(0.02))
    lung_r = _ellipse(xx, yy, 0.68 + j(0.02), 0.46 + j(0.02), 0.14 + j(0.015), 0.28 + j(0.02))
    lungs = np.maximum(lung_l, lung_r) * body
    # each lung's density varies on its own in every image, by more than an opacity raises a lung's mean:
    # otherwise "one lung is brighter" separates the classes and a model may ignore where the opacity is
    lung_density = np.maximum((0.28 + j(0.08)) * lung_l, (0.28 + j(0.08)) * lung_r) * body
    heart = _ellipse(xx, yy, 0.54 + j(0.02), 0.63 + j(0.02), 0.13 + j(0.02), 0.13 + j(0.02), 0.15)
    spine = np.exp(-(((xx - 0.5 - j(0.01)) / 0.045) ** 2)) * (yy > 0.08)
    image = 0.05 + 0.45 * body - lung_density + 0.24 * heart * body + 0.16 * spine * body
    for side in (-1.0, 1.0):
        lateral = np.clip(side * (xx - 0.5), 0, None)
        # posterior ribs: arcs that fall laterally, visible over the lungs and (fainter) the body
        for k in range(9):
            y0 = 0.16 + k * 0.072 + j(0.01)
            centre = y0 + 1.1 * lateral**2 - 0.05 * lateral
            rib = np.exp(-(((yy - centre) / 0.011) ** 2)) * (lateral > 0.02) * (lateral < 0.42)
            image += 0.07 * rib * body
        clavicle_y = 0.15 + 0.12 * lateral + j(0.01)
        image += 0.1 * np.exp(-(((yy - clavicle_y) / 0.012) ** 2)) * (lateral > 0.03) * (lateral < 0.3) * body
    image += 0.03 * _smooth_noise(rng, 6) * body
    return image, lungs


def _add_distractors(rng: np.random.Generator, image: np.ndarray, xx, yy) -> None:
    for _ in range(rng.integers(0, 5)):  # ECG electrodes: small bright discs anywhere on the body
        cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.9)
        image += 0.45 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.009**2)))
    if rng.random() < 0.5:  # side marker: a bright square in an upper corner
        cx = rng.choice([0.08, 0.92])
        image += 0.6 * ((np.abs(xx - cx) < 0.025) & (np.abs(yy - 0.08) < 0.025))


def _add_opacities(rng: np.random.Generator, image: np.ndarray, lungs: np.ndarray, xx, yy) -> list:
    """Patchy soft opacities inside the lungs; returns boxes (x, y, w, h) in [0, 1] units.

    Count and size follow the real RSNA labels (stage_2_train_labels.csv, 9,555 boxes): 1 box for 44%
    of positive patients, 2 for 54%, 3+ for 2%; box width median 217 px (IQR 177-259) and height
    median 298 px (IQR 203-438) of 1024. A box spans +-2 sigma of its opacity.
    """
    boxes = []
    candidates = np.argwhere(lungs > 0.9)
    for _ in range(rng.choice([1, 2, 3], p=[0.44, 0.54, 0.02])):
        cy, cx = (candidates[rng.integers(len(candidates))] + 0.5) / WORK_SIZE
        sx, sy = rng.uniform(0.04, 0.065), rng.uniform(0.05, 0.1)
        blob = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2)
        texture = 0.65 + 0.35 * _smooth_noise(rng, 24)
        image += rng.uniform(0.25, 0.4) * blob * texture * np.clip(lungs * 1.2, 0, 1)
        x0, y0 = max(cx - 2 * sx, 0.0), max(cy - 2 * sy, 0.0)
        x1, y1 = min(cx + 2 * sx, 1.0), min(cy + 2 * sy, 1.0)
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    return boxes


def make_phantom(seed: int, index: int, positive: bool, size: int = 1024) -> Phantom:
    """One phantom radiograph; (seed, index, positive) determine it completely."""
    rng = np.random.default_rng([seed, index])
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    xx, yy = _grid()
    image, lungs = _anatomy(rng, xx, yy)
    _add_distractors(rng, image, xx, yy)
    boxes = _add_opacities(rng, image, lungs, xx, yy) if positive else []
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)  # exposure / contrast
    image = image * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04)
    full = np.asarray(
        Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )
    full = full + rng.normal(0, 0.02, full.shape).astype(np.float32)
    pixels = np.clip(np.round(full * 255), 0, 255).astype(np.uint8)
    scaled = tuple(tuple(round(v * size, 1) for v in box) for box in boxes)
    return Phantom(patient_id, pixels, scaled, view=str(rng.choice(["PA", "AP"])))


def _write_one(args: tuple[int, int, bool, int, str]) -> tuple[str, tuple]:
    seed, index, positive, size, images_dir = args
    phantom = make_phantom(seed, index, positive, size)
    path = Path(images_dir) / f"{phantom.patient_id}.dcm"
    write_dicom_jpeg(path, phantom.image, phantom.patient_id, view=phantom.view)
    return phantom.patient_id, phantom.boxes


def positives_for(config: SynthConfig) -> np.ndarray:
    """Which indices are positive: an exact count, shuffled by the seed."""
    n_pos = round(config.n_images * config.positive_fraction)
    flags = np.zeros(config.n_images, dtype=bool)
    flags[:n_pos] = True
    np.random.default_rng(config.seed).shuffle(flags)
    return flags


def synthesize(out_dir: str | Path, config: SynthConfig = SynthConfig()) -> Path:
    """Write `config.n_images` phantoms as OUT/stage_2_train_images/*.dcm + OUT/stage_2_train_labels.csv."""
    if config.n_images < 1 or not 0 <= config.positive_fraction <= 1:
        raise ValueError("n_images must be >= 1 and positive_fraction in [0, 1]")
    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(config.seed, i, bool(p), config.size, str(images_dir)) for i, p in enumerate(positives_for(config))]
    bar = dict(total=len(jobs), desc="synth", unit="img")
    if (workers := workers_or_cores(config.workers)) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_write_one, jobs, chunksize=8), **bar))
    else:
        results = [_write_one(job) for job in tqdm(jobs, **bar)]
    with atomic_open(out_dir / LABELS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for patient_id, boxes in results:
            if not boxes:
                writer.writerow([patient_id, "", "", "", "", 0])
            for x, y, w, h in boxes:
                writer.writerow([patient_id, x, y, w, h, 1])
    log.info("wrote %d phantoms to %s", len(results), out_dir)
    return out_dir


def write_dicom_jpeg(
    path: str | Path, image: np.ndarray, patient_id: str, *, view: str = "PA", quality: int = 90
) -> None:
    """Write an 8-bit MONOCHROME2 radiograph as a JPEG Baseline DICOM, like the RSNA challenge files.

    pydicom cannot encode JPEG Baseline itself, so Pillow encodes the frame and pydicom encapsulates
    it. The file is written atomically (temporary file + rename).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    from pneumocam.files import atomic_path

    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=quality)
    sop_uid = generate_uid(entropy_srcs=[patient_id])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)

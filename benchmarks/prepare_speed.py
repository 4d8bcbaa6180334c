"""Speed of `pneumocam prepare` on RSNA-like JPEG DICOMs vs a naive single-process loop.

Makes N phantom DICOMs (1024x1024, 8-bit, JPEG Baseline, like the RSNA files) with `pneumocam synth`,
then measures, on the same files:
  naive    one process: pydicom dcmread + pixel_array, scale to [0, 1], resize to 224 with Pillow, np.save;
           timed twice: with pydicom's own plugin choice and with the Pillow plugin (the faster one is the
           baseline the targets use)
  decode   pneumocam's decode + resize alone, one process, no output (the per-image work floor)
  prepare  `pneumocam prepare` with --workers W (default: all cores), from a clean output folder
Targets (issue 3): prepare >= 1.8x naive, and >= 90% of W x (1 / decode time).

It also accounts for the in-process run's CPU time (the workers' user and system time per image against
decode+resize alone, and how busy the cores were), which tells idle cores from per-image work.

Outputs go to a folder of their own (--out, default a new temporary folder), each timed run into a
fresh subfolder, the same for naive and prepare. On this machine's ext4 disk creating a file cost from
~0.02 to ~0.8 ms depending on the folder (always slow beside the just-written source tree, sometimes in
fresh folders too), so a single run's numbers carry that noise: run it more than once.

usage: python benchmarks/prepare_speed.py [--n-images 1200] [--workers 2] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def naive_loop(files: list[Path], out: Path, plugin: str = "") -> float:
    import pydicom
    from pydicom.pixels import pixel_array

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        image = pixel_array(ds, decoding_plugin=plugin).astype(np.float32) / 255.0
        small = np.asarray(Image.fromarray(image, mode="F").resize((224, 224), Image.Resampling.BILINEAR))
        np.save(out / f"{path.stem}.npy", small.astype(np.float32))
    return time.perf_counter() - start


def decode_resize(files: list[Path]) -> float:
    """The same decode (reduced DCT scale where possible) and resize that prepare does, nothing else."""
    from pneumocam.io import read_image
    from pneumocam.preprocess import IMAGE_SIZE, to_model_input

    start = time.perf_counter()
    for path in files:
        to_model_input(read_image(path, min_side=IMAGE_SIZE))
    return time.perf_counter() - start


def _cpu_seconds(who: int) -> tuple[float, float]:
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=1200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=None, help="source folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pneumocam-bench-"))
    out = args.out or Path(tempfile.mkdtemp(prefix="pneumocam-bench-out-"))
    source = work / "source"
    if not (source / "stage_2_train_labels.csv").exists():
        subprocess.run([sys.executable, "-m", "pneumocam.cli", "synth", str(source), "--n-images",
                        str(args.n_images), "--workers", str(args.workers)], check=True, capture_output=True)
    files = sorted((source / "stage_2_train_images").glob("*.dcm"))
    if len(files) != args.n_images:  # prepare reads the whole folder: every rate must count the same files
        parser.error(f"{source} holds {len(files)} DICOMs, not --n-images {args.n_images}; "
                     "give a matching --n-images or a fresh --work folder")
    n = len(files)

    decode_resize(files[:20])  # warm the page cache and imports
    naive_default_s = naive_loop(files, out / "naive-default")
    naive_pillow_s = naive_loop(files, out / "naive-pillow", "pillow")
    naive_s = min(naive_default_s, naive_pillow_s)
    decode_s = decode_resize(files)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pneumocam.cli", "prepare", str(source), str(out / "prepared-cli"),
                    "--workers", str(args.workers)], check=True, capture_output=True)
    prepare_s = time.perf_counter() - start
    from pneumocam.prepare import PrepareConfig, prepare

    main_before, workers_before = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    prepare(source, out / "prepared-in-process", PrepareConfig(workers=args.workers))
    in_process_s = time.perf_counter() - start
    # the pool's workers have exited by now, so RUSAGE_CHILDREN holds their whole CPU time
    main_cpu = [a - b for a, b in zip(_cpu_seconds(resource.RUSAGE_SELF), main_before)]
    workers_cpu = [a - b for a, b in zip(_cpu_seconds(resource.RUSAGE_CHILDREN), workers_before)]

    naive_rate, prepare_rate = n / naive_s, n / prepare_s
    ceiling = args.workers / (decode_s / n)
    print(f"{n} RSNA-like JPEG DICOMs (1024x1024), {args.workers} workers, {os.cpu_count()} cores\n")
    print(f"{'what':<44}{'images/s':>10}{'ms/image':>10}")
    for label, seconds in (("naive loop, pydicom default plugin, 1 proc", naive_default_s),
                           ("naive loop, Pillow plugin, 1 proc", naive_pillow_s)):
        print(f"{label:<44}{n / seconds:>10.1f}{1000 * seconds / n:>10.2f}")
    print(f"{'pneumocam decode+resize only (1 proc)':<44}{n / decode_s:>10.1f}{1000 * decode_s / n:>10.2f}")
    print(f"{'pneumocam prepare (end to end, CLI)':<44}{prepare_rate:>10.1f}{1000 / prepare_rate:>10.2f}")
    label = "prepare() in-process (no interpreter start)"
    print(f"{label:<44}{n / in_process_s:>10.1f}{1000 * in_process_s / n:>10.2f}")
    print(f"\nprepare / faster naive loop = {prepare_rate / naive_rate:.2f}x (target >= 1.8x)")
    print(f"prepare / ({args.workers} x decode+resize rate) = {prepare_rate / ceiling:.1%} (target >= 90%); "
          f"in-process: {n / in_process_s / ceiling:.1%}")
    print(f"\nwhere the in-process run's CPU went, per image: workers {1000 * workers_cpu[0] / n:.2f} ms user + "
          f"{1000 * workers_cpu[1] / n:.2f} ms system (decode+resize alone: {1000 * decode_s / n:.2f}), main process "
          f"{1000 * sum(main_cpu) / n:.2f} ms; the {args.workers} cores were busy "
          f"{(sum(workers_cpu) + sum(main_cpu)) / (in_process_s * args.workers):.0%} of the wall time")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How far decoding at a reduced DCT scale (what prepare, predict and serve do for JPEG-coded images) lies from
a full decode followed by the same resize, on the real JPEGs and JPEG DICOMs in ../shared/data.

Per image: the mean and the 99th percentile of |reduced - full| over the 224x224 model input (values in [0, 1]),
and the largest single pixel. The tolerance the tests hold (tests/test_readers.py): mean <= 0.01, 99th
percentile <= 0.08 per image.

usage: python benchmarks/reduced_scale.py [--shared ../shared/data] [--limit 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from pneumocam.data import read_image, to_model_input

ROOT = Path(__file__).resolve().parents[1]
SETS = {"Kermany originals (kermany_sample, JPEG)": ("kermany_sample", "**/*.jpeg"),
        "RSNA as JPEG (rsna_1000)": ("rsna_1000/stage_2_train_images", "*.jpg"),
        "RSNA DICOM, JPEG Baseline (rsna_sample)": ("rsna_sample/stage_2_train_images", "*.dcm")}


def differences(path: Path) -> tuple[float, float, float]:
    reduced = to_model_input(read_image(path, min_side=224))
    full = to_model_input(read_image(path))
    diff = np.abs(reduced - full)
    return float(diff.mean()), float(np.percentile(diff, 99)), float(diff.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("PNEUMOCAM_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--limit", type=int, default=1000, help="images per set at most")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    print(f"{'set':<42}{'n':>6}{'mean |d| (avg / worst)':>26}{'p99 worst':>11}{'max pixel':>11}")
    for name, (folder, pattern) in SETS.items():
        files = sorted((args.shared / folder).glob(pattern))[: args.limit]
        if not files:
            print(f"{name:<42} not found under {args.shared / folder}")
            continue
        rows = np.array([differences(f) for f in files])
        results[name] = {"n": len(files), "mean_abs_avg": rows[:, 0].mean(), "mean_abs_worst": rows[:, 0].max(),
                         "p99_worst": rows[:, 1].max(), "max_pixel": rows[:, 2].max()}
        r = results[name]
        print(f"{name:<42}{r['n']:>6}{r['mean_abs_avg']:>13.4f} / {r['mean_abs_worst']:.4f}{r['p99_worst']:>11.4f}"
              f"{r['max_pixel']:>11.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""How long a newcomer waits for the first answer: `pneumocam predict pneumocam-cxr one.dcm` from a cold shell.

Runs the installed console script N times (default 10) for one real RSNA DICOM with the default backend
(auto: onnxruntime where installed, after one untimed run that caches the model's ONNX export, as a user's
first run does), the same with `--backend torch`, and `pneumocam --help` as many times, each as a fresh process,
and prints min / median wall time and peak memory (the child's max RSS, from wait4). Targets (issue 32):
predict <= 2.5 s and <= 500 MB; --help stays near 0.08 s. For where the time goes:
`python -X importtime -m pneumocam.cli predict pneumocam-cxr FILE 2> imports.txt`.

usage: python benchmarks/first_answer.py [--runs 10] [--image FILE] [--out first_answer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("PNEUMOCAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run of `command` as a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return wall, usage.ru_maxrss / 1024


def summary(samples: list[tuple[float, float]]) -> dict:
    walls, peaks = [s[0] for s in samples], [s[1] for s in samples]
    return {"runs": len(samples), "wall_min_s": round(min(walls), 3),
            "wall_median_s": round(statistics.median(walls), 3), "peak_mb_max": round(max(peaks), 1),
            "peak_mb_median": round(statistics.median(peaks), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", type=Path, default=None, help="default: the first real RSNA sample DICOM")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    image = args.image or next(iter(sorted((SHARED / "rsna_sample" / "stage_2_train_images").glob("*.dcm"))), None)
    if image is None:
        raise SystemExit(f"no image: pass --image, or set PNEUMOCAM_SHARED_DATA (looked in {SHARED})")
    script = shutil.which("pneumocam") or str(Path(sys.executable).with_name("pneumocam"))
    predict = [script, "predict", "pneumocam-cxr", str(image)]
    first = timed(predict)  # makes the ONNX cache where it is missing
    results = {"cores": os.cpu_count(), "image": image.name, "first_run": {"wall_s": round(first[0], 3),
                                                                           "peak_mb": round(first[1], 1)},
               "predict": summary([timed(predict) for _ in range(args.runs)]),
               "predict_backend_torch": summary([timed([*predict, "--backend", "torch"]) for _ in range(args.runs)]),
               "help": summary([timed([script, "--help"]) for _ in range(args.runs)])}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Does the INT8 copy keep the answer? float32 against onnxruntime-int8 and openvino-int8 on the validation splits.

1. `pneumocam prepare kermany224 rsna_1000 WORK/joint --seed 0`: the split behind pneumocam-cxr's card (children
   1,048 and adults 200 in `val`, never trained on).
2. `pneumocam quantize MODEL WORK/joint/Processed/train --count 300` into WORK/cache: calibrated on 300 training
   images (children and adults as they come), checked on 100 others.
3. Every validation image through float32 (eager torch) and each INT8 backend: AUROC per source, the largest
   probability difference, calls unchanged at the model's threshold, the 7x7 CAM's Spearman correlation with
   float32 per image, and the worst images.
Targets (issue #32): AUROC within 0.003 of float32, every probability within 0.02, CAM Spearman >= 0.98 on every
image, >= 99.5% of calls unchanged. Writes WORK/int8_accuracy.json.

usage: python benchmarks/int8_accuracy.py [--work int8-bench] [--model pneumocam-cxr] [--shared DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_data import DEFAULT_SHARED, run  # noqa: E402  (this folder's script: the same command runner)

SOURCES = ("kermany224", "rsna_1000")
BACKENDS = ("onnxruntime-int8", "openvino-int8")


def validation_images(data: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    from pneumocam.data import manifest_rows

    rows = sorted((r for r in manifest_rows(data).values() if r["split"] == "val"), key=lambda r: r["file"])
    return ([data / r["file"] for r in rows], np.array([int(r["label"]) for r in rows]),
            [r["patient"].partition(":")[0] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("int8-bench"))
    parser.add_argument("--model", default="pneumocam-cxr")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    args = parser.parse_args()
    data = args.work / "joint"
    if not (data / "stats.json").exists():
        run(["pneumocam", "prepare", *(str(args.shared / s) for s in SOURCES), str(data), "--seed", "0"])
    os.environ["PNEUMOCAM_CACHE"] = str(args.work / "cache")
    run(["pneumocam", "quantize", args.model, str(data / "Processed" / "train"), "--count", "300"])

    from pneumocam.commands.quantize import compare, summarize_agreement
    from pneumocam.deploy import Predictor
    from pneumocam.evaluation import fast_auroc

    paths, labels, sources = validation_images(data)
    reference = Predictor.from_checkpoint(args.model)
    images = [reference.load(p) for p in paths]
    names = [str(p.relative_to(data)) for p in paths]
    result = {"model": args.model, "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, torch "
                                              f"{torch.__version__}", "n": len(images), "backends": {}}
    print(f"{len(images)} validation images ({', '.join(f'{s} {sources.count(s)}' for s in SOURCES)})")
    print(f"\n{'backend':<18}{'source':<12}{'AUROC fp32':>11}{'AUROC int8':>11}{'max |dp|':>10}{'calls kept':>11}"
          f"{'min rho':>9}")
    for backend in BACKENDS:
        other = Predictor.from_checkpoint(args.model, backend=backend)
        row = {}
        for source in SOURCES:
            mine = [i for i, s in enumerate(sources) if s == source]
            p_float, p_int8, rho = compare(reference, other, [images[i] for i in mine])
            check = summarize_agreement(p_float, p_int8, rho, reference.threshold, [names[i] for i in mine])
            check["auroc_float32"] = fast_auroc(p_float, labels[mine])
            check["auroc_int8"] = fast_auroc(p_int8, labels[mine])
            row[source] = check
            print(f"{backend:<18}{source:<12}{check['auroc_float32']:>11.4f}{check['auroc_int8']:>11.4f}"
                  f"{check['max_abs_probability_difference']:>10.4f}{check['calls_agreeing']:>11.4f}"
                  f"{check['min_cam_spearman']:>9.3f}")
        result["backends"][backend] = row
    worst = result["backends"][BACKENDS[0]]
    print("\nworst images (onnxruntime-int8, by probability difference):")
    for source in SOURCES:
        for w in worst[source]["worst"][:3]:
            print(f"  {w['image']}: float32 {w['float32']:.4f}, int8 {w['int8']:.4f}, CAM rho {w['cam_spearman']:.3f}")
    print("targets: AUROC within 0.003, |dp| <= 0.02, calls kept >= 0.995, min rho >= 0.98")
    (args.work / "int8_accuracy.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.work / 'int8_accuracy.json'}")


if __name__ == "__main__":
    main()

"""Test-time augmentation scored by cross-validation: do logits averaged over shifted, zoomed or mirrored copies
of each film rank the adults better than the film alone?

Why: the issue asks for TTA in one table with the other robustness levers, kept only if it helps. It reuses the
fold networks `benchmarks/crossval.py` trained (WORK/runs/RECIPE/foldF) and scores exactly as that script does:
AUROC overall and within view, thresholds chosen on the other folds' out-of-fold predictions by the shipped
rule (specificity 0.85 per view), PA sensitivity and the "Not Normal" films called pneumonia.

Copies (fixed, not random, so the score repeats): the film itself; mirrored left-right; shifted 5% of the side
left, right, up, down; zoomed to 0.93 and 1.07 (black outside the film, as in training's `shift` augmentation).
A mirrored copy keeps one exact CAM (mirror its map back and average: still sums to the averaged logit); a shifted
or zoomed copy loses the cells pushed out of the frame, so its averaged map no longer explains the logit exactly.

usage: python benchmarks/tta.py [--work cv-bench] [--recipe adult-finding-ema]   -> WORK/tta/RECIPE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from crossval import fold_network, summarize  # this folder's script: the same scoring

from pneumocam.deploy import Predictor

SHIFT, ZOOMS = 0.05, (0.93, 1.07)


def warped(image: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """The (H, W) image zoomed by `scale` and moved by (dx, dy) fractions of its side, black outside."""
    theta = torch.tensor([[[1 / scale, 0, -2 * dx], [0, 1 / scale, -2 * dy]]], dtype=torch.float32)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0].numpy()


COPIES = {
    "film": lambda x: x,
    "mirror": lambda x: np.ascontiguousarray(x[:, ::-1]),
    **{f"shift {dx:+g},{dy:+g}": (lambda x, dx=dx, dy=dy: warped(x, dx=dx, dy=dy))
       for dx, dy in ((SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT))},
    **{f"zoom {s:g}": (lambda x, s=s: warped(x, scale=s)) for s in ZOOMS},
}
SHIFTS = [name for name in COPIES if name.startswith("shift")]
ZOOMED = [name for name in COPIES if name.startswith("zoom")]
COMBINATIONS = {"none": ["film"], "mirror": ["film", "mirror"], "shifts": ["film", *SHIFTS],
                "zooms": ["film", *ZOOMED], "shifts + zooms": ["film", *SHIFTS, *ZOOMED], "all": list(COPIES)}


def copy_logits(checkpoint: Path, files: list[Path], batch_size: int) -> dict[str, np.ndarray]:
    """Raw logits of every copy of every file, by the fold's network."""
    predictor = Predictor.from_checkpoint(checkpoint)
    images = [predictor.load(f) for f in files]
    return {name: np.concatenate([predictor.forward([make(x) for x in images[i:i + batch_size]]).logits
                                  for i in range(0, len(images), batch_size)])
            for name, make in COPIES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    parser.add_argument("--recipe", default="adult-finding-ema")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    folds = []
    for fold in range(args.k):
        scored = args.work / "cv" / args.recipe / f"fold{fold}.json"
        checkpoint = fold_network(args.work, args.recipe, fold)
        if not scored.exists():
            raise SystemExit(f"{scored}: not found (run benchmarks/crossval.py --recipes {args.recipe} first)")
        result = json.loads(scored.read_text())
        files = [args.work / "pool" / a["file"] for a in result["adults"]]
        folds.append((result, copy_logits(checkpoint, files, args.batch_size)))
        print(f"fold {fold}: {len(files)} films x {len(COPIES)} copies", flush=True)
    table = {}
    for name, copies in COMBINATIONS.items():
        results = []
        for result, logits in folds:
            probabilities = 1 / (1 + np.exp(-np.mean([logits[c] for c in copies], axis=0)))
            results.append({**result, "adults": [{**a, "probability": float(p)}
                                                 for a, p in zip(result["adults"], probabilities, strict=True)]})
        summary = summarize(results)["summary"]
        shipped = summary["per_view_specificity_0.85"]
        table[name] = {"copies": copies, **{k: summary[k] for k in ("auroc", "auroc_ap", "auroc_pa")},
                       "shipped_rule": shipped}
        print(f"{name:<16}AUROC {summary['auroc']['mean']:.3f} ± {summary['auroc']['sd']:.3f}  "
              f"AP {summary['auroc_ap']['mean']:.3f}  PA {summary['auroc_pa']['mean']:.3f}  "
              f"PA sensitivity {shipped['sensitivity_pa']['mean']:.2f} ± {shipped['sensitivity_pa']['sd']:.2f}  "
              f"specificity {shipped['specificity']['mean']:.2f}  "
              f"'Not Normal' called {shipped['not_normal_called']['mean']:.3f}")
    out = args.work / "tta" / f"{args.recipe}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"recipe": args.recipe, "k": args.k, "combinations": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

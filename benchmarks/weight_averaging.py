"""Networks made by averaging weights, scored by cross-validation: one network each, so the CAM still explains
the output exactly, and no training.

Why: fine-tuning on adults costs the children, and a recipe's score moves with its seed. Two cheap remedies
average weights instead of training again, and whether either helps is measured here exactly as
benchmarks/crossval.py measures a recipe (AUROC overall and within view, the children's AUROC, the pointing game
against the box prior, the operating rules with thresholds from the other folds), on the fold networks that script
trained (WORK/runs/RECIPE/foldF):

  --interpolate RECIPE   WiSE-FT (Wortsman et al. 2022): start + alpha x (fine-tuned - start), the start being the
                         model RECIPE starts from; alpha 1 is the recipe, alpha 0 its start model.
  --soup RECIPE RECIPE.. a uniform model soup (Wortsman et al. 2022): the mean of the recipes' fold networks (the
                         same recipe with other seeds, all from one start); the logit average of the same networks
                         (an ensemble, three networks to run) is scored beside it.

With --freeze-batchnorm (the fifth build's recipe) every network averaged shares its BatchNorm statistics with the start
model, so the average is normalised as they are; otherwise the statistics are averaged too.

usage: python benchmarks/weight_averaging.py [--work cv-bench] --interpolate adult-finding-ema-longest-bn
           [--alphas 1 0.9 0.8 0.7 0.6 0.5 0]                  -> WORK/interpolation/RECIPE.json
       python benchmarks/weight_averaging.py [--work cv-bench] --soup adult-finding-ema-longest-bn
           adult-finding-ema-longest-bn-seed1 adult-finding-ema-longest-bn-seed2   -> WORK/soup/FIRST-RECIPE.json
(each fold kept beside, resumable)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from crossval import RECIPES, fold_network, machine, model_path, print_table, scored_fold, summarize  # this folder's

from pneumocam.config import IMAGE_SIZE
from pneumocam.data import manifest_rows
from pneumocam.files import atomic_path
from pneumocam.model.calibration import logit, sigmoid
from pneumocam.model.checkpoints import load_checkpoint


def averaged(checkpoints: list[Path], weights: list[float], out: Path) -> Path:
    """A checkpoint whose network weights are the sum of weights[i] x checkpoints[i]'s, with the last one's
    metadata (plus what was averaged). Integer entries (BatchNorm's step count) are the last one's."""
    loaded = [load_checkpoint(c) for c in checkpoints]
    last = loaded[-1]
    state = {k: sum(w * c["state_dict"][k] for w, c in zip(weights, loaded, strict=True)) if v.is_floating_point()
             else v for k, v in last["state_dict"].items() if k.startswith("net.")}
    meta = {**last["pneumocam"], "weight_average": {"checkpoints": [str(c) for c in checkpoints],
                                                    "weights": weights}}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "pneumocam": meta}, tmp)
    return out


def scored_average(work: Path, out: Path, tag: str, checkpoints: list[Path], weights: list[float], data: Path,
                   fold: int, folds: dict[str, int], rows: list[dict]) -> dict:
    """The weight average scored on one fold, kept in `out` (the averaged checkpoint is deleted after)."""
    if out.exists():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checkpoint = averaged(checkpoints, weights, out.with_suffix(".ckpt"))
    try:
        scores = scored_fold(checkpoint, work / "pool", rows, fold, folds, data,
                             work / "localize" / tag / f"fold{fold}")
    finally:
        checkpoint.unlink()
    result = {"recipe": tag, "fold": fold, "wall_s": round(time.perf_counter() - start), **scores}
    out.write_text(json.dumps(result))
    return result


def interpolation(work: Path, recipe: str, alphas: list[float], k: int, folds: dict, rows: list[dict]) -> dict:
    start = model_path(work, RECIPES[recipe].start)
    table = {}
    for alpha in alphas:
        results = [scored_average(work, work / "interpolation" / recipe / f"alpha{alpha:g}" / f"fold{fold}.json",
                                  f"{recipe}@alpha{alpha:g}", [start, fold_network(work, recipe, fold)],
                                  [1 - alpha, alpha], work / "folds" / recipe / f"fold{fold}", fold, folds, rows)
                   for fold in range(k)]
        table[f"alpha {alpha:g}"] = {"alpha": alpha, **summarize(results)}
    return table


def soup(work: Path, recipes: list[str], k: int, folds: dict, rows: list[dict]) -> dict:
    weights = [1 / len(recipes)] * len(recipes)
    stored = {r: [json.loads((work / "cv" / r / f"fold{fold}.json").read_text()) for fold in range(k)]
              for r in recipes}  # each recipe's own out-of-fold results, as crossval wrote them
    souped = [scored_average(work, work / "soup" / recipes[0] / f"fold{fold}.json", f"{recipes[0]}@soup",
                             [fold_network(work, r, fold) for r in recipes], weights,
                             work / "folds" / recipes[0] / f"fold{fold}", fold, folds, rows) for fold in range(k)]
    ensembled = [logit_average([stored[r][fold] for r in recipes]) for fold in range(k)]
    each = {r: summarize(results) for r, results in stored.items()}
    return {**each, "soup (one network)": summarize(souped), "logit average (ensemble)": summarize(ensembled)}


def logit_average(results: list[dict]) -> dict:
    """The networks' out-of-fold results on one fold combined as an ensemble: the mean logit per adult. The
    ensemble's children AUROC and pointing game are not measured (None)."""
    logits = np.mean([[logit(a["probability"]) for a in r["adults"]] for r in results], axis=0)
    adults = [{**a, "probability": float(p)} for a, p in zip(results[0]["adults"], sigmoid(logits), strict=True)]
    nothing = {"pointing_game": None, "box_prior": None, "margin": None, "margin_ci95": None}
    return {**results[0], "adults": adults, "children_auroc": None, "localization": nothing, "wall_s": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # recipes at the default size only: the averages are scored on WORK/pool
    fine_tuned = [name for name, r in RECIPES.items() if r.arguments is not None and r.image_size == IMAGE_SIZE]
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--interpolate", choices=fine_tuned, metavar="RECIPE")
    how.add_argument("--soup", choices=fine_tuned, nargs="+", metavar="RECIPE")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1, 0.9, 0.8, 0.7, 0.6, 0.5, 0])
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    folds_file = args.work / "folds.json"
    if not folds_file.exists():
        raise SystemExit(f"{folds_file}: not found (run benchmarks/crossval.py first)")
    folds = json.loads(folds_file.read_text())
    rows = list(manifest_rows(args.work / "pool").values())
    if args.interpolate:
        recipes = interpolation(args.work, args.interpolate, args.alphas, args.k, folds, rows)
        out = args.work / "interpolation" / f"{args.interpolate}.json"
    else:
        recipes = soup(args.work, args.soup, args.k, folds, rows)
        out = args.work / "soup" / f"{args.soup[0]}.json"
    table = {"k": args.k, "machine": machine(), "recipes": recipes,
             "averaged": {"interpolate": args.interpolate, "alphas": args.alphas} if args.interpolate
             else {"soup": args.soup}}
    print_table(table)
    out.write_text(json.dumps(table, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

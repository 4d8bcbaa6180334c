"""Weight interpolation scored by cross-validation: does a network part-way between the model a recipe starts from
and the recipe's fine-tuned network keep more of the children for less of the adults?

Why: fine-tuning on adults costs the children (the joint base models reach 0.991 on Kermany's validation split,
every fine-tuned recipe 0.980-0.984, the children's yardstick 0.995). Averaging the weights of the start and the
fine-tuned network (WiSE-FT, Wortsman et al. 2022: w = start + alpha x (fine-tuned - start)) is the cheapest
trade: no training, one network, so the CAM still explains the output exactly. Whether it helps is measured here
exactly as benchmarks/crossval.py measures a recipe, on the fold networks that script trained
(WORK/runs/RECIPE/foldF): AUROC overall and within view, the children's AUROC, the pointing game against the box
prior, and the operating rules' PA sensitivity and "Not Normal" films called, thresholds from the other folds.
alpha 1 is the recipe itself, alpha 0 its start model.

With --freeze-batchnorm (the shipped recipe) the start and the fine-tuned network share their BatchNorm statistics,
so the average is a network of the same normalisation; for other recipes the statistics are averaged too.

usage: python benchmarks/interpolation.py [--work cv-bench] [--recipe adult-finding-ema-longest-bn]
       [--alphas 1 0.9 0.8 0.7 0.6 0.5 0]   -> WORK/interpolation/RECIPE.json (each fold kept, resumable)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from crossval import RECIPES, machine, model_path, print_table, scored_fold, summarize  # this folder's script

from pneumocam.data import manifest_rows
from pneumocam.files import atomic_path
from pneumocam.model.checkpoints import load_checkpoint


def interpolated(start: Path, fine_tuned: Path, alpha: float, out: Path) -> Path:
    """A checkpoint whose network weights are start + alpha x (fine_tuned - start), with fine_tuned's metadata.
    Entries only the fine-tuned network has (none that a prediction uses) are kept as they are."""
    begin, end = load_checkpoint(start)["state_dict"], load_checkpoint(fine_tuned)
    state = {k: begin[k] + alpha * (v - begin[k]) if k in begin and v.is_floating_point() else v
             for k, v in end["state_dict"].items() if k.startswith("net.")}
    meta = {**end["pneumocam"], "interpolation": {"start": str(start), "fine_tuned": str(fine_tuned),
                                                  "alpha": alpha}}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "pneumocam": meta}, tmp)
    return out


def fold_scores(work: Path, recipe: str, alpha: float, fold: int, folds: dict[str, int], rows: list[dict]) -> dict:
    """One alpha on one fold, kept in WORK/interpolation/RECIPE/alphaA/foldF.json (the checkpoint is deleted)."""
    tag = f"{recipe}@alpha{alpha:g}"
    out = work / "interpolation" / recipe / f"alpha{alpha:g}" / f"fold{fold}.json"
    if out.exists():
        return json.loads(out.read_text())
    fine_tuned = work / "runs" / recipe / f"fold{fold}" / "checkpoints" / "last.ckpt"
    data = work / "folds" / recipe / f"fold{fold}"
    if not (fine_tuned.exists() and (data / "manifest.csv").exists()):
        raise SystemExit(f"{fine_tuned} or {data}: not found (run benchmarks/crossval.py --recipes {recipe} first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checkpoint = interpolated(model_path(work, RECIPES[recipe].start), fine_tuned, alpha, out.with_suffix(".ckpt"))
    try:
        scores = scored_fold(checkpoint, work / "pool", rows, fold, folds, data,
                             work / "localize" / tag / f"fold{fold}")
        result = {"recipe": tag, "fold": fold, "wall_s": round(time.perf_counter() - start), **scores}
    finally:
        checkpoint.unlink()
    out.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    parser.add_argument("--recipe", default="adult-finding-ema-longest-bn",
                        choices=[name for name, r in RECIPES.items() if r.arguments is not None])
    parser.add_argument("--alphas", type=float, nargs="+", default=[1, 0.9, 0.8, 0.7, 0.6, 0.5, 0])
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    folds_file = args.work / "folds.json"
    if not folds_file.exists():
        raise SystemExit(f"{folds_file}: not found (run benchmarks/crossval.py --recipes {args.recipe} first)")
    folds = json.loads(folds_file.read_text())
    rows = list(manifest_rows(args.work / "pool").values())
    table = {"k": args.k, "recipe": args.recipe, "start": RECIPES[args.recipe].start,
             "machine": machine(), "recipes": {}}
    for alpha in args.alphas:
        results = [fold_scores(args.work, args.recipe, alpha, fold, folds, rows) for fold in range(args.k)]
        table["recipes"][f"alpha {alpha:g}"] = {"alpha": alpha, **summarize(results)}
        print(f"alpha {alpha:g}: scored on {args.k} folds", flush=True)
    print_table(table)
    out = args.work / "interpolation" / f"{args.recipe}.json"
    out.write_text(json.dumps(table, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Is a recipe's adult ranking limited by fitting or by generalising, and does refitting its last layer on balanced
groups help?

Why: every regulariser measured so far (mixup, sharpness-aware minimisation, group DRO, a view adversary,
intensity jitter, L2-SP, weight averages) left the within-view ranking where it was. Regularisers narrow the gap
between the training and the held-out data; this measures that gap on a recipe's fold networks (from
benchmarks/crossval.py): each network's AUROC on its own training images (eval mode, no augmentation), per source
and within view, beside the held-out fold's.

Then Deep Feature Reweighting (Kirichenko et al., ICLR 2023): the last layer refitted on the network's pooled
features (L2 logistic regression on standardised features, strength 1/C) with every group (source x view x label)
weighted equally or not at all, scored on the held-out fold and the children. It is one linear layer, so a refit
would keep the CAM exact. Two places to fit it: the fold's training images (`train`), and the scored fold itself,
cross-fitted over two halves of its patients (`held-out`, the paper's setting: features of images the network
never fitted).

usage: python benchmarks/last_layer.py [--work cv-bench] [--recipe adult-finding-ema] [--c 0.001 0.01 0.1 1]
       -> WORK/last_layer/RECIPE.json (each fold's pooled features kept beside as foldF.npz, resumable)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from crossval import ADULTS, CHILDREN, fold_network, machine, source_of  # this folder's script
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pneumocam.data import manifest_rows
from pneumocam.deploy import Predictor
from pneumocam.evaluation import fast_auroc
from pneumocam.files import atomic_path, read_csv

WEIGHTINGS = ("none", "groups")


def features(work: Path, recipe: str, fold: int) -> dict[str, np.ndarray]:
    """Logits, pooled features and labels of fold `fold`'s training images, its scored adults and the validation
    children, by the recipe's fold network; kept in WORK/last_layer/RECIPE/foldF.npz."""
    out = work / "last_layer" / recipe / f"fold{fold}.npz"
    if out.exists():
        return dict(np.load(out))
    pool, data = work / "pool", work / "folds" / recipe / f"fold{fold}"
    rows = manifest_rows(pool)
    scored = [r["file"] for r in json.loads((work / "cv" / recipe / f"fold{fold}.json").read_text())["adults"]]
    parts = {"train": [(data / r["file"], r) for r in read_csv(data / "manifest.csv") if r["split"] == "train"],
             "scored": [(pool / f, rows[f]) for f in scored],
             "children": [(pool / f, r) for f, r in rows.items() if source_of(r) == CHILDREN and r["split"] == "val"]}
    predictor = Predictor.from_checkpoint(fold_network(work, recipe, fold))
    found = {}
    for part, items in parts.items():
        logits, pooled = zip(*(predictor.features([predictor.load(p) for p, _ in items[i:i + 64]])
                               for i in range(0, len(items), 64)), strict=True)
        found |= {f"{part}_logit": np.concatenate(logits), f"{part}_features": np.concatenate(pooled),
                  f"{part}_label": np.array([int(r["label"]) for _, r in items]),
                  f"{part}_group": np.array([f"{source_of(r)}|{r['view'] or '-'}" for _, r in items]),
                  f"{part}_patient": np.array([r["patient"] for _, r in items])}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **found)
    return found


def aurocs(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, source: str = ADULTS) -> dict:
    """AUROC over one source's images and within its AP and PA films."""
    chosen = {"all": np.char.startswith(groups, source + "|"), "AP": groups == f"{source}|AP",
              "PA": groups == f"{source}|PA"}
    return {k: fast_auroc(scores[m], labels[m]) for k, m in chosen.items()}


def equal_group_weights(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sample weights under which every (group, label) cell weighs the same in all, mean weight 1: DFR's balanced
    groups. Not pneumocam.data.sample_weights, which keeps each group's size and only evens the labels within it."""
    cells = np.char.add(groups, labels.astype(str))
    _, index, counts = np.unique(cells, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[index]
    return weights * len(weights) / weights.sum()


def refit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, weighting: str, c: float):
    """The refitted layer as a scoring function of pooled features."""
    scaler = StandardScaler().fit(x)
    weights = equal_group_weights(groups, y) if weighting == "groups" else None
    layer = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y, sample_weight=weights)
    return lambda features: layer.decision_function(scaler.transform(features))


def held_out_aurocs(f: dict, fold: int, weighting: str | None = None, c: float = 1.0) -> dict:
    """The scored fold cross-fitted: a layer fitted on one half of its patients scores the other half, both ways;
    the AUROCs of the two halves averaged (each half's scores come from one layer, so they are not pooled).
    weighting None: the network's own layer, scored the same way on the same halves."""
    patients = np.unique(f["scored_patient"])
    half = np.isin(f["scored_patient"], np.random.default_rng(fold).choice(patients, len(patients) // 2,
                                                                            replace=False))
    halves = []
    for part in (half, ~half):
        if weighting is None:
            scores = f["scored_logit"][part]
        else:
            score = refit(f["scored_features"][~part], f["scored_label"][~part], f["scored_group"][~part],
                          weighting, c)
            scores = score(f["scored_features"][part])
        halves.append(aurocs(scores, f["scored_label"][part], f["scored_group"][part]))
    return {k: float(np.mean([h[k] for h in halves])) for k in halves[0]}


def fold_scores(f: dict, cs: list[float], fold: int) -> dict:
    result = {"fitting": {source: aurocs(f["train_logit"], f["train_label"], f["train_group"], source)
                          for source in {g.split("|")[0] for g in f["train_group"]}},
              "held_out": {**aurocs(f["scored_logit"], f["scored_label"], f["scored_group"]),
                           "children": fast_auroc(f["children_logit"], f["children_label"])},
              "held_out_halves": held_out_aurocs(f, fold),
              "refits": []}
    for c in cs:
        for weighting in WEIGHTINGS:
            score = refit(f["train_features"], f["train_label"], f["train_group"], weighting, c)
            result["refits"].append({"fit_on": "train", "weighting": weighting, "c": c,
                                     **aurocs(score(f["scored_features"]), f["scored_label"], f["scored_group"]),
                                     "children": fast_auroc(score(f["children_features"]), f["children_label"])})
            result["refits"].append({"fit_on": "held-out", "weighting": weighting, "c": c, "children": None,
                                     **held_out_aurocs(f, fold, weighting, c)})
    return result


def mean(values: list) -> str:
    return "-" if None in values else f"{np.mean(values):.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def print_table(folds: list[dict]) -> None:
    print("AUROC of the recipe's own last layer (mean, per fold):")
    for source in sorted(folds[0]["fitting"]):
        for k in ("all", "AP", "PA"):
            if folds[0]["fitting"][source][k] is not None:
                print(f"  training images, {source:<16}{k:<4}{mean([f['fitting'][source][k] for f in folds])}")
    for k in ("all", "AP", "PA", "children"):
        print(f"  held-out fold, {'children' if k == 'children' else ADULTS + ' ' + k:<22}"
              f"{mean([f['held_out'][k] for f in folds])}")
    print(f"  held-out fold, {'two halves averaged':<22}" + " | ".join(mean([f["held_out_halves"][k] for f in folds])
                                                                   for k in ("all", "AP", "PA")))
    print("\nrefitted last layer, scored on the held-out fold (adults: all / AP / PA; children):")
    for i, r in enumerate(folds[0]["refits"]):
        cells = [mean([f["refits"][i][k] for f in folds]) for k in ("all", "AP", "PA", "children")]
        print(f"  fit on {r['fit_on']:<9} weighting {r['weighting']:<7} C {r['c']:<6g}" + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    parser.add_argument("--recipe", default="adult-finding-ema")
    parser.add_argument("--c", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0],
                        help="inverse L2 strengths of the refitted layer")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    folds = [fold_scores(features(args.work, args.recipe, fold), args.c, fold) for fold in range(args.k)]
    print_table(folds)
    out = args.work / "last_layer" / f"{args.recipe}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"recipe": args.recipe, "machine": machine(), "folds": folds}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()

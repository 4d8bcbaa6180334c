"""Can any pair of per-view thresholds meet the issue's operating-point targets on a fold, even chosen on that fold?

Why: at the shipped rule (specificity 0.85 per view, thresholds from the other folds) a recipe misses PA
sensitivity >= 0.50 on a fold, or "Not Normal" called <= 0.20 on the mean. This says whether a better rule could
fix that or the ranking itself is the limit. Per fold of a recipe's out-of-fold predictions (WORK/cv/RECIPE/foldF.json,
from benchmarks/crossval.py), every AP threshold is tried with every PA threshold, chosen on the scored fold itself
(an oracle: optimistic by construction, an upper bound for any rule), and the best pair kept that meets

    "Not Normal" called <= 0.20, specificity >= 0.75 overall, sensitivity overall >= FLOOR,

best = the highest PA sensitivity, then the highest overall sensitivity. FLOOR 0 lets the thresholds spend every
false alarm on PA films by calling almost no AP film (most pneumonias are on AP films): the floors say what the
targets cost once the AP films are not given up. Last, per fold, the highest overall sensitivity at which PA
sensitivity >= 0.50 can still be had with the targets above: what meeting all of them costs the AP films.

Then the same search as a rule, honestly: thresholds chosen on the other folds' predictions (the highest overall
sensitivity with PA sensitivity >= P and "Not Normal" called <= N there; at the targets, and with a margin),
applied to the fold. This is what a calibration rule aimed at the targets would ship.

usage: python benchmarks/operating_frontier.py [--work cv-bench] [--recipe adult-finding-ema-longest-bn]
       [--floors 0 0.4 0.45 0.5]   -> WORK/frontier/RECIPE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumocam.evaluation import calls_by_view

MAX_NOT_NORMAL, MIN_SPECIFICITY = 0.20, 0.75


def view_counts(probs: np.ndarray, labels: np.ndarray, hard: np.ndarray) -> tuple[np.ndarray, dict]:
    """Candidate thresholds of one view (each probability, and one above all: call none) and, per candidate, how
    many positives, negatives and "Not Normal" negatives it calls (probability >= threshold)."""
    thresholds = np.append(np.unique(probs), np.inf)
    called = probs[None, :] >= thresholds[:, None]
    return thresholds, {"pos": called[:, labels == 1].sum(1), "neg": called[:, labels == 0].sum(1),
                        "hard": called[:, hard].sum(1)}


def best_pair(adults: list[dict], floor: float, min_pa: float = 0.0, pa_first: bool = True,
              max_not_normal: float = MAX_NOT_NORMAL) -> dict | None:
    """The best (AP, PA) threshold pair on these adults under the targets ("Not Normal" called <= max_not_normal,
    specificity >= 0.75), overall sensitivity >= `floor` and PA sensitivity >= `min_pa`, or None if none meets
    them. Best: the highest PA sensitivity, then overall sensitivity (`pa_first`), or the other way round."""
    probs = np.array([a["probability"] for a in adults])
    labels = np.array([a["label"] for a in adults])
    views = np.array([a["view"] for a in adults])
    hard = np.array([a["finding"] == "not-normal" for a in adults])
    ap, pa = views == "AP", views == "PA"
    t_ap, c_ap = view_counts(probs[ap], labels[ap], hard[ap])
    t_pa, c_pa = view_counts(probs[pa], labels[pa], hard[pa])
    total = {k: c_ap[k][:, None] + c_pa[k][None, :] for k in c_ap}  # (AP candidates, PA candidates)
    n_pos, n_neg, n_hard = (labels == 1).sum(), (labels == 0).sum(), hard.sum()
    sensitivity, specificity = total["pos"] / n_pos, 1 - total["neg"] / n_neg
    not_normal = total["hard"] / n_hard
    pa_sensitivity = np.broadcast_to(c_pa["pos"][None, :] / ((labels == 1) & pa).sum(), sensitivity.shape)
    ok = ((not_normal <= max_not_normal) & (specificity >= MIN_SPECIFICITY) & (sensitivity >= floor)
          & (pa_sensitivity >= min_pa))
    if not ok.any():
        return None
    first, second = (pa_sensitivity, sensitivity) if pa_first else (sensitivity, pa_sensitivity)
    score = np.where(ok, first * 10 + second, -np.inf)  # sensitivities are steps of at least 1/90: 10x orders
    i, j = np.unravel_index(np.argmax(score), score.shape)
    return {"threshold_ap": float(t_ap[i]), "threshold_pa": float(t_pa[j]),
            "sensitivity_pa": float(pa_sensitivity[i, j]), "sensitivity": float(sensitivity[i, j]),
            "sensitivity_ap": float(c_ap["pos"][i] / ((labels == 1) & ap).sum()),
            "specificity": float(specificity[i, j]), "not_normal_called": float(not_normal[i, j])}


def cross_fitted(folds: list[list[dict]], max_not_normal: float, min_pa: float) -> list[dict | None]:
    """Per fold: thresholds chosen by best_pair on the other folds, applied to this one."""
    rows = []
    for fold, adults in enumerate(folds):
        others = [a for other, items in enumerate(folds) if other != fold for a in items]
        chosen = best_pair(others, 0.0, min_pa=min_pa, pa_first=False, max_not_normal=max_not_normal)
        if chosen is None:
            rows.append(None)
            continue
        thresholds = {"AP": chosen["threshold_ap"], "PA": chosen["threshold_pa"]}
        calls = calls_by_view(np.array([a["probability"] for a in adults]), np.array([a["label"] for a in adults]),
                              np.array([thresholds[a["view"]] for a in adults]), [a["view"] for a in adults],
                              [a["finding"] for a in adults])
        rows.append({"threshold_ap": thresholds["AP"], "threshold_pa": thresholds["PA"],
                     "sensitivity_pa": calls["by_view"]["PA"]["sensitivity"],
                     "sensitivity_ap": calls["by_view"]["AP"]["sensitivity"],
                     "sensitivity": calls["all"]["sensitivity"], "specificity": calls["all"]["specificity"],
                     "not_normal_called": calls["not_normal_called"]})
    return rows


def describe(best: dict | None) -> str:
    if best is None:
        return "no pair meets the targets"
    return (f"PA sensitivity {best['sensitivity_pa']:.3f}, AP {best['sensitivity_ap']:.3f}, overall "
            f"{best['sensitivity']:.3f}, specificity {best['specificity']:.3f}, 'Not Normal' called "
            f"{best['not_normal_called']:.3f} (AP >= {best['threshold_ap']:.3f}, PA >= {best['threshold_pa']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    parser.add_argument("--recipe", default="adult-finding-ema-longest-bn")
    parser.add_argument("--floors", type=float, nargs="+", default=[0, 0.4, 0.45, 0.5])
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    folds = []
    for fold in range(args.k):
        scored = args.work / "cv" / args.recipe / f"fold{fold}.json"
        if not scored.exists():
            raise SystemExit(f"{scored}: not found (run benchmarks/crossval.py --recipes {args.recipe} first)")
        folds.append(json.loads(scored.read_text())["adults"])
    table = {"recipe": args.recipe, "max_not_normal": MAX_NOT_NORMAL, "min_specificity": MIN_SPECIFICITY,
             "floors": {}}
    for floor in args.floors:
        table["floors"][f"{floor:g}"] = [best_pair(adults, floor) for adults in folds]
        for fold, best in enumerate(table["floors"][f"{floor:g}"]):
            print(f"floor {floor:g}, fold {fold}: {describe(best)}")
    table["with_pa_sensitivity_0.5"] = [best_pair(adults, 0.0, min_pa=0.5, pa_first=False) for adults in folds]
    for fold, best in enumerate(table["with_pa_sensitivity_0.5"]):
        print(f"PA sensitivity >= 0.50, fold {fold}: {describe(best)}")
    table["cross_fitted"] = {}
    for max_not_normal, min_pa in ((0.20, 0.50), (0.18, 0.55)):
        rows = cross_fitted(folds, max_not_normal, min_pa)
        table["cross_fitted"][f"not_normal<={max_not_normal:g},pa>={min_pa:g}"] = rows
        for fold, row in enumerate(rows):
            print(f"rule 'Not Normal' <= {max_not_normal:g}, PA >= {min_pa:g} on the other folds, fold {fold}: "
                  f"{describe(row)}")
    out = args.work / "frontier" / f"{args.recipe}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

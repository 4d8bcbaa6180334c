"""Evaluation figures from probabilities and labels: ROC, precision-recall, confusion matrix, calibration.

Each function returns a matplotlib Figure (the caller saves it), titled, with labelled axes and
the summary number (AUROC, AUPRC, Brier/ECE) in the legend.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

MARKERS = ("o", "s", "^", "D", "v")


def roc_figure(probs: np.ndarray, labels: np.ndarray, auroc: float | None,
               operating_points: Sequence[dict] = ()) -> Figure:
    """ROC curve with the chance diagonal; each operating point {name, threshold, recall, specificity} marked."""
    fig, ax = plt.subplots(figsize=(5.2, 5), constrained_layout=True)
    if auroc is not None:
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr, lw=2, label=f"model (AUROC = {auroc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="chance (AUROC = 0.5)")
    for marker, point in zip(MARKERS, operating_points, strict=False):
        ax.plot(1 - point["specificity"], point["recall"], marker, ms=9, mec="black",
                label=f"{point['name']} (t = {point['threshold']:.3f})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title="ROC curve", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pr_figure(probs: np.ndarray, labels: np.ndarray, auprc: float | None) -> Figure:
    """Precision-recall curve with the prevalence line (the precision of a random classifier)."""
    fig, ax = plt.subplots(figsize=(5.2, 5), constrained_layout=True)
    prevalence = float(np.mean(labels))
    if auprc is not None:
        precision, recall, _ = precision_recall_curve(labels, probs)
        ax.step(recall, precision, where="post", lw=2, label=f"model (AUPRC = {auprc:.3f})")
    ax.axhline(prevalence, ls="--", color="gray", lw=1, label=f"prevalence = {prevalence:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall curve",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(confusion: dict, threshold: float) -> Figure:
    """2x2 confusion matrix: counts, and the rate within each true class (row-normalised)."""
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]], dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.3), constrained_layout=True)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = ["no pneumonia (0)", "pneumonia (1)"]
    for r in range(2):
        for c in range(2):
            ax.text(c, r, f"{int(matrix[r, c])}\n{rates[r, c]:.1%}", ha="center", va="center", fontsize=12,
                    color="white" if rates[r, c] > 0.5 else "black")
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names, rotation=90, va="center")
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (threshold {threshold:.3f})")
    return fig


def calibration_figure(curves: dict[str, np.ndarray], labels: np.ndarray, n_bins: int = 10) -> Figure:
    """Reliability diagram (observed frequency vs mean predicted probability), one curve per set of
    probabilities (e.g. before and after calibration, each with its Brier score and ECE in the legend),
    over a histogram of the first set."""
    from pneumocam.evaluation.metrics import calibration_scores, reliability_bins

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6.2), height_ratios=(3, 1.2), sharex=True,
                                      constrained_layout=True)
    top.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfectly calibrated")
    for (name, probs), marker in zip(curves.items(), MARKERS, strict=False):
        filled = [row for row in reliability_bins(probs, labels, n_bins) if row["n"]]
        observed = [row["observed_frequency"] for row in filled]
        predicted = [row["mean_predicted"] for row in filled]
        score = calibration_scores(probs, labels, n_bins)
        top.plot(predicted, observed, f"{marker}-", lw=2,
                 label=f"{name} (Brier = {score['brier']:.3f}, ECE = {score['ece']:.3f})")
    top.set(ylabel="observed frequency of pneumonia", title="Calibration (reliability diagram)",
            xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    probs = next(iter(curves.values()))
    bins = np.linspace(0, 1, n_bins + 1)
    bottom.hist([probs[labels == 0], probs[labels == 1]], bins=bins, stacked=True,
                label=["no pneumonia", "pneumonia"], color=["tab:blue", "tab:red"])
    bottom.set(xlabel=f"predicted probability of pneumonia ({next(iter(curves))})", ylabel="images")
    bottom.legend(fontsize=8)
    return fig


def forest_figure(subgroups: dict, metric: str = "sensitivity") -> Figure:
    """One row per subgroup: the metric with its 95% CI, the whole split's value as a vertical line;
    groups under the minimum size are drawn hollow and marked in their label."""
    groups = [g for g in subgroups["groups"] if g[metric] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(groups) + 1.4), constrained_layout=True)
    for row, g in enumerate(groups):
        ci = g["ci95"][metric]
        if ci:
            ax.plot(ci, [row, row], color="black", lw=1.2)
        ax.plot(g[metric], row, "o", ms=6, mfc="white" if g["small"] else "tab:blue", mec="tab:blue")
    overall = subgroups["overall"][metric]
    if overall is not None:
        ax.axvline(overall, color="gray", ls="--", lw=1, label=f"whole split ({overall:.2f})")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_yticks(range(len(groups)), [f"{g['name']} (n={g['n']}{', small' if g['small'] else ''})" for g in groups],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} at threshold {subgroups['threshold']:.3g} (95% CI)", xlim=(-0.02, 1.02),
           title=f"{metric.capitalize()} by subgroup")
    ax.grid(alpha=0.3, axis="x")
    return fig


def faithfulness_figure(faithfulness: dict, target: str = "probability") -> Figure:
    """Mean deletion and insertion curves of every map, side by side, with the areas in the legends."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher"), strict=True):
        for name, kinds in faithfulness["maps"].items():
            curve = kinds[kind]["curve"]
            ax.plot(curve["fractions"], curve[target], marker=".", label=f"{name} (area {kinds[kind][target]:.3f})")
        ax.set(xlabel=f"share of pixels {'removed' if kind == 'deletion' else 'revealed'}, most salient first",
               ylabel=f"mean pneumonia {target}", title=f"{kind.capitalize()} ({better} area is more faithful)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig

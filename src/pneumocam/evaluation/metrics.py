"""Probabilities + labels -> classification metrics (scikit-learn), thresholds and bootstrap CIs.

Edge cases give defined values, never NaN: a ratio with an empty denominator (e.g. precision with
no positive predictions) is 0.0 (scikit-learn's zero_division=0), and ranking metrics (AUROC,
AUPRC) on a split with one class are None, with the reason in `warnings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from pneumocam.config import THRESHOLD_RULES

RATE_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "npv", "balanced_accuracy")
RANK_METRICS = ("auroc", "auprc")
CI_METRICS = RATE_METRICS + RANK_METRICS + ("brier",)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if probs.shape != labels.shape:
        raise ValueError(f"{probs.size} probabilities but {labels.size} labels")
    if probs.size == 0:
        raise ValueError("no predictions to evaluate")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must be finite and lie in [0, 1]")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return probs, labels


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def threshold_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Confusion matrix and rate metrics at `threshold` (prediction = probability >= threshold)."""
    probs, labels = _check(probs, labels)
    preds = (probs >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel())
    # every rate follows from the confusion matrix (tests check them against sklearn's own scorers)
    precision, recall, specificity = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / labels.size,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": specificity,
        "npv": _ratio(tn, tn + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def ranking_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """AUROC, AUPRC (average precision) and Brier score; AUROC/AUPRC are None with one class."""
    probs, labels = _check(probs, labels)
    both = 0 < labels.sum() < labels.size
    return {
        "auroc": float(skm.roc_auc_score(labels, probs)) if both else None,
        "auprc": float(skm.average_precision_score(labels, probs)) if both else None,
        "brier": float(skm.brier_score_loss(labels, probs, pos_label=1)),
    }


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Everything at one threshold: n, n_positive, the rate metrics, confusion, AUROC/AUPRC/Brier."""
    probs, labels = _check(probs, labels)
    result = {"n": int(labels.size), "n_positive": int(labels.sum())}
    result.update(threshold_metrics(probs, labels, threshold))
    result.update(ranking_metrics(probs, labels))
    warnings = []
    if result["auroc"] is None:
        warnings.append("only one class present: AUROC and AUPRC are undefined (null)")
    result["warnings"] = warnings
    return result


@dataclass(frozen=True)
class Bootstrap:
    n_resamples: int = 1000
    seed: int = 0


def resampler(labels: np.ndarray, groups: np.ndarray | None = None):
    """A function rng -> the image indices of one bootstrap resample, and the name of the method.

    Without groups (or when every group has one image): images are resampled, positives and negatives
    separately, so every resample keeps the split's prevalence and both classes. With groups (patients)
    that hold several images: whole patients are resampled (cluster bootstrap), separately for patients
    with and without pneumonia, so that images of one patient, which are not independent, never count as
    independent evidence."""
    labels = np.asarray(labels)
    if groups is not None and len(set(groups)) < len(groups):
        members: dict = {}
        for index, group in enumerate(groups):
            members.setdefault(group, []).append(index)
        clusters = [np.asarray(m) for m in members.values()]
        strata = [[c for c in clusters if labels[c].max() == k] for k in (0, 1)]
        strata = [s for s in strata if s]

        def patients(rng: np.random.Generator) -> np.ndarray:
            return np.concatenate([s[i] for s in strata for i in rng.integers(0, len(s), len(s))])

        return patients, "cluster bootstrap over patients, stratified by patient label"
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)

    def images(rng: np.random.Generator) -> np.ndarray:
        if pos.size and neg.size:
            return np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        return rng.choice(labels.size, labels.size)

    return images, "stratified bootstrap over images"


def bootstrap_ci(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
                 config: Bootstrap = Bootstrap(), groups: np.ndarray | None = None) -> dict[str, list[float] | None]:
    """Percentile 95% CIs by bootstrap (see resampler: by image, or by patient when `groups` repeat);
    the method's name is under "ci_method"."""
    probs, labels = _check(probs, labels)
    rng = np.random.default_rng(config.seed)
    draw, method = resampler(labels, groups)
    samples: dict[str, list[float]] = {m: [] for m in CI_METRICS}
    for _ in range(config.n_resamples):
        idx = draw(rng)
        p, y = probs[idx], labels[idx]
        values = {**threshold_metrics(p, y, threshold), **ranking_metrics(p, y)}
        for name in CI_METRICS:
            if values[name] is not None:
                samples[name].append(values[name])
    result = {name: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None)
              for name, v in samples.items()}
    return {**result, "ci_method": method}


def bootstrap_mean_ci(values: np.ndarray, groups: np.ndarray | None = None, config: Bootstrap = Bootstrap()) -> dict:
    """95% percentile CI of a mean of per-image scores (e.g. pointing-game hits), resampling patients
    when `groups` repeat, else images."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(config.seed)
    draw, method = resampler(np.zeros(values.size, dtype=int), groups)
    means = [float(values[draw(rng)].mean()) for _ in range(config.n_resamples)] if values.size else []
    ci = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))] if means else None
    return {"ci95": ci, "ci_method": method, "n_resamples": config.n_resamples}


def fast_auroc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with midranks for ties: equal to scikit-learn's roc_auc_score (tested), without its
    input checks, which dominate a bootstrap's time. None with one class."""
    from scipy.stats import rankdata

    labels = np.asarray(labels)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(probs)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc_ci(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
                       config: Bootstrap = Bootstrap()) -> list[float] | None:
    """95% percentile CI of the AUROC alone (see resampler: by image, or by patient when `groups` repeat)."""
    probs, labels = _check(probs, labels)
    draw, _ = resampler(labels, groups)
    rng = np.random.default_rng(config.seed)
    values = []
    for _ in range(config.n_resamples):
        index = draw(rng)
        auroc = fast_auroc(probs[index], labels[index])
        if auroc is not None:  # a resample with one class has none
            values.append(auroc)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def bin_index(probs: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """The bin of each probability in [0, 1]: k for [k/n, (k+1)/n), the last bin closed at 1."""
    return np.minimum(np.floor(np.asarray(probs, dtype=np.float64) * n_bins).astype(int), n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> list[dict]:
    """The one binning rule of the ECE, the reliability diagram and reliability.csv: n_bins equal-width bins,
    bin k = [k/n, (k+1)/n), the last one closed at 1; per bin its count, mean probability and observed
    frequency (None where empty)."""
    probs, labels = _check(probs, labels)
    index = bin_index(probs, n_bins)
    rows = []
    for k in range(n_bins):
        inside = index == k
        rows.append({"bin_low": k / n_bins, "bin_high": (k + 1) / n_bins, "n": int(inside.sum()),
                     "mean_predicted": float(probs[inside].mean()) if inside.any() else None,
                     "observed_frequency": float(labels[inside].mean()) if inside.any() else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE (L1) over reliability_bins: the count-weighted mean of |mean probability - observed frequency|; the
    same as torchmetrics' binary calibration error wherever no probability sits on a bin edge (tested)."""
    rows = reliability_bins(probs, labels, n_bins)
    total = sum(row["n"] for row in rows)
    return float(sum(row["n"] * abs(row["mean_predicted"] - row["observed_frequency"]) for row in rows if row["n"])
                 / total)


def calibration_scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, float]:
    """ECE (expected_calibration_error) and Brier score: how far probabilities are from frequencies."""
    probs, labels = _check(probs, labels)
    return {"ece": expected_calibration_error(probs, labels, n_bins),
            "brier": float(skm.brier_score_loss(labels, probs, pos_label=1))}


def youden_threshold(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """The threshold maximising sensitivity + specificity - 1 (None with one class)."""
    probs, labels = _check(probs, labels)
    if not 0 < labels.sum() < labels.size:
        return None
    fpr, tpr, thresholds = skm.roc_curve(labels, probs)
    return _finite_threshold(thresholds[int(np.argmax(tpr - fpr))])


def threshold_for_sensitivity(probs: np.ndarray, labels: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity reaches `target` (so specificity is as high as it can be)."""
    probs, labels = _check(probs, labels)
    if labels.sum() == 0:
        return None
    fpr, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    index = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    return _finite_threshold(thresholds[index])


def threshold_for_specificity(probs: np.ndarray, labels: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose specificity reaches `target` (so sensitivity is as high as it can be)."""
    probs, labels = _check(probs, labels)
    if labels.sum() == labels.size:
        return None
    fpr, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    index = int(np.flatnonzero(fpr <= 1 - target + 1e-12)[-1])
    return _finite_threshold(thresholds[index])


def _finite_threshold(value: float) -> float:
    # roc_curve's first threshold is +inf ("predict nothing positive"); just above 1 means the same
    return float(value) if np.isfinite(value) else float(np.nextafter(1.0, 2.0))


def operating_points(probs: np.ndarray, labels: np.ndarray, thresholds: dict[str, float | None]) -> list[dict]:
    """The threshold metrics at each named threshold; a None threshold is reported as unavailable."""
    points = []
    for name, threshold in thresholds.items():
        if threshold is None:
            points.append({"name": name, "threshold": None, "available": False})
        else:
            points.append({"name": name, "available": True, **threshold_metrics(probs, labels, threshold)})
    return points


def paired_auroc_difference(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray,
                            config: Bootstrap = Bootstrap(), groups: np.ndarray | None = None) -> dict:
    """AUROC(a) - AUROC(b) on the same images, with a paired-bootstrap 95% CI and a two-sided bootstrap p-value
    (twice the share of resampled differences on the other side of 0). Resampled as every other CI here
    (resampler): whole patients when `groups` repeat, else images, stratified by label."""
    probs_a, labels = _check(probs_a, labels)
    probs_b, _ = _check(probs_b, labels)
    if len(set(labels.tolist())) < 2:
        raise ValueError("a paired AUROC comparison needs both classes")
    rng = np.random.default_rng(config.seed)
    draw, method = resampler(labels, groups)
    diffs = []
    for _ in range(config.n_resamples):
        idx = draw(rng)
        a, b = fast_auroc(probs_a[idx], labels[idx]), fast_auroc(probs_b[idx], labels[idx])
        if a is not None and b is not None:  # a patient resample can, rarely, hold one class only
            diffs.append(a - b)
    diffs = np.asarray(diffs)
    point = skm.roc_auc_score(labels, probs_a) - skm.roc_auc_score(labels, probs_b)
    p_value = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return {"auroc_difference": float(point), "ci95": [float(np.percentile(diffs, 2.5)),
                                                        float(np.percentile(diffs, 97.5))],
            "p_value": float(p_value), "n_resamples": config.n_resamples, "ci_method": method}


def choose_threshold(probs: np.ndarray, labels: np.ndarray, rule: str = "sensitivity",
                     target_sensitivity: float = 0.9, target_specificity: float = 0.85) -> tuple[float, str]:
    """(threshold, the rule in words) on calibrated probabilities of the calibration split: `pneumocam calibrate`'s
    --rule."""
    if rule == "sensitivity":
        threshold = threshold_for_sensitivity(probs, labels, target_sensitivity)
        text = f"the highest threshold with sensitivity >= {target_sensitivity:g}"
    elif rule == "specificity":
        threshold = threshold_for_specificity(probs, labels, target_specificity)
        text = f"the lowest threshold with specificity >= {target_specificity:g}"
    elif rule == "youden":
        threshold = youden_threshold(probs, labels)
        text = "Youden's J (sensitivity + specificity - 1) at its maximum"
    else:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {THRESHOLD_RULES}")
    if threshold is None:
        raise ValueError("the threshold rule needs both classes in the calibration split")
    return float(threshold), text

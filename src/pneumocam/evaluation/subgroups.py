"""Who does the model fail? Metrics per subgroup (sex, age band, view, RSNA's finding, and each pair of them), with
patient-level bootstrap CIs and the difference to the whole split.

Each bootstrap resample draws whole patients from the whole evaluated split (stratified by label), then
scores the whole split and every subgroup inside that same resample, so a subgroup's CI reflects its own
size and its difference to the overall value is paired. A metric a group cannot define (AUROC with one
class, sensitivity without positives) is None. Groups smaller than `min_size` are kept and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from pneumocam.config import MIN_SUBGROUP_SIZE
from pneumocam.evaluation.metrics import Bootstrap, bin_index, fast_auroc, resampler

METRICS = ("prevalence", "auroc", "sensitivity", "specificity", "fnr", "ece")


def known_attributes(values: dict[str, list[str]]) -> list[str]:
    """The attributes with at least one known value (the default of `evaluate --by`)."""
    return [a for a, column in values.items() if any(column)]


def calls_by_view(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, views: list[str],
                  findings: list[str]) -> dict:
    """Each image called at its own threshold (per-view operating points): sensitivity and specificity overall and
    per view ("unknown" for ""), and the share of hard negatives (finding not-normal) called pneumonia. Point
    values."""
    called, labels = probs >= thresholds, np.asarray(labels)

    def rates(inside: np.ndarray) -> dict:
        pos, neg = inside & (labels == 1), inside & (labels == 0)
        return {"n": int(inside.sum()), "sensitivity": float(called[pos].mean()) if pos.any() else None,
                "specificity": float((~called[neg]).mean()) if neg.any() else None}

    views_array = np.asarray(views)
    hard = np.asarray(findings) == "not-normal"
    return {"all": rates(np.ones(labels.size, bool)),
            "by_view": {v or "unknown": rates(views_array == v) for v in sorted(set(views))},
            "not_normal_called": float(called[hard].mean()) if hard.any() else None}


def calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """metrics.expected_calibration_error over the same bins (metrics.bin_index), in a few numpy calls because
    the bootstrap calls it thousands of times."""
    gap = np.bincount(bin_index(probs, n_bins), weights=probs - labels, minlength=n_bins)
    return float(np.abs(gap).sum() / labels.size)


def group_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """The subgroup table's metrics for one group: prevalence, AUROC, sensitivity, specificity,
    false-negative rate (underdiagnosis) and ECE."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    called = probs >= threshold
    tp, tn = int(np.sum(called & (labels == 1))), int(np.sum(~called & (labels == 0)))
    sensitivity = tp / n_pos if n_pos else None
    return {
        "prevalence": n_pos / labels.size if labels.size else None,
        "auroc": fast_auroc(probs, labels),
        "sensitivity": sensitivity,
        "specificity": tn / n_neg if n_neg else None,
        "fnr": 1 - sensitivity if sensitivity is not None else None,
        "ece": calibration_error(probs, labels) if labels.size else None,
    }


@dataclass(frozen=True)
class Group:
    attributes: dict[str, str]  # e.g. {"sex": "F", "view": "AP"}
    mask: np.ndarray  # (N,) bool

    @property
    def name(self) -> str:
        return ", ".join(f"{a}={v}" for a, v in self.attributes.items())


def define_groups(values: dict[str, list[str]], by: list[str]) -> list[Group]:
    """Every known value of each attribute in `by`, then every non-empty pair of values of two attributes."""
    groups = []
    for size in (1, 2):
        for names in combinations(by, size):
            columns = [np.asarray(values[n]) for n in names]
            combos = sorted({tuple(c[i] for c in columns) for i in range(columns[0].size)})
            for combo in combos:
                if "" in combo:
                    continue
                mask = np.logical_and.reduce([c == v for c, v in zip(columns, combo, strict=True)])
                groups.append(Group(dict(zip(names, combo, strict=True)), mask))
    return groups


def _interval(samples: list[float]) -> list[float] | None:
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if samples else None


def subgroup_table(probs: np.ndarray, labels: np.ndarray, patients: list[str], values: dict[str, list[str]],
                   by: list[str], threshold: float = 0.5, min_size: int = MIN_SUBGROUP_SIZE,
                   bootstrap: Bootstrap = Bootstrap()) -> dict:
    """metrics.json's `subgroups`: the whole split, then each group with its CIs and its difference to the
    whole split (point and CI)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    unknown = [a for a in by if a not in values]
    if unknown:
        raise ValueError(f"unknown subgroup attribute(s) {unknown}; known: {sorted(values)}")
    groups = define_groups(values, by)
    overall = group_metrics(probs, labels, threshold)
    samples = {g.name: {m: [] for m in METRICS} for g in groups}
    differences = {g.name: {m: [] for m in METRICS} for g in groups}
    draw, method = resampler(labels, np.asarray(patients))
    rng = np.random.default_rng(bootstrap.seed)
    for _ in range(bootstrap.n_resamples):
        idx = draw(rng)
        p, y = probs[idx], labels[idx]
        whole = group_metrics(p, y, threshold)
        for g in groups:
            inside = g.mask[idx]
            if not inside.any():
                continue
            values_g = group_metrics(p[inside], y[inside], threshold)
            for m in METRICS:
                if values_g[m] is not None:
                    samples[g.name][m].append(values_g[m])
                    if whole[m] is not None:
                        differences[g.name][m].append(values_g[m] - whole[m])
    rows = []
    for g in groups:
        point = group_metrics(probs[g.mask], labels[g.mask], threshold)
        rows.append({
            "name": g.name, "attributes": g.attributes, "n": int(g.mask.sum()),
            "n_patients": len({patients[i] for i in np.flatnonzero(g.mask)}),
            "n_positive": int(labels[g.mask].sum()), **point,
            "small": bool(g.mask.sum() < min_size),
            "ci95": {m: _interval(samples[g.name][m]) for m in METRICS},
            "difference": {m: (point[m] - overall[m] if point[m] is not None and overall[m] is not None else None)
                           for m in METRICS},
            "difference_ci95": {m: _interval(differences[g.name][m]) for m in METRICS},
        })
    return {
        "by": list(by), "threshold": float(threshold), "min_size": min_size,
        "n_unknown": {a: int(sum(1 for v in values[a] if not v)) for a in by},
        "overall": {"n": int(labels.size), "n_positive": int(labels.sum()), **overall},
        "groups": rows, "ci_method": method, "bootstrap_resamples": bootstrap.n_resamples,
        "bootstrap_seed": bootstrap.seed,
    }


def subgroup_rows(table: dict) -> list[dict]:
    """The table flattened for subgroups.csv: one row per group, a column per metric, CI and difference."""
    rows = []
    for g in table["groups"]:
        row = {"group": g["name"], "n": g["n"], "n_positive": g["n_positive"], "small": int(g["small"])}
        for m in METRICS:
            ci, diff_ci = g["ci95"][m], g["difference_ci95"][m]
            row.update({m: g[m], f"{m}_ci_low": ci[0] if ci else None, f"{m}_ci_high": ci[1] if ci else None,
                        f"{m}_difference": g["difference"][m],
                        f"{m}_difference_ci_low": diff_ci[0] if diff_ci else None,
                        f"{m}_difference_ci_high": diff_ci[1] if diff_ci else None})
        rows.append(row)
    return rows

"""Probabilities that mean what they say.

Temperature scaling with an intercept: calibrated logit = logit / T + b, fitted by maximum likelihood on a
calibration split (not the test split). A model trained with class balancing or pos_weight has its logits
shifted, which a temperature alone cannot undo, hence the intercept (`intercept=False` fits T alone).
A prevalence correction then moves the probabilities from the calibration split's prevalence to the one
where the model will be used: b += logit(P) - logit(prevalence of the calibration split) (Saerens et al.
2002, for a label shift with the class-conditional images unchanged).
Where the view position is known, a calibration per view: portable AP films carry pneumonia far more often than
upright PA films, so one temperature and intercept fits neither view's frequencies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# scipy.optimize and scikit-learn are imported where a fit needs them: every prediction imports this module for
# Calibration, and they would add about a second to its start


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logits -> probabilities in [0, 1], computed in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    intercept: float = 0.0  # fitted on the calibration split
    prevalence_shift: float = 0.0  # logit(target prevalence) - logit(calibration prevalence); 0 without a target
    calibration_prevalence: float | None = None
    target_prevalence: float | None = None

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Raw logits -> calibrated logits."""
        return np.asarray(logits, dtype=np.float64) / self.temperature + self.intercept + self.prevalence_shift

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(self.apply(logits))

    def to_metadata(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict | None) -> Calibration:
        """A checkpoint's `calibration` entry; an uncalibrated checkpoint gives the identity."""
        return cls(**meta) if meta else cls()


def fit_calibration(logits: np.ndarray, labels: np.ndarray, intercept: bool = True,
                    target_prevalence: float | None = None) -> Calibration:
    """Maximum-likelihood temperature (and intercept), then the prevalence correction when a target is given."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if not 0 < y.sum() < y.size:
        raise ValueError("calibration needs both classes in the calibration split")

    def nll(params: np.ndarray) -> float:
        log_t, b = params[0], params[1] if intercept else 0.0
        s = z * np.exp(-log_t) + b
        return float(np.mean(np.logaddexp(0, s) - y * s))  # binary cross-entropy on the logits, stable

    start = np.zeros(2 if intercept else 1)
    from scipy.optimize import minimize

    result = minimize(nll, start, method="L-BFGS-B", bounds=[(-5, 5)] + ([(-20, 20)] if intercept else []))
    temperature, b = float(np.exp(result.x[0])), float(result.x[1]) if intercept else 0.0
    prevalence = float(y.mean())
    shift = 0.0
    if target_prevalence is not None:
        if not 0 < target_prevalence < 1:
            raise ValueError(f"the target prevalence must lie strictly between 0 and 1, not {target_prevalence}")
        shift = logit(target_prevalence) - logit(prevalence)
    return Calibration(temperature, b, shift, prevalence, target_prevalence)


def fit_view_calibrations(logits: np.ndarray, labels: np.ndarray, views: np.ndarray, min_images: int,
                          intercept: bool = True) -> dict[str, Calibration]:
    """{view: calibration fitted on that view's images} for every named view with at least `min_images` of each
    class; the other views keep the overall calibration."""
    z, y, views = np.asarray(logits, dtype=np.float64), np.asarray(labels), np.asarray(views)
    out = {}
    for view in sorted(set(views.tolist()) - {""}):
        inside = views == view
        if min(int(y[inside].sum()), int((1 - y[inside]).sum())) >= min_images:
            out[view] = fit_calibration(z[inside], y[inside], intercept)
    return out


def apply_by_view(logits: np.ndarray, views: np.ndarray | list[str], overall: Calibration,
                  by_view: dict[str, Calibration]) -> np.ndarray:
    """Raw logits (first axis: images; an image's CAM cells too) -> calibrated logits, each image through its
    view's calibration, the overall one where its view has none."""
    z, views = np.asarray(logits, dtype=np.float64), np.asarray(views)
    out = overall.apply(z)
    for view, calibration in by_view.items():
        inside = views == view
        out[inside] = calibration.apply(z[inside])
    return out


def probabilities_by_view(logits: np.ndarray, views: np.ndarray | list[str], overall: Calibration,
                          by_view: dict[str, Calibration]) -> np.ndarray:
    """Each image's probability through its view's calibration, the overall one where its view has none."""
    return sigmoid(apply_by_view(logits, views, overall, by_view))


def cross_fitted_probabilities(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, intercept: bool = True,
                               folds: int = 5, seed: int = 0, views: np.ndarray | None = None,
                               min_view_images: int = 10) -> np.ndarray:
    """Each image's calibrated probability from a calibration fitted without its patient's fold: an honest
    estimate of the calibration error on new images, from the calibration split alone. With `views`, the folds
    are stratified by view and label and each fold fits a calibration per view as calibrate --per-view does."""
    from sklearn.model_selection import StratifiedGroupKFold

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    v = np.full(z.size, "") if views is None else np.asarray(views)
    strata = y if views is None else np.char.add(v.astype(str), y.astype(str))
    out = np.empty(z.size)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_index, held_index in splitter.split(z, strata, groups):
        overall = fit_calibration(z[fit_index], y[fit_index], intercept)
        by_view = {} if views is None else fit_view_calibrations(z[fit_index], y[fit_index], v[fit_index],
                                                                 min_view_images, intercept)
        out[held_index] = probabilities_by_view(z[held_index], v[held_index], overall, by_view)
    return out

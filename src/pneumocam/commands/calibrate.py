"""Calibration stage: a checkpoint + a calibration split -> a calibrated copy of the checkpoint.

Fits on the calibration split of DATA (never the test split): the temperature and intercept, the prevalence
correction (with a target prevalence) and the operating threshold by a stated rule. The out-of-range detector
describes what the model was trained on, so it is fitted on the training split of the data the model was
trained on (`ood_data`, default DATA) and its threshold set on that data's calibration split. Writes

  OUT/calibrated.ckpt   the checkpoint with all of it stored in its metadata: evaluate, predict, cam and serve
                        use it by default
  OUT/calibration.pt    the same entries alone (what a bundled model ships beside its weights)
  OUT/calibration.json  parameters, ECE and Brier before and after (in-sample and cross-fitted), the threshold
                        and its rule (and, with --per-view, each view's threshold with its sensitivity and
                        specificity there, and its calibration), the out-of-range threshold and its held-out
                        false-flag rate
  OUT/reliability.png + reliability.csv   reliability diagram before and after
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pneumocam.config import CalibrateConfig
from pneumocam.data import (
    dataset_files,
    dataset_labels,
    load_file,
    manifest_patients,
    manifest_rows,
    read_fingerprint,
    split_dataset,
)
from pneumocam.deploy import Predictor, batches
from pneumocam.errors import PneumocamError
from pneumocam.evaluation import calibration_scores as scores
from pneumocam.evaluation import choose_threshold, reliability_bins
from pneumocam.files import atomic_open, atomic_path, write_csv, write_json
from pneumocam.model import (
    Calibration,
    OutOfRange,
    checkpoint_label,
    cross_fitted_probabilities,
    fit_calibration,
    fit_out_of_range,
    fit_view_calibrations,
    load_checkpoint,
    probabilities_by_view,
    sigmoid,
)

log = logging.getLogger(__name__)


def split_features(predictor: Predictor, data_dir: Path, split: str, batch_size: int, limit: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Raw logits, pooled features, labels and patients of a split (a seeded sample of `limit` images)."""
    dataset = split_dataset(data_dir, split)
    paths = [p for p, _ in dataset.samples]
    labels = dataset_labels(dataset)
    files = dataset_files(dataset, data_dir)
    keep = np.arange(len(paths))
    if limit is not None and len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
    logits, features = [], []
    for chunk in tqdm(list(batches([paths[i] for i in keep], batch_size)), desc=f"features {split}", unit="batch"):
        z, f = predictor.features([load_file(p) for p in chunk])
        logits.append(z)
        features.append(f)
    return (np.concatenate(logits), np.concatenate(features), labels[keep],
            manifest_patients(data_dir, [files[i] for i in keep]))


def held_out_false_flag_rate(distances: np.ndarray, patients: list[str], quantile: float, seed: int) -> float:
    """The out-of-range threshold chosen on one half of the calibration split's patients (the `quantile` of their
    distances), its false-flag rate measured on the other half (and the other way round, averaged): the rate on
    new in-distribution images. The training Gaussian is the same for both halves, so only distances are needed."""
    unique = sorted(set(patients))
    half = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2].tolist())
    in_a = np.array([p in half for p in patients])
    rates = [float(np.mean(distances[~fit] > np.quantile(distances[fit], quantile))) for fit in (in_a, ~in_a)]
    return float(np.mean(rates))


def _check_split(data_dir: Path, split: str) -> None:
    if split == "test":
        raise PneumocamError("calibrate fits on a calibration split; the test split must stay unseen (use --split "
                             "val)")
    if not (data_dir / "Processed" / split).is_dir():
        raise PneumocamError(f"{data_dir}: no prepared '{split}' split to calibrate on")
    if split == "train":
        log.warning("calibrating on the training split: the model has fitted these images, so its logits there are "
                    "more confident than on new images and the calibration will be too mild; prefer --split val")


def _fit_detector(predictor: Predictor, ood_dir: Path, calibration_features: tuple | None,
                  config: CalibrateConfig) -> tuple[OutOfRange, np.ndarray, list[str]]:
    """The out-of-range detector: fitted on a sample of OOD_DIR's train split, thresholded on its calibration
    split (`calibration_features` (features, patients) when those are the images already read)."""
    _, train_features, _, _ = split_features(predictor, ood_dir, "train", config.batch_size,
                                             config.ood_train_images, config.seed)
    if calibration_features is None:
        _, features, _, patients = split_features(predictor, ood_dir, config.split, config.batch_size)
    else:
        features, patients = calibration_features
    return fit_out_of_range(train_features, features, config.ood_quantile), features, patients


def calibrate(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
              config: CalibrateConfig = CalibrateConfig()) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    _check_split(data_dir, config.split)
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device)
    predictor.check_prepared(data_dir)
    if predictor.metadata.get("calibration"):
        log.warning("%s is already calibrated: fitting again from its raw logits", checkpoint)
    logits, features, labels, patients = split_features(predictor, data_dir, config.split, config.batch_size)
    if not 0 < labels.sum() < labels.size:
        raise PneumocamError(f"{data_dir}: the '{config.split}' split needs both classes to calibrate on")
    views = np.asarray(split_views(data_dir, config.split)) if config.per_view else None
    fitted, by_view_calibration = _fit(logits, labels, views, config)
    honest = _cross_fitted(logits, labels, patients, views if by_view_calibration else None, config)
    at_split = Calibration(fitted.temperature, fitted.intercept)  # the calibration split's own prevalence
    before = sigmoid(logits)
    after = probabilities_by_view(logits, views if views is not None else [""] * labels.size, at_split,
                                  by_view_calibration)
    threshold, rule_text = choose_threshold(fitted.probabilities(logits), labels, config.rule,
                                            config.target_sensitivity, config.target_specificity)
    rule = f"{rule_text}, chosen on the '{config.split}' split of {data_dir.name} ({labels.size} images)"
    by_view = per_view_thresholds(probabilities_by_view(logits, views, fitted, by_view_calibration), labels,
                                  views.tolist(), config) if views is not None else {}
    ood_dir = Path(config.ood_data) if config.ood_data else data_dir
    already_read = (features, patients) if ood_dir == data_dir else None
    detector, ood_features, ood_patients = _fit_detector(predictor, ood_dir, already_read, config)
    calibrated_on = {"data_dir": str(data_dir.resolve()), "split": config.split, "n": int(labels.size),
                     "n_positive": int(labels.sum()), "data_fingerprint": read_fingerprint(data_dir),
                     "ood_data_dir": str(ood_dir.resolve()), "ood_data_fingerprint": read_fingerprint(ood_dir),
                     "config": asdict(config)}
    entries = {"calibration": fitted.to_metadata(), "threshold": threshold, "threshold_rule": rule,
               "ood": detector.to_metadata(), "calibrated_on": calibrated_on}
    if by_view_calibration:
        entries["calibration_by_view"] = {view: c.to_metadata() for view, c in by_view_calibration.items()}
    if by_view:
        entries["thresholds_by_view"] = {view: row["threshold"] for view, row in by_view.items()}
        entries["threshold_rule"] = (f"{rule}; per view ({', '.join(by_view)}) by the same rule on that view's images "
                                     "of the split, the overall threshold for other or unknown views")
    report = {
        "checkpoint": checkpoint_label(checkpoint),
        **{k: v for k, v in entries.items() if k not in ("ood", "calibration_by_view")},
        "before": scores(before, labels), "after_in_sample": scores(after, labels), **honest,
        "thresholds_by_view": by_view,
        "calibration_by_view": {view: {**c.to_metadata(), "n": int((views == view).sum()),
                                       "n_positive": int(labels[views == view].sum())}
                                for view, c in by_view_calibration.items()},
        "ood": summarize_detector(detector, held_out_false_flag_rate(
            detector.distances(ood_features), ood_patients, config.ood_quantile, config.seed)),
    }
    if config.prevalence is not None:
        report["note"] = ("ECE and Brier are measured at the calibration split's own prevalence, before the "
                          f"correction to {config.prevalence:g}, which only applies where that prevalence holds.")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_calibrated(checkpoint, out_dir, entries)
    write_reliability(out_dir, before, after, labels)
    write_json(out_dir / "calibration.json", report)
    log.info("calibrated: temperature %.3f, intercept %+.3f, threshold %.4f; ECE %.4f -> %.4f", fitted.temperature,
             fitted.intercept, threshold, report["before"]["ece"], report["after_in_sample"]["ece"])
    return report


def _fit(logits: np.ndarray, labels: np.ndarray, views: np.ndarray | None,
         config: CalibrateConfig) -> tuple[Calibration, dict[str, Calibration]]:
    """The overall calibration (with the prevalence correction) and, with --per-view, one per view."""
    try:
        fitted = fit_calibration(logits, labels, config.intercept, config.prevalence)
        return fitted, _view_calibrations(logits, labels, views, config)
    except ValueError as exc:
        raise PneumocamError(str(exc)) from exc


def _cross_fitted(logits: np.ndarray, labels: np.ndarray, patients: list[str], views: np.ndarray | None,
                  config: CalibrateConfig) -> dict:
    """after_cross_fitted: ECE and Brier of each image calibrated by a fit without its patient's fold (per view
    where `views` are given, as predict applies it; then also with one calibration for all, to compare)."""
    folds = min(config.folds, int(labels.sum()), int(labels.size - labels.sum()), len(set(patients)))
    if folds < 2:
        return {"after_cross_fitted": {"ece": None, "brier": None, "folds": folds,
                                       "what": "not computed: too few images of one class for two folds"}}

    def crossed(by_view: np.ndarray | None) -> np.ndarray:
        return cross_fitted_probabilities(logits, labels, np.asarray(patients), config.intercept, folds,
                                          config.seed, by_view, config.min_view_images)

    what = "each image calibrated by a fit without its patient's fold"
    out = {"after_cross_fitted": {**scores(crossed(views), labels), "folds": folds,
                                  "what": what + (", a calibration per view" if views is not None else "")}}
    if views is not None:
        out["after_cross_fitted_one_calibration"] = {**scores(crossed(None), labels), "folds": folds,
                                                     "what": what + ", one calibration for every view"}
    return out


def _view_calibrations(logits: np.ndarray, labels: np.ndarray, views: np.ndarray | None,
                       config: CalibrateConfig) -> dict[str, Calibration]:
    """With --per-view (and --per-view-calibration), a calibration for every view that also gets its own threshold."""
    if views is None or not config.per_view_calibration:
        return {}
    if config.prevalence is not None:
        raise PneumocamError("--prevalence corrects one calibration to one target prevalence, and each view has its "
                             "own: give --no-per-view-calibration with it (the thresholds stay per view)")
    return fit_view_calibrations(logits, labels, views, config.min_view_images, config.intercept)


def split_views(data_dir: Path, split: str) -> list[str]:
    """The view position (manifest.csv) of each image of a split, in the split's order; "" where unknown."""
    dataset = split_dataset(data_dir, split)
    rows = manifest_rows(data_dir)
    return [rows.get(f, {}).get("view", "") for f in dataset_files(dataset, data_dir)]


def per_view_thresholds(probabilities: np.ndarray, labels: np.ndarray, views: list[str],
                        config: CalibrateConfig) -> dict[str, dict]:
    """{view: threshold by config.rule on that view's calibrated probabilities, with its in-sample sensitivity
    and specificity}, for the views with at least config.min_view_images of each class. Portable AP films and
    upright PA films differ in prevalence and image quality, so one threshold serves neither well."""
    views_array = np.asarray(views)
    out = {}
    for view in sorted(set(views) - {""}):
        inside = views_array == view
        p, y = probabilities[inside], labels[inside]
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        if min(n_pos, n_neg) < config.min_view_images:
            log.warning("--per-view: view %s has %d pneumonia and %d other images (fewer than %d of one class): it "
                        "keeps the overall threshold", view, n_pos, n_neg, config.min_view_images)
            continue
        threshold, _ = choose_threshold(p, y, config.rule, config.target_sensitivity, config.target_specificity)
        called = p >= threshold
        out[view] = {"threshold": threshold, "n": int(y.size), "n_positive": n_pos,
                     "sensitivity_in_sample": float(called[y == 1].mean()),
                     "specificity_in_sample": float((~called[y == 0]).mean())}
    if not out:
        log.warning("--per-view: no view of the '%s' split has enough images of both classes; only the overall "
                    "threshold is stored", config.split)
    return out


def summarize_detector(detector: OutOfRange, held_out_rate: float) -> dict:
    return {"method": "Mahalanobis distance of pooled features (Ledoit-Wolf covariance of training features)",
            "threshold": detector.threshold, "quantile": detector.quantile, "n_train": detector.n_train,
            "n_calibration": detector.n_calibration, "held_out_false_flag_rate": held_out_rate}


def write_calibrated(checkpoint: str | Path, out_dir: Path, entries: dict) -> None:
    """OUT/calibrated.ckpt (a full copy with the entries in its metadata) and OUT/calibration.pt (them alone)."""
    full = load_checkpoint(checkpoint)
    # per-view thresholds and calibrations of an earlier calibration must not outlive it
    earlier = {k: v for k, v in full["pneumocam"].items() if k not in ("thresholds_by_view", "calibration_by_view")}
    full["pneumocam"] = {**earlier, **entries}
    with atomic_path(out_dir / "calibrated.ckpt") as tmp:
        torch.save(full, tmp)
    with atomic_path(out_dir / "calibration.pt") as tmp:
        torch.save(entries, tmp)


def write_reliability(out_dir: Path, before: np.ndarray, after: np.ndarray, labels: np.ndarray,
                      n_bins: int = 10) -> None:
    import matplotlib.pyplot as plt

    from pneumocam.evaluation import calibration_figure

    figure = calibration_figure({"calibrated": after, "before calibrate": before}, labels, n_bins)
    with atomic_open(out_dir / "reliability.png", "wb") as f:
        figure.savefig(f, format="png", dpi=90)
    plt.close(figure)
    rows = []
    for name, probs in (("before", before), ("after", after)):
        for row in reliability_bins(probs, labels, n_bins):  # the bins of the ECE and of the diagram
            rows.append({"probabilities": name, **{k: "" if v is None else v for k, v in row.items()}})
    write_csv(out_dir / "reliability.csv", list(rows[0]), rows)

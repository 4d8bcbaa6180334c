"""Evaluation stage: a checkpoint on a prepared split -> metrics.json, predictions.csv, plots, report.html.

Probabilities are sigmoid(logit), through the checkpoint's calibration when `pneumocam calibrate` fitted
one (the overall one; per_view_operating_point applies each view's threshold, and its calibration where calibrate
fitted one per view); the decision is probability >= threshold (by default the checkpoint's: 0.5, or the one
calibrate chose).
Where the manifest knows sex, age and view, metrics.json also holds the subgroup table and the shortcut checks.
Data-driven thresholds (Youden, target sensitivity) are chosen on `threshold_from` (default: the
evaluated split itself, which the report flags as optimistic). metrics.json also records the
checkpoint's config, data fingerprints and versions, so a number can be traced to its model and data.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumocam.config import EvalConfig
from pneumocam.data import (
    attribute_values,
    evaluation_split,
    load_file,
    manifest_rows,
    read_fingerprint,
)
from pneumocam.deploy import Predictor
from pneumocam.evaluation import (
    Bootstrap,
    SplitPredictions,
    bootstrap_ci,
    calibration_scores,
    calls_by_view,
    classification_metrics,
    expected_calibration_error,
    fast_auroc,
    header_baseline,
    known_attributes,
    operating_points,
    paired_auroc_difference,
    predict_split,
    subgroup_rows,
    subgroup_table,
    threshold_for_sensitivity,
    within_view_auroc,
    youden_threshold,
)
from pneumocam.files import atomic_open, read_csv, write_csv, write_json
from pneumocam.model import checkpoint_label
from pneumocam.provenance import package_versions

log = logging.getLogger(__name__)


def compute_metrics(preds: SplitPredictions, choose: SplitPredictions, config: EvalConfig) -> dict:
    """Point metrics, ECE, bootstrap CIs and operating points (thresholds chosen on `choose`)."""
    metrics = classification_metrics(preds.probabilities, preds.labels, config.threshold)
    metrics["ece"] = expected_calibration_error(preds.probabilities, preds.labels)
    # patients with several images (Kermany) are resampled whole: their images are not independent
    ci = bootstrap_ci(preds.probabilities, preds.labels, config.threshold, Bootstrap(config.bootstrap, config.seed),
                      groups=np.asarray(preds.patients)) if config.bootstrap else {"ci_method": None}
    metrics["ci_method"] = ci.pop("ci_method")
    metrics["ci95"] = ci
    target = config.target_sensitivity
    thresholds = {
        f"threshold {config.threshold:g}": config.threshold,
        "Youden-optimal": youden_threshold(choose.probabilities, choose.labels),
        f"sensitivity >= {target:g}": threshold_for_sensitivity(choose.probabilities, choose.labels, target),
    }
    metrics["operating_points"] = operating_points(preds.probabilities, preds.labels, thresholds)
    chosen_on = config.threshold_from or config.split
    metrics["thresholds_chosen_on"] = chosen_on
    if chosen_on == config.split:
        metrics["warnings"].append(
            f"The Youden and target-sensitivity thresholds were chosen on the '{chosen_on}' split and are reported "
            "on the same images, so their numbers are optimistic; choose them on other data with --threshold-from.")
    return metrics


def calibration_summary(preds: SplitPredictions, calibration: dict | None) -> dict:
    """ECE and Brier of the raw and (when the checkpoint is calibrated) the calibrated probabilities."""
    summary = {"calibrated": bool(calibration), "raw": calibration_scores(preds.raw_probabilities, preds.labels)}
    if calibration:
        summary.update({"parameters": calibration,
                        "calibrated_scores": calibration_scores(preds.probabilities, preds.labels)})
    return summary


def audit(preds: SplitPredictions, data_dir: Path, config: EvalConfig) -> dict:
    """The subgroup table and the shortcut checks, from the manifest's sex, age and view (empty when it has
    none of them, or with --by none)."""
    manifest = manifest_rows(data_dir)
    rows = [manifest.get(f, {}) for f in preds.files]
    values = attribute_values(rows)
    by = known_attributes(values) if config.by is None else list(config.by)
    out: dict = {}
    boot = Bootstrap(config.bootstrap, config.seed)  # 0: point values only, no CIs
    groups = np.asarray(preds.patients)
    if by:
        out["subgroups"] = subgroup_table(preds.probabilities, preds.labels, preds.patients, values, by,
                                          config.threshold, config.min_subgroup_size, boot)
    train_rows = [r for r in manifest.values() if r.get("split") == "train"]
    if any(r.get(f) for r in rows for f in ("view", "sex", "age")):
        eval_rows = [{**r, "label": int(y)} for r, y in zip(rows, preds.labels, strict=True)]
        baseline = header_baseline(train_rows, eval_rows, preds.probabilities, boot, groups)
        baseline.pop("probabilities", None)
        out["shortcut"] = {
            "model_auroc": fast_auroc(preds.probabilities, preds.labels),
            "header_only": baseline,
            "within_view": within_view_auroc(preds.probabilities, preds.labels, values["view"], boot, groups),
        }
    return out


def per_view_operating_point(preds: SplitPredictions, data_dir: Path, predictor: Predictor) -> dict:
    """The calls as predict makes them with the checkpoint's per-view thresholds (views from the manifest), on
    each film's probability through its view's calibration where calibrate fitted one per view."""
    manifest = manifest_rows(data_dir)
    rows = [manifest.get(f, {}) for f in preds.files]
    views = [r.get("view", "") for r in rows]
    thresholds = np.array([predictor.operating_point(view)[0] for view in views])
    probabilities = predictor.probabilities(preds.logits, views)
    out = {"thresholds_by_view": predictor.thresholds_by_view, "overall_threshold": predictor.threshold,
           **calls_by_view(probabilities, preds.labels, thresholds, views, [r.get("finding", "") for r in rows])}
    if predictor.calibrations_by_view:
        out["calibration_by_view"] = {
            "views": sorted(predictor.calibrations_by_view),
            "what": "each film through its view's calibration (the overall one for other views), as predict "
                    "reports it; the metrics above use the overall calibration, as for a film of unknown view",
            **calibration_scores(probabilities, preds.labels)}
    return out


def _warnings(meta: dict, config: EvalConfig, data_dir: Path) -> list[str]:
    """What a reader must know before trusting these numbers."""
    warnings = []
    fitted_on = meta.get("calibrated_on") or {}
    if fitted_on.get("split") == config.split and fitted_on.get("data_fingerprint") == read_fingerprint(data_dir):
        warnings.append(
            f"The checkpoint's calibration and threshold were fitted on these very images ({config.split} split), so "
            "the calibrated ECE and Brier and the metrics at its threshold are in-sample; pneumocam calibrate's "
            "calibration.json gives a cross-fitted estimate.")
    if config.split == "val":
        warnings.append(
            "These numbers come from the validation split, which chose the checkpoint (best.ckpt) during training, "
            "so they are optimistic; prepare with --test-fraction (or keep a source's own test split) for a test set.")
    pos_weight = meta.get("pos_weight", 1.0)
    if pos_weight != 1:
        warnings.append(
            f"The model was trained with pos_weight {pos_weight:.3g}, which shifts every logit by about "
            f"log({pos_weight:.3g}) = {np.log(pos_weight):+.2f}: its probabilities are not the frequencies they claim "
            "(see the calibration plot), and threshold 0.5 is not the frequency-neutral choice.")
    return warnings


def _write_tables(out_dir: Path, preds: SplitPredictions, metrics: dict, threshold: float) -> None:
    """predictions.csv at full precision (anything recomputed from it matches metrics.json), subgroups.csv."""
    rows = [{"file": f, "patient": pid, "label": int(y), "probability": repr(float(p)), "logit": repr(float(z)),
             "predicted": int(p >= threshold)}
            for f, pid, y, p, z in zip(preds.files, preds.patients, preds.labels, preds.probabilities,
                                       preds.logits, strict=True)]
    write_csv(out_dir / "predictions.csv", ["file", "patient", "label", "probability", "logit", "predicted"], rows)
    if metrics.get("subgroups"):
        table = subgroup_rows(metrics["subgroups"])
        write_csv(out_dir / "subgroups.csv", list(table[0]), table)


def evaluate(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
             config: EvalConfig = EvalConfig()) -> dict:
    """Write OUT/metrics.json, OUT/predictions.csv and (with config.report) plots and report.html."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    config = replace(config, split=evaluation_split(data_dir, config.split))
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device)
    predictor.check_prepared(data_dir)
    if config.threshold is None:
        config = replace(config, threshold=predictor.threshold)
    start = time.perf_counter()
    preds = predict_split(predictor, data_dir, config.split, config.batch_size)
    same = config.threshold_from in (None, config.split)
    choose = preds if same else predict_split(predictor, data_dir, config.threshold_from, config.batch_size)
    timing = {"inference": time.perf_counter() - start}
    start = time.perf_counter()
    metrics = compute_metrics(preds, choose, config)
    meta = predictor.metadata
    metrics["threshold_rule"] = meta.get("threshold_rule") if config.threshold == predictor.threshold else "--threshold"
    metrics["calibration"] = calibration_summary(preds, meta.get("calibration"))
    metrics.update(audit(preds, data_dir, config))
    if predictor.thresholds_by_view and config.threshold == predictor.threshold:
        metrics["per_view_operating_point"] = per_view_operating_point(preds, data_dir, predictor)
    timing["metrics_and_bootstrap"] = time.perf_counter() - start
    metrics["split_chose_checkpoint"] = config.split == "val"
    metrics["warnings"] += _warnings(meta, config, data_dir)
    pos_weight = meta.get("pos_weight", 1.0)
    metrics.update({
        "split": config.split, "pos_weight": pos_weight, "bootstrap_resamples": config.bootstrap,
        "bootstrap_seed": config.seed,
        "checkpoint": checkpoint_label(checkpoint), "data_dir": str(data_dir.resolve()),
        "data_fingerprint": read_fingerprint(data_dir), "train_data_fingerprint": meta.get("data_fingerprint"),
        "model_config": meta.get("config"), "normalization": meta.get("normalization"),
        "git_commit": meta.get("git_commit"), "versions": package_versions(),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tables(out_dir, preds, metrics, config.threshold)
    assessment = assess_trust(predictor, data_dir, config) if config.maps else None
    if assessment is not None:
        metrics["maps"] = assessment.result
    if config.report:
        start = time.perf_counter()
        write_report(out_dir, metrics, preds, predictor, data_dir, config, assessment)
        timing["plots_and_report"] = time.perf_counter() - start
    metrics["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    write_json(out_dir / "metrics.json", metrics)
    log.info("evaluated %d images: accuracy %.4f, AUROC %s (%s)", metrics["n"], metrics["accuracy"],
             metrics["auroc"], metrics["timing_s"])
    return metrics


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def gallery_indices(preds: SplitPredictions, threshold: float, size: int) -> dict[str, list[int]]:
    """The most confident cases of each outcome: highest probability for predicted positives,
    lowest for predicted negatives."""
    predicted = preds.probabilities >= threshold
    order = np.argsort(-preds.probabilities, kind="stable")
    pick = {
        "true positives": [i for i in order if predicted[i] and preds.labels[i] == 1],
        "false positives": [i for i in order if predicted[i] and preds.labels[i] == 0],
        "false negatives": [i for i in order[::-1] if not predicted[i] and preds.labels[i] == 1],
        "true negatives": [i for i in order[::-1] if not predicted[i] and preds.labels[i] == 0],
    }
    return {name: [int(i) for i in indices[:size]] for name, indices in pick.items()}


def reliability_curves(preds: SplitPredictions, metrics: dict) -> dict[str, np.ndarray]:
    """The calibrated probabilities beside the raw ones when the checkpoint is calibrated."""
    if metrics["calibration"]["calibrated"]:
        return {"calibrated": preds.probabilities, "raw (before calibrate)": preds.raw_probabilities}
    return {"model": preds.probabilities}


def assess_trust(predictor: Predictor, data_dir: Path, config: EvalConfig):
    """The maps' localisation, faithfulness (deletion and insertion) and randomisation check on the evaluated
    split's boxed images; None without boxes there, or on the training boxes a box-guided model learned from."""
    from pneumocam.config import LocalizeConfig
    from pneumocam.data import load_boxes
    from pneumocam.evaluation import assess_maps

    boxed = [f for f in load_boxes(data_dir) if config.split == "all" or f.startswith(f"Processed/{config.split}/")]
    trained_on_boxes = predictor.metadata.get("config", {}).get("box_loss_weight", 0.0) > 0
    if not boxed or (trained_on_boxes and config.split in ("train", "all")):
        return None
    return assess_maps(predictor, data_dir, config.split, LocalizeConfig(
        split=config.split, faithfulness=True, road=False, randomize_check=True, batch_size=config.batch_size,
        seed=config.seed, device=config.device, max_images=config.maps_images))


def worst_misses(assessment, method: str = "cam", size: int = 10) -> list[int]:
    """The images whose map peaks farthest from every box (ties: the least energy inside the boxes)."""
    scores = assessment.per_image[method]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i]["peak_distance"], scores[i]["energy"]))
    return [i for i in order if not scores[i]["pointing"]][:size]


def _write_png(out_dir: Path, name: str, figure) -> bytes:
    """Rendered once: the same bytes go to the file and into the page."""
    png = _figure_png(figure)
    with atomic_open(out_dir / name, "wb") as f:
        f.write(png)
    return png


def _write_plots(out_dir: Path, metrics: dict, preds: SplitPredictions, config: EvalConfig, assessment) -> dict:
    from pneumocam.evaluation import (
        calibration_figure,
        confusion_figure,
        faithfulness_figure,
        forest_figure,
        pr_figure,
        roc_figure,
    )

    points = [p for p in metrics["operating_points"] if p.get("available")]
    figures = {
        "ROC curve": ("roc.png", roc_figure(preds.probabilities, preds.labels, metrics["auroc"], points)),
        "Precision-recall curve": ("pr.png", pr_figure(preds.probabilities, preds.labels, metrics["auprc"])),
        "Confusion matrix": ("confusion.png", confusion_figure(metrics["confusion"], config.threshold)),
        "Calibration": ("calibration.png", calibration_figure(reliability_curves(preds, metrics), preds.labels)),
    }
    if metrics.get("subgroups"):
        figures["Sensitivity by subgroup"] = ("subgroups_sensitivity.png", forest_figure(metrics["subgroups"]))
    if assessment is not None:
        figures["Deletion and insertion"] = ("faithfulness.png",
                                             faithfulness_figure(assessment.result["faithfulness"]))
    return {title: _write_png(out_dir, name, figure) for title, (name, figure) in figures.items()}


def _write_gallery(out_dir: Path, preds: SplitPredictions, predictor: Predictor, data_dir: Path,
                   config: EvalConfig) -> dict:
    """The most and least confident calls of each kind, drawn with their CAM; indexed in gallery.csv."""
    from pneumocam.explain import ShownMap, side_by_side

    gallery, rows = {}, []
    for category, indices in gallery_indices(preds, config.threshold, config.gallery_size).items():
        images = [load_file(data_dir / preds.files[i]) for i in indices]
        predictions = predictor.predict_arrays(images, [preds.files[i] for i in indices]) if images else []
        gallery[category] = []
        for rank, (i, prediction) in enumerate(zip(indices, predictions, strict=True)):
            caption = f"{Path(preds.files[i]).stem[:16]}  p = {prediction.probability:.3f}  label {preds.labels[i]}"
            name = f"gallery/{category.replace(' ', '_')}_{rank}.png"
            png = _write_png(out_dir, name, side_by_side(prediction.image, ShownMap.of(prediction, config.cam_scale),
                                                         caption))
            gallery[category].append((caption, png))
            rows.append({"category": category, "rank": rank, "file": preds.files[i], "label": int(preds.labels[i]),
                         "probability": f"{prediction.probability:.6f}", "png": name})
    write_csv(out_dir / "gallery.csv", ["category", "rank", "file", "label", "probability", "png"], rows)
    return gallery


def _write_worst_misses(out_dir: Path, assessment, predictor: Predictor, scale: str) -> list[tuple[str, bytes]]:
    """The boxed images whose CAM peak lies farthest from a box, drawn with their boxes."""
    from pneumocam.explain import ShownMap, side_by_side

    misses, rows, indices = [], [], worst_misses(assessment)
    predictions = predictor.predict_arrays([assessment.images[i] for i in indices]) if indices else []
    for rank, (i, prediction) in enumerate(zip(indices, predictions, strict=True)):
        distance = assessment.per_image["cam"][i]["peak_distance"]
        caption = f"{Path(assessment.files[i]).stem[:16]}  p = {assessment.probabilities[i]:.3f}  " \
                  f"peak {distance:.0f} px from a box"
        name = f"worst_misses/{rank}.png"
        misses.append((caption, _write_png(out_dir, name, side_by_side(
            assessment.images[i], ShownMap.of(prediction, scale), caption, boxes=tuple(assessment.boxes[i])))))
        rows.append({"rank": rank, "file": assessment.files[i], "probability": float(assessment.probabilities[i]),
                     "peak_distance_px": round(distance, 2), "png": name})
    if rows:
        write_csv(out_dir / "worst_misses.csv", list(rows[0]), rows)
    return misses


def write_report(out_dir: Path, metrics: dict, preds: SplitPredictions, predictor: Predictor, data_dir: Path,
                 config: EvalConfig, assessment=None) -> None:
    """Plots as PNG files, a CAM gallery (PNG files + gallery.csv) and the self-contained report.html."""
    from pneumocam.evaluation import build_report

    plots = _write_plots(out_dir, metrics, preds, config, assessment)
    gallery = _write_gallery(out_dir, preds, predictor, data_dir, config)
    misses = _write_worst_misses(out_dir, assessment, predictor, config.cam_scale) if assessment is not None else []
    provenance = {"checkpoint": metrics["checkpoint"], "data": metrics["data_dir"], "split": config.split,
                  "data fingerprint": metrics["data_fingerprint"],
                  "training data fingerprint": metrics["train_data_fingerprint"], "git commit": metrics["git_commit"],
                  "bootstrap resamples": config.bootstrap, "model config": metrics["model_config"],
                  "normalization": metrics["normalization"], "versions": metrics["versions"]}
    with atomic_open(out_dir / "report.html", "w", encoding="utf-8") as f:
        f.write(build_report(metrics, plots, gallery, provenance, misses))


def compare(checkpoints: list[str | Path], data_dir: str | Path, out_dir: str | Path,
            config: EvalConfig = EvalConfig()) -> dict:
    """Evaluate several checkpoints on the same split (OUT/model_<k>/ each), then a comparison table and the
    paired-bootstrap AUROC difference of every model against the first -> OUT/comparison.json + .csv."""
    out_dir = Path(out_dir)
    config = replace(config, split=evaluation_split(data_dir, config.split))
    results, probabilities = [], []
    for k, checkpoint in enumerate(checkpoints):
        metrics = evaluate(checkpoint, data_dir, out_dir / f"model_{k}", config)
        rows = read_csv(out_dir / f"model_{k}" / "predictions.csv")
        probabilities.append(np.array([float(r["probability"]) for r in rows]))
        labels, patients = np.array([int(r["label"]) for r in rows]), np.asarray([r["patient"] for r in rows])
        results.append({"model": k, "checkpoint": str(checkpoint), **{m: metrics[m] for m in (
            "n", "accuracy", "precision", "recall", "f1", "specificity", "auroc", "auprc", "brier")}})
    boot = Bootstrap(config.bootstrap or 1000, config.seed)
    differences = [{"model": k, "versus": 0, **paired_auroc_difference(probabilities[k], probabilities[0], labels,
                                                                        boot, patients)}
                   for k in range(1, len(checkpoints))]
    comparison = {"models": results, "paired_auroc_differences": differences, "split": config.split}
    write_json(out_dir / "comparison.json", comparison)
    write_csv(out_dir / "comparison.csv", list(results[0]), results)
    return comparison

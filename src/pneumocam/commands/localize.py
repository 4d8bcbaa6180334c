"""Localisation stage: saliency maps of positive images vs their ground-truth boxes.

Writes OUT/localization.json (scores per method with patient-level bootstrap CIs; a random-map, a
centre-prior and a box-prior baseline, and each method's margin over the box prior with its CI; optionally
the model-randomisation check and the faithfulness curves), OUT/localization.csv (one row per image and
method: the probability, the map's peak, hit or miss and by how far, IoU/IoBB, energy), OUT/localization_grid.png
(overlays with boxes) and, with export="chexlocalize", OUT/chexlocalize/ (see chexlocalize.py).
Only images with at least one box in boxes.csv are scored (the boxes mark pneumonia).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pneumocam.config import LocalizeConfig
from pneumocam.data import evaluation_split
from pneumocam.deploy import METHODS, Predictor
from pneumocam.errors import PneumocamError
from pneumocam.evaluation import assess_maps
from pneumocam.explain import LIBRARY_METHODS, THRESHOLDS, ShownMap, overlay_grid
from pneumocam.files import save_figure, write_csv, write_json
from pneumocam.model import checkpoint_label

log = logging.getLogger(__name__)

def _check_training_boxes(split: str, box_loss_weight: float, allowed: bool) -> None:
    if split in ("train", "all") and box_loss_weight > 0 and not allowed:
        raise PneumocamError(
            f"this model was trained with box guidance (weight {box_loss_weight}) on the training split's boxes, "
            f"so scoring split {split!r} would measure it on boxes it was trained on; use --split val or test, "
            "or --allow-training-boxes to do it anyway")


CSV_FIELDS = ["file", "method", "probability", "peak_x", "peak_y", "pointing_hit", "peak_distance_px",
              "energy_in_boxes"] + [f"{kind}@{t}" for t in THRESHOLDS for kind in ("iou", "iobb")]


def _csv_rows(files: list[str], probabilities: np.ndarray, per_image: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for method, scores in per_image.items():
        for file, probability, sc in zip(files, probabilities, scores, strict=True):
            rows.append({"file": file, "method": method, "probability": round(float(probability), 6),
                         "peak_x": sc["peak_col"] + 0.5, "peak_y": sc["peak_row"] + 0.5,
                         "pointing_hit": int(sc["pointing"]), "peak_distance_px": round(sc["peak_distance"], 2),
                         "energy_in_boxes": round(sc["energy"], 6),
                         **{f"{kind}@{t}": round(sc[f"{kind}@{t}"], 6) for t in THRESHOLDS
                            for kind in ("iou", "iobb")}})
    return rows


def localize(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
             config: LocalizeConfig = LocalizeConfig()) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    unknown = set(config.methods) - set(METHODS) - set(LIBRARY_METHODS)
    if unknown:
        raise PneumocamError(f"unknown method(s) {sorted(unknown)}; choose from {METHODS + tuple(LIBRARY_METHODS)}")
    if config.export not in (None, "chexlocalize"):
        raise PneumocamError(f"unknown export format {config.export!r}; the one offered is chexlocalize")
    split = evaluation_split(data_dir, config.split)
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, alignment=config.alignment)
    predictor.check_prepared(data_dir)
    _check_training_boxes(split, predictor.metadata.get("config", {}).get("box_loss_weight", 0.0),
                          config.allow_training_boxes)
    assessment = assess_maps(predictor, data_dir, split, config)
    result = {**assessment.result, "checkpoint": checkpoint_label(checkpoint)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "localization.json", result)
    files, per_image = assessment.files, {m: assessment.per_image[m] for m in assessment.maps}
    write_csv(out_dir / "localization.csv", CSV_FIELDS, _csv_rows(files, assessment.probabilities, per_image))
    _write_grid(out_dir / "localization_grid.png", predictor, result["method"], assessment, config)
    if config.export == "chexlocalize":
        from pneumocam.explain import export_chexlocalize

        export_chexlocalize(out_dir / "chexlocalize", files, assessment.images, assessment.maps,
                            assessment.boxes, assessment.probabilities)
    log.info("pointing game %.3f (random %.3f), mean IoU %.3f over %d images", result["pointing_game"],
             result["baseline_random"]["pointing_game"], result["mean_iou"], len(files))
    return result


def _write_grid(path: Path, predictor: Predictor, method: str, assessment, config: LocalizeConfig) -> None:
    """The first images with their boxes and the method's maps, on the chosen scale (absolute for CAM)."""
    import matplotlib.pyplot as plt

    n = min(config.grid_images, len(assessment.images))
    predictions = predictor.predict_arrays(assessment.images[:n], method=method) if n else []
    items = [(assessment.images[i], ShownMap.of(predictions[i], config.cam_scale), Path(assessment.files[i]).stem[:12],
              assessment.boxes[i]) for i in range(n)]
    figure = overlay_grid(items, columns=4)
    save_figure(path, figure, dpi=90)
    plt.close(figure)

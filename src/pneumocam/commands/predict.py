"""Prediction stage: files, folders (recursive) and glob patterns -> probabilities (CSV or JSON).

Unreadable or missing inputs are reported per file and never stop the rest. With an output folder,
writes OUT/predictions.{csv,json}, OUT/failed.csv when something failed, and OUT/overlays/*.png with
--overlays; without one, the table goes to stdout. With a DICOM folder, each DICOM input also gets a
Secondary Capture and a structured report there (dicom_results), in its own Study.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumocam.config import PredictConfig
from pneumocam.data import is_dicom, read_views, require_images, resolve_inputs
from pneumocam.deploy import Predictor, batches
from pneumocam.errors import PneumocamError
from pneumocam.explain import peak
from pneumocam.files import atomic_open, unique_stems, write_csv, write_json
from pneumocam.model import checkpoint_label

log = logging.getLogger(__name__)
FIELDS = ["source", "probability", "logit", "predicted", "threshold", "threshold_basis", "view", "ood", "ood_distance",
          "ood_reason", "cam_peak_x", "cam_peak_y", "overlay", "dicom_sc", "dicom_sr"]


def run_predict(checkpoint: str | Path, inputs: list[str], out_dir: str | Path | None,
                config: PredictConfig = PredictConfig()) -> tuple[list[dict], list[dict], str]:
    """Returns (rows, failures, text): text is the formatted table when there is no output folder."""
    paths, failures = resolve_inputs(inputs)
    if not failures:
        require_images(paths, inputs)
    views = read_views(config.views) if config.views else None
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, threshold=config.threshold,
                                          backend=config.backend)
    stem_of = dict(zip(map(str, paths), unique_stems(paths), strict=True))  # overlay names, unique over all inputs
    dicom = _DicomWriter(predictor, checkpoint, config.dicom_out, config.cam_scale) if config.dicom_out else None
    rows = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=len(paths) < 2 * config.batch_size) as bar:
        for chunk in batches(paths, config.batch_size):
            predictions, chunk_failures = predictor.predict_files(chunk, cam=True, batch_size=config.batch_size,
                                                                  views=views)
            failures += chunk_failures
            for prediction in predictions:
                overlay = _write_overlay(prediction, stem_of[prediction.source], out_dir, config.cam_scale) \
                    if config.overlays and out_dir else ""
                peak_y, peak_x = peak(prediction.cam)
                rows.append({"source": prediction.source, "probability": round(prediction.probability, 6),
                             "logit": round(prediction.logit, 6), "predicted": prediction.predicted,
                             "threshold": prediction.threshold, "threshold_basis": prediction.threshold_basis,
                             "view": prediction.view, **prediction.ood_fields(),
                             "cam_peak_x": peak_x, "cam_peak_y": peak_y,
                             "overlay": overlay, "dicom_sc": "", "dicom_sr": ""})
                if dicom:
                    failure = dicom.write(prediction, stem_of[prediction.source], rows[-1])
                    failures += [failure] if failure else []
            bar.update(len(chunk))
    for failure in failures:
        log.warning("skipped %s: %s", failure["source"], failure["reason"])
    flagged = sum(1 for row in rows if row["ood"] == 1)
    if flagged:
        log.warning("%d of %d inputs do not look like frontal chest X-rays (column ood): their predictions are "
                    "unreliable", flagged, len(rows))
    if out_dir is None:
        return rows, failures, format_rows(rows, config.output_format)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.output_format == "json":
        write_json(out_dir / "predictions.json", rows)
    else:
        write_csv(out_dir / "predictions.csv", FIELDS, rows)
    if failures:
        write_csv(out_dir / "failed.csv", ["source", "reason"], failures)
    return rows, failures, ""


class _DicomWriter:
    """Writes the Secondary Capture and SR of each DICOM input; a non-DICOM input or a failed write is a
    failure row (its prediction stays in the table)."""

    def __init__(self, predictor: Predictor, checkpoint: str | Path, out_dir: str | Path, scale: str = "absolute"):
        from pneumocam.deploy import ModelIdentity

        self.model = ModelIdentity.from_predictor(predictor, checkpoint_label(checkpoint))
        self.out_dir = Path(out_dir)
        self.resize_mode, self.scale = predictor.contract.resize_mode, scale

    def write(self, prediction, stem: str, row: dict) -> dict | None:
        from pneumocam.deploy import write_results

        if not is_dicom(prediction.source):
            return {"source": prediction.source, "reason": "not a DICOM file: no DICOM results written for it"}
        try:
            sc, sr = write_results(prediction.source, prediction, self.model, self.out_dir, stem, self.resize_mode,
                                   self.scale)
        except (PneumocamError, ValueError, AttributeError, KeyError, TypeError) as exc:
            return {"source": prediction.source, "reason": f"DICOM results not written ({type(exc).__name__}: {exc})"}
        row["dicom_sc"], row["dicom_sr"] = str(sc), str(sr)
        return None


def _write_overlay(prediction, stem: str, out_dir: Path, scale: str = "absolute") -> str:
    """The overlay with its colour bar burned in below it."""
    from pneumocam.explain import ShownMap, colour_bar_strip, overlay_map, to_png

    name = f"overlays/{stem}_cam.png"
    shown = ShownMap.of(prediction, scale)
    overlay = overlay_map(prediction.image, shown)
    with atomic_open(Path(out_dir) / name, "wb") as f:
        f.write(to_png(np.concatenate([overlay, colour_bar_strip(overlay.shape[1], shown)])))
    return name


def format_rows(rows: list[dict], output_format: str) -> str:
    if output_format == "json":
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

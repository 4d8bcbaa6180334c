"""Prediction stage: files, folders (recursive) and glob patterns -> probabilities (CSV or JSON).

Unreadable or missing inputs are reported per file and never stop the rest. With an output folder,
writes OUT/predictions.{csv,json}, OUT/failed.csv when something failed, and OUT/overlays/*.png with
--overlays; without one, the table goes to stdout.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pneumocam.files import atomic_open, unique_stems, write_csv, write_json
from pneumocam.inference import Predictor, batches
from pneumocam.io import ImageReadError, expand_inputs
from pneumocam.localization import peak
from pneumocam.overlay import overlay_cam, to_png

log = logging.getLogger(__name__)
FIELDS = ["source", "probability", "logit", "predicted", "threshold", "ood", "ood_distance", "ood_reason",
          "cam_peak_x", "cam_peak_y", "overlay"]


@dataclass(frozen=True)
class PredictConfig:
    threshold: float | None = None  # None: the checkpoint's threshold
    batch_size: int = 32
    device: str = "cpu"
    overlays: bool = False
    output_format: str = "csv"  # csv | json


def resolve_inputs(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Expand folders and glob patterns; a missing path or a pattern matching nothing is a failure row."""
    paths, failures = [], []
    for item in inputs:
        if not Path(item).exists() and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                failures.append({"source": item, "reason": "no files match this pattern"})
            for match in matches:
                paths += expand_inputs([match])
            continue
        try:
            paths += expand_inputs([item])
        except ImageReadError as exc:
            failures.append({"source": str(item), "reason": exc.reason})
    return paths, failures


def run_predict(checkpoint: str | Path, inputs: list[str], out_dir: str | Path | None,
                config: PredictConfig = PredictConfig()) -> tuple[list[dict], list[dict], str]:
    """Returns (rows, failures, text): text is the formatted table when there is no output folder."""
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, threshold=config.threshold)
    paths, failures = resolve_inputs(inputs)
    stem_of = dict(zip(map(str, paths), unique_stems(paths), strict=True))  # overlay names, unique over all inputs
    rows = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=len(paths) < 2 * config.batch_size) as bar:
        for chunk in batches(paths, config.batch_size):
            predictions, chunk_failures = predictor.predict_files(chunk, cam=True, batch_size=config.batch_size)
            failures += chunk_failures
            for prediction in predictions:
                overlay = _write_overlay(prediction, stem_of[prediction.source], out_dir) \
                    if config.overlays and out_dir else ""
                peak_y, peak_x = peak(prediction.cam)
                rows.append({"source": prediction.source, "probability": round(prediction.probability, 6),
                             "logit": round(prediction.logit, 6), "predicted": prediction.predicted,
                             "threshold": prediction.threshold, **prediction.ood_fields(),
                             "cam_peak_x": peak_x, "cam_peak_y": peak_y,
                             "overlay": overlay})
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


def _write_overlay(prediction, stem: str, out_dir: Path) -> str:
    name = f"overlays/{stem}_cam.png"
    with atomic_open(Path(out_dir) / name, "wb") as f:
        f.write(to_png(overlay_cam(prediction.image, prediction.cam)))
    return name


def format_rows(rows: list[dict], output_format: str) -> str:
    if output_format == "json":
        return json.dumps(rows, indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

"""CAM output stage: images -> side-by-side overlays, raw and upsampled maps, and cams.csv.

For each input IMAGE it writes DIR/<name>_cam.png (original | jet overlay), DIR/<name>_cam7x7.npy
(the raw map in logit units, sign kept) and DIR/<name>_cam224.npy (normalised to [0, 1]), and one
row of DIR/cams.csv. Unreadable inputs are listed in DIR/failed.csv and do not stop the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumocam.files import save_figure, save_npy, unique_stems, write_csv
from pneumocam.inference import Prediction, Predictor
from pneumocam.io import expand_inputs
from pneumocam.overlay import side_by_side

log = logging.getLogger(__name__)

CAM_FIELDS = ["source", "probability", "logit", "label", "threshold", "method", "peak_x", "peak_y", "png", "cam7x7",
              "cam224"]


@dataclass(frozen=True)
class CamConfig:
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 32
    device: str = "cpu"
    method: str = "cam"


@dataclass(frozen=True)
class CamReport:
    out_dir: Path
    rows: list[dict]
    failures: list[dict]


def write_cam_outputs(predictions: list[Prediction], out_dir: Path, alpha: float, colormap: str,
                      boxes: list | None = None) -> list[dict]:
    """Write the overlay PNG and the maps for each prediction; returns the cams.csv rows.

    boxes: optional ground-truth boxes per prediction (224-px space), drawn dashed on the figure.
    """
    import matplotlib.pyplot as plt

    rows = []
    named = list(zip(predictions, unique_stems([p.source for p in predictions]), strict=True))
    for index, (prediction, name) in enumerate(tqdm(named, desc="cam", unit="img")):
        verdict = "pneumonia" if prediction.label else "no pneumonia"
        title = f"{Path(prediction.source).name}\np(pneumonia) = {prediction.probability:.3f} -> {verdict}"
        figure = side_by_side(prediction.image, prediction.cam, title, alpha, colormap,
                              boxes=boxes[index] if boxes else (), method=prediction.method)
        save_figure(out_dir / f"{name}_cam.png", figure, dpi=100)
        plt.close(figure)
        if prediction.cam_raw is not None:  # library methods have no raw low-resolution map
            save_npy(out_dir / f"{name}_cam7x7.npy", prediction.cam_raw.astype(np.float32))
        save_npy(out_dir / f"{name}_cam224.npy", prediction.cam.astype(np.float32))
        peak_y, peak_x = np.unravel_index(int(np.argmax(prediction.cam)), prediction.cam.shape)
        rows.append({"source": prediction.source, "probability": f"{prediction.probability:.6f}",
                     "logit": f"{prediction.logit:.6f}", "label": prediction.label,
                     "threshold": prediction.threshold, "method": prediction.method,
                     "peak_x": int(peak_x), "peak_y": int(peak_y), "png": f"{name}_cam.png",
                     "cam7x7": f"{name}_cam7x7.npy" if prediction.cam_raw is not None else "",
                     "cam224": f"{name}_cam224.npy"})
    return rows


def explain_files(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path,
                  config: CamConfig = CamConfig()) -> CamReport:
    out_dir = Path(out_dir)
    paths = expand_inputs(inputs)
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device)
    predictions, failures = predictor.predict_files(paths, True, config.batch_size, config.method)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = write_cam_outputs(predictions, out_dir, config.alpha, config.colormap)
    write_csv(out_dir / "cams.csv", CAM_FIELDS, rows)
    if failures:
        write_csv(out_dir / "failed.csv", ["source", "reason"], failures)
        for failure in failures:
            log.warning("skipped %s: %s", failure["source"], failure["reason"])
    return CamReport(out_dir, rows, failures)

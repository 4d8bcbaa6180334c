"""CAM output stage: images -> side-by-side overlays, raw and upsampled maps, and cams.csv.

For each input IMAGE it writes DIR/<name>_cam.png (original | jet overlay), DIR/<name>_cam7x7.npy
(the raw map in logit units, sign kept) and DIR/<name>_cam224.npy (normalised to [0, 1]), and one
row of DIR/cams.csv. Unreadable inputs are listed in DIR/failed.csv and do not stop the others.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumocam.config import CamConfig, workers_or_cores
from pneumocam.data import expand_inputs, read_views, require_images
from pneumocam.deploy import Prediction, Predictor
from pneumocam.explain import ShownMap, SideBySideJob, peak, save_side_by_side
from pneumocam.files import save_npy, unique_stems, write_csv

log = logging.getLogger(__name__)

CAM_FIELDS = ["source", "probability", "logit", "predicted", "threshold", "threshold_basis", "view", "ood",
              "ood_distance", "ood_reason", "method", "peak_x", "peak_y", "png", "scale", "cam7x7", "cam224",
              "evidence224"]


# drawing in parallel pays off once the workers' start-up (about half a second) is covered
MIN_IMAGES_PER_WORKER = 8


def _headless_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")  # workers only write files; never a window, whatever the desktop offers


def draw_side_by_sides(jobs: list[SideBySideJob], workers: int | None = None) -> None:
    """Save every job's PNG, in worker processes when there are enough of them.

    Workers start from a fork server (spawn where there is none): forking this process, which may hold
    torch's thread pools or a CUDA context, is not safe.
    """
    workers = min(workers_or_cores(workers), len(jobs) // MIN_IMAGES_PER_WORKER)
    bar = dict(total=len(jobs), desc="cam", unit="img")
    if workers <= 1:
        for job in tqdm(jobs, **bar):
            save_side_by_side(job)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_headless_matplotlib) as pool:
        for _ in tqdm(pool.map(save_side_by_side, jobs, chunksize=4), **bar):
            pass


@dataclass(frozen=True)
class CamReport:
    out_dir: Path
    rows: list[dict]
    failures: list[dict]


def write_cam_outputs(predictions: list[Prediction], out_dir: Path, alpha: float, colormap: str,
                      boxes: list | None = None, workers: int | None = None, scale: str = "absolute") -> list[dict]:
    """Write the overlay PNG and the maps for each prediction; returns the cams.csv rows.

    boxes: optional ground-truth boxes per prediction (224-px space), drawn dashed on the figure.
    workers: processes drawing the PNGs (None or 0: all cores); small batches are drawn in this process.
    """
    rows, jobs = [], []
    named = list(zip(predictions, unique_stems([p.source for p in predictions]), strict=True))
    for index, (prediction, name) in enumerate(named):
        verdict = "pneumonia" if prediction.predicted else "no pneumonia"
        title = f"{Path(prediction.source).name}\np(pneumonia) = {prediction.probability:.3f} -> {verdict}"
        shown = ShownMap.of(prediction, scale, colormap)
        jobs.append(SideBySideJob(out_dir / f"{name}_cam.png", prediction.image, shown, title, alpha,
                                  tuple(boxes[index]) if boxes else (), prediction.method))
        if prediction.cam_raw is not None:  # library methods have no raw low-resolution map
            save_npy(out_dir / f"{name}_cam7x7.npy", prediction.cam_raw.astype(np.float32))
        save_npy(out_dir / f"{name}_cam224.npy", prediction.cam.astype(np.float32))
        if prediction.evidence is not None:
            save_npy(out_dir / f"{name}_evidence224.npy", prediction.evidence.astype(np.float32))
        peak_y, peak_x = peak(prediction.cam)
        rows.append({"source": prediction.source, "probability": f"{prediction.probability:.6f}",
                     "logit": f"{prediction.logit:.6f}", "predicted": prediction.predicted,
                     "threshold": prediction.threshold, "threshold_basis": prediction.threshold_basis,
                     "view": prediction.view, **prediction.ood_fields(), "method": prediction.method,
                     "peak_x": peak_x, "peak_y": peak_y, "png": f"{name}_cam.png",
                     "cam7x7": f"{name}_cam7x7.npy" if prediction.cam_raw is not None else "",
                     "cam224": f"{name}_cam224.npy", "scale": shown.scale,
                     "evidence224": f"{name}_evidence224.npy" if prediction.evidence is not None else ""})
    draw_side_by_sides(jobs, workers)
    return rows


def explain_files(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path,
                  config: CamConfig = CamConfig()) -> CamReport:
    out_dir = Path(out_dir)
    paths = require_images(expand_inputs(inputs), inputs)
    views = read_views(config.views) if config.views else None
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, alignment=config.alignment)
    predictions, failures = predictor.predict_files(paths, True, config.batch_size, config.method, views)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = write_cam_outputs(predictions, out_dir, config.alpha, config.colormap, workers=config.workers,
                             scale=config.cam_scale)
    write_csv(out_dir / "cams.csv", CAM_FIELDS, rows)
    if failures:
        write_csv(out_dir / "failed.csv", ["source", "reason"], failures)
        for failure in failures:
            log.warning("skipped %s: %s", failure["source"], failure["reason"])
    return CamReport(out_dir, rows, failures)

"""Make a model's INT8 copy for the onnxruntime-int8 and openvino-int8 backends, calibrated on your images.

A seeded sample of `count` images sets the activation ranges; `check_count` further images from the same inputs
(never calibration ones) then compare the INT8 copy with float32: the largest probability difference, the calls
that change at the model's threshold, and the Spearman correlation of each image's 7x7 CAM. The copy is cached
per model (quantize.int8_path), with this description beside it and in its metadata: made once, used by every
later predict, serve or pacs with --backend onnxruntime-int8 or openvino-int8.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumocam.config import QuantizeConfig
from pneumocam.data import ImageReadError, collate_images, require_images, resolve_inputs
from pneumocam.deploy import Predictor, description_path, export_onnx, int8_path, quantize_onnx, read_description
from pneumocam.errors import PneumocamError
from pneumocam.files import write_json
from pneumocam.model import checkpoint_label

log = logging.getLogger(__name__)

MIN_CALIBRATION = 16  # fewer images than this set ranges by chance; a few hundred are what the defaults use


def compare(reference: Predictor, other: Predictor, images: Sequence[np.ndarray], batch_size: int = 16
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of `reference` (float32) and `other` (an INT8 backend) on `images`, and the Spearman rank
    correlation of each image's two 7x7 CAMs (NaN for a constant map)."""
    from scipy.stats import spearmanr

    p_ref, p_other, rho = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        mine, theirs = reference.forward(chunk), other.forward(chunk)
        p_ref += reference.probabilities(mine.logits).tolist()
        p_other += other.probabilities(theirs.logits).tolist()
        rho += [float(spearmanr(a.ravel(), b.ravel()).statistic) for a, b in zip(mine.raw, theirs.raw, strict=True)]
    return np.array(p_ref), np.array(p_other), np.array(rho)


def summarize_agreement(p_ref: np.ndarray, p_other: np.ndarray, rho: np.ndarray, threshold: float,
                        names: Sequence[str]) -> dict:
    """The largest probability difference, the calls that change at `threshold`, the CAMs' rank correlation,
    and the five images that moved most."""
    difference = np.abs(p_ref - p_other)
    changed = (p_ref >= threshold) != (p_other >= threshold)
    worst = np.argsort(-difference)[:5]
    return {"n": len(p_ref), "threshold": threshold, "max_abs_probability_difference": float(difference.max()),
            "calls_changed": int(changed.sum()), "calls_agreeing": float(1 - changed.mean()),
            "min_cam_spearman": float(np.nanmin(rho)), "median_cam_spearman": float(np.nanmedian(rho)),
            "worst": [{"image": names[i], "float32": float(p_ref[i]), "int8": float(p_other[i]),
                       "cam_spearman": float(rho[i])} for i in worst]}


def _load(predictor: Predictor, paths: Sequence[Path], what: str, skipped: list[dict]) -> tuple[list, list[str]]:
    from tqdm import tqdm

    images, names = [], []
    for path in tqdm(paths, desc=f"read {what} images", unit="img"):
        try:
            images.append(predictor.load(path))
            names.append(str(path))
        except ImageReadError as exc:
            skipped.append({"source": str(path), "reason": exc.reason})
    return images, names


def quantize_model(checkpoint: str | Path, inputs: Sequence[str | Path], config: QuantizeConfig = QuantizeConfig()
                   ) -> dict:
    """Make (or, when cached, describe) the INT8 copy of `checkpoint`; returns its description with its path."""
    predictor = Predictor.from_checkpoint(checkpoint)
    path = int8_path(predictor.net)
    if path.is_file() and not config.force:
        return {**read_description(path), "path": str(path), "cached": True}
    paths, failures = resolve_inputs(list(inputs))
    paths = require_images(paths, list(inputs))
    order = np.random.default_rng(config.seed).permutation(len(paths))
    chosen = [paths[i] for i in order]
    skipped = list(failures)
    images, names = _load(predictor, chosen[:config.count], "calibration", skipped)
    if len(images) < MIN_CALIBRATION:
        raise PneumocamError(f"{len(images)} readable calibration images in {', '.join(map(str, inputs))}: INT8 "
                             f"calibration needs at least {MIN_CALIBRATION} (a few hundred like the ones the model "
                             "will see are best)")
    check_images, check_names = _load(predictor, chosen[config.count:config.count + config.check_count], "check",
                                      skipped)
    description = {"model": checkpoint_label(checkpoint), "weights": path.stem,  # int8_path names it by them
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "calibration": {"count": len(images), "seed": config.seed, "files": names,
                                   "method": "static, QDQ, weights int8 per channel, activations uint8 by min/max; "
                                             "first convolution, pooling and classifier in float32"},
                   "skipped": skipped}
    batches = (collate_images(images[i:i + config.batch_size], predictor.normalization).numpy()
               for i in range(0, len(images), config.batch_size))
    with tempfile.TemporaryDirectory(prefix="pneumocam-quantize-") as folder:
        float_model = export_onnx(predictor.net, Path(folder) / "float32.onnx", size=predictor.contract.image_size)
        quantize_onnx(float_model, batches, path, description)
    if check_images:
        int8 = Predictor.from_checkpoint(checkpoint, backend="onnxruntime-int8")
        compared = compare(predictor, int8, check_images, config.batch_size)
        description["check"] = summarize_agreement(*compared, predictor.threshold, check_names)
    else:
        log.warning("no images left over for the check against float32 (give more than --count %d)", config.count)
    write_json(description_path(path), description)
    return {**description, "path": str(path), "cached": False}

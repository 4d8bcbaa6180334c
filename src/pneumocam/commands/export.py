"""Export a trained PneumoniaNet to ONNX or TorchScript, with a parity check against PyTorch.

The exported model keeps the contract of PneumoniaNet: input `image` (B, 1, S, S), normalised with the mean/std
stored beside it; outputs `logit` (B, 1) and `feature_map` (B, 512, S/32, S/32), so CAM works on the exported
model too (S = 224, a 7x7 map, unless the model was trained on data prepared with another --image-size).
OUT.json beside the model records the normalisation, threshold, data fingerprint and the measured parity. If
parity fails, the export is deleted and an error raised.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pneumocam.config import CAM_STRIDE, EXPORT_FORMATS, ExportConfig
from pneumocam.deploy import Predictor, export_onnx, onnxruntime_session
from pneumocam.errors import PneumocamError
from pneumocam.files import atomic_path, write_json
from pneumocam.model import checkpoint_label

log = logging.getLogger(__name__)


def _run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logit, features = onnxruntime_session(path).run(["logit", "feature_map"], {"image": x})
    return logit, features


def _run_torchscript(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        logit, features = module(torch.from_numpy(x))
    return logit.numpy(), features.numpy()


def export_model(checkpoint: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> dict:
    """Write the exported model to OUT and its description to OUT.json; returns the parity report."""
    if config.format not in EXPORT_FORMATS:
        raise PneumocamError(f"unknown export format {config.format!r}; choose from {EXPORT_FORMATS}")
    out = Path(out)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    net = predictor.net.eval()
    generator = torch.Generator().manual_seed(config.seed)
    size = predictor.contract.image_size
    cells = size // CAM_STRIDE
    example = torch.randn(2, 1, size, size, generator=generator)
    check = torch.randn(3, 1, size, size, generator=generator)  # another batch size: the batch axis is dynamic
    with atomic_path(out) as tmp:
        if config.format == "onnx":
            export_onnx(net, tmp, example)
            logit, features = _run_onnx(tmp, check.numpy())
        else:
            with torch.no_grad():
                torch.jit.trace(net, example).save(str(tmp))
            logit, features = _run_torchscript(tmp, check.numpy())
        with torch.no_grad():
            ref_logit, ref_features = net(check)
        report = {
            "format": config.format, "path": str(out.resolve()), "tolerance": config.tolerance,
            "max_abs_diff_logit": float(np.abs(logit - ref_logit.numpy()).max()),
            "max_abs_diff_feature_map": float(np.abs(features - ref_features.numpy()).max()),
        }
        report["parity_passed"] = max(report["max_abs_diff_logit"], report["max_abs_diff_feature_map"]) \
            <= config.tolerance
        if not report["parity_passed"]:
            raise PneumocamError(f"exported {config.format} model differs from PyTorch by more than "
                                 f"{config.tolerance}: {report}; nothing was written")
    meta = predictor.metadata
    write_json(out.with_name(out.name + ".json"), {
        **report, "inputs": {"image": f"(B, 1, {size}, {size}) float32, (x - mean) / std of a [0, 1] gray image"},
        "outputs": {"logit": "(B, 1) raw pneumonia logit; probability = sigmoid(logit / temperature + intercept + "
                             "prevalence_shift), with the calibration below (identity when uncalibrated)",
                    "feature_map": f"(B, 512, {cells}, {cells}); CAM = fc_weight . feature_map; cell (p, q) is "
                                   f"centred on input pixel ({CAM_STRIDE} p, {CAM_STRIDE} q), as pneumocam's "
                                   "receptive-field alignment draws it"},
        "normalization": meta.get("normalization"), "threshold": predictor.threshold,
        "threshold_rule": meta.get("threshold_rule"), "calibration": predictor.calibration.to_metadata(),
        # a film of a view named here: that view's threshold and calibration instead
        "thresholds_by_view": predictor.thresholds_by_view,
        "calibration_by_view": {view: c.to_metadata() for view, c in predictor.calibrations_by_view.items()},
        # how a file becomes the input above: read as gray [0, 1], then this size and resize mode
        "preprocessing": asdict(predictor.contract),
        "fc_weight": net.fc.weight.detach().reshape(-1).tolist(), "fc_bias": float(net.fc.bias.detach()),
        "data_fingerprint": meta.get("data_fingerprint"), "checkpoint": checkpoint_label(checkpoint),
    })
    log.info("exported %s to %s (max |diff| logit %.2e, feature map %.2e)", config.format, out,
             report["max_abs_diff_logit"], report["max_abs_diff_feature_map"])
    return report

"""INT8 copies of PneumoniaNet for the CPU backends onnxruntime-int8 and openvino-int8.

Static post-training quantisation with ONNX Runtime: QDQ format, weights int8 per output channel, activations
uint8 with min/max ranges from calibration images. Two parts stay in float32, on purpose:
- the first convolution, which reads the one-channel image: quantised, it alone moved the bundled model's
  probabilities by up to 0.41 on real RSNA films, against < 0.01 for all other layers together;
- the pooling and the classifier: the logit is then the exact mean of the CAM computed from the same
  (dequantised) feature map, plus the bias, as it is in float32.
The file is cached per network (a hash of its weights) with a description beside it (what it was calibrated
on, how close it came to float32), so it is made once by `pneumocam quantize`, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumocam.errors import PneumocamError, missing_extra
from pneumocam.files import atomic_path, write_json

if TYPE_CHECKING:
    import torch

CACHE_ENV = "PNEUMOCAM_CACHE"
FLOAT_OPS = ("GlobalAveragePool", "Flatten", "Gemm")  # pooling and classifier: the CAM explains the logit exactly
INT8_BACKENDS = {"onnxruntime-int8": "onnxruntime", "openvino-int8": "openvino"}


def cache_dir() -> Path:
    """$PNEUMOCAM_CACHE, else $XDG_CACHE_HOME/pneumocam, else ~/.cache/pneumocam."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pneumocam"


def weights_fingerprint(net: torch.nn.Module) -> str:
    """A hash of every weight of `net`: the INT8 copy belongs to these weights and no others."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def int8_path(net_or_fingerprint: torch.nn.Module | str) -> Path:
    """Where the INT8 copy of these weights is cached (by the network, or by its weights_fingerprint)."""
    fingerprint = net_or_fingerprint if isinstance(net_or_fingerprint, str) else weights_fingerprint(net_or_fingerprint)
    return cache_dir() / "int8" / f"{fingerprint}.onnx"


def description_path(model: Path) -> Path:
    return model.with_suffix(".json")


def read_description(model: Path) -> dict:
    """What the cached INT8 model was calibrated on and how close it came to float32 (`pneumocam quantize`)."""
    path = description_path(model)
    return json.loads(path.read_text()) if path.is_file() else {}


def cached_int8_model(net_or_fingerprint: torch.nn.Module | str, backend: str) -> Path:
    """The cached INT8 copy of these weights, or an error that says how to make it."""
    path = int8_path(net_or_fingerprint)
    if not path.is_file():
        raise PneumocamError(f"the {backend} backend runs this model's INT8 copy, which is made once from a few "
                             "hundred of your images: run `pneumocam quantize MODEL IMAGES...` first (it is cached "
                             f"as {path})")
    return path


def _float_nodes(model) -> list[str]:
    """Node names kept in float32: the convolution reading the image input, the pooling and the classifier."""
    image = model.graph.input[0].name
    first = [n.name for n in model.graph.node if n.op_type == "Conv" and image in n.input]
    if len(first) != 1:
        raise PneumocamError(f"expected one convolution reading {image!r}, found {len(first)}")
    return first + [n.name for n in model.graph.node if n.op_type in FLOAT_OPS]


def quantize_onnx(float_model: str | Path, batches: Iterable[np.ndarray], out: str | Path,
                  description: dict) -> Path:
    """Write an INT8 copy of the float32 ONNX export `float_model` to `out`, calibrated on `batches` of
    normalised images (B, 1, 224, 224); `description` goes into the model's metadata and beside it as JSON."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise missing_extra("INT8 quantisation", "onnx and onnxruntime", "fast") from exc

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterator[np.ndarray]):
            self.items = items

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.float32)}

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="pneumocam-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared))
        keep_float = _float_nodes(onnx.load(str(prepared)))
        quantized = Path(folder) / "int8.onnx"
        quantize_static(str(prepared), str(quantized), Reader(iter(batches)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float, calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
        model.metadata_props.add(key="pneumocam", value=json.dumps(description))
        write_json(description_path(out), description)  # first: a cached model always has its description
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
    return out

"""Inference backends: who runs PneumoniaNet's forward pass (eager PyTorch, ONNX Runtime or OpenVINO, in float32
or on an INT8 copy).

Each backend is a callable: normalised images (B, 1, H, W) -> (logits (B, 1), feature maps (B, 512, h, w)),
as float32 NumPy arrays. The exported graph returns the feature map too, so the CAM stays exact: the Predictor
computes it from these features with the classifier's weights, whoever ran the network. The float32 CPU
backends run an ONNX export of the network (made at start-up, or cached per checkpoint by onnx_cache.py);
export.py's parity check holds for them (tests/test_backends.py: logit and CAM within 1e-4 of eager PyTorch).
The -int8 backends run the cached INT8 copy that `pneumocam quantize` made (quantize.py): close to float32,
not equal to it. Only eager PyTorch and making an export import torch: an ONNX backend over a cached export
starts without it.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumocam.config import BACKENDS, IMAGE_SIZE
from pneumocam.deploy.quantize import INT8_BACKENDS, cached_int8_model
from pneumocam.errors import PneumocamError, missing_extra

if TYPE_CHECKING:
    import torch

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def export_onnx(net: torch.nn.Module, path: str | Path, example: torch.Tensor | None = None,
                size: int = IMAGE_SIZE) -> Path:
    """Write `net` as ONNX with input `image` (B, 1, size, size) and outputs `logit` and `feature_map`; only the
    batch axis is dynamic, so the runtimes plan for the model's one input size."""
    import torch

    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise missing_extra("ONNX export", "onnx", "export") from exc
    example = torch.zeros(2, 1, size, size) if example is None else example
    axes = {"image": {0: "batch"}, "logit": {0: "batch"}, "feature_map": {0: "batch"}}
    torch.onnx.export(net.eval(), (example,), str(path), input_names=["image"],
                      output_names=["logit", "feature_map"], dynamic_axes=axes, dynamo=False)
    return Path(path)


def onnxruntime_session(path: str | Path):
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_extra("the onnxruntime backend", "onnxruntime", "fast") from exc
    options = onnxruntime.SessionOptions()
    # no busy-waiting between operators: in `serve`, decoding and PNG encoding need those cores meanwhile
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_model(path: str | Path):
    try:
        import openvino
    except ImportError as exc:
        raise missing_extra("the openvino backend", "openvino", "fast") from exc
    # latency hint: one request uses every core, which is what a batch of any size wants here. f32: on a CPU with
    # avx512_bf16 or AMX, OpenVINO otherwise computes the float layers in bfloat16, and the logits drift from torch's
    return openvino.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_PRECISION_HINT": "f32"})


def _numpy_runner(run: Callable[[np.ndarray], tuple]) -> Runner:
    def runner(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logit, features = run(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(logit, dtype=np.float32), np.asarray(features, dtype=np.float32)

    return runner


def torch_runner(net: torch.nn.Module, device: torch.device | str = "cpu") -> Runner:
    """Eager PyTorch (or any module returning (logits, feature maps)) as a Runner, on `device`."""
    import torch

    def runner(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, features = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            return logits.float().cpu().numpy(), features.float().cpu().numpy()

    return runner


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """"auto" -> onnxruntime on the CPU where it is installed (faster than eager torch there, the same logit and
    CAM within 1e-4, and it starts without torch), else torch; any other name is checked and kept."""
    if backend == "auto":
        import importlib.util

        return "onnxruntime" if device == "cpu" and importlib.util.find_spec("onnxruntime") else "torch"
    if backend not in BACKENDS:
        raise PneumocamError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    return backend


def make_runner(net: torch.nn.Module, backend: str = "torch", device: torch.device | None = None,
                size: int = IMAGE_SIZE) -> Runner:
    """The forward pass of `net` on `backend` for (B, 1, size, size) inputs. The ONNX backends run on the CPU
    only."""
    backend = resolve_backend(backend, "cpu" if device is None else device.type)
    if backend == "torch":
        return torch_runner(net, device or "cpu")
    if device is not None and device.type != "cpu":
        raise PneumocamError(f"the {backend} backend runs on the CPU; use --device cpu (or --backend torch)")
    if backend in INT8_BACKENDS:
        return onnx_runner(cached_int8_model(net, backend), INT8_BACKENDS[backend])
    with tempfile.TemporaryDirectory(prefix="pneumocam-backend-") as folder:  # loaded into memory, then deleted
        return onnx_runner(export_onnx(net.cpu(), Path(folder) / "model.onnx", size=size), backend)


def onnx_runner(path: str | Path, engine: str) -> Runner:
    """The forward pass of the ONNX model at `path` on onnxruntime or openvino (compiled into memory)."""
    if engine == "onnxruntime":
        session = onnxruntime_session(path)
        return _numpy_runner(lambda x: session.run(["logit", "feature_map"], {"image": x}))
    return _numpy_runner(_openvino_run(openvino_model(path)))


def _openvino_run(model) -> Callable[[np.ndarray], tuple]:
    logit, features = model.output("logit"), model.output("feature_map")
    lock = threading.Lock()  # a compiled model's own infer request serves one call at a time

    def run(x: np.ndarray) -> tuple:
        with lock:
            result = model(x)
            return np.array(result[logit]), np.array(result[features])  # copies: the request reuses its buffers

    return run

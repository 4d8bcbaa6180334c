"""A checkpoint as the ONNX backends need it, cached on disk, so that they start without importing torch.

Reading a checkpoint takes torch (1.7 s and about half a gigabyte of memory to import on a 2-core machine),
only to hand the weights to ONNX Runtime or OpenVINO. So the first start of an ONNX backend writes, under
cache_dir()/onnx/<key>/: the float32 ONNX export (model.onnx), the classifier's weights that the CAM needs and
the checkpoint's arrays (arrays.npz), and the rest of its metadata (model.json); later starts read those. The
key hashes the checkpoint file's bytes (with a bundled model's calibration file), pneumocam's version and this
format's number: a changed file or another release gets an entry of its own, never a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumocam import __version__
from pneumocam.data.preprocess import Contract
from pneumocam.deploy.quantize import cache_dir
from pneumocam.model.checkpoints import BUNDLED_MODELS, bundled_file, resolve_checkpoint

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
ARRAY = "__array__"  # model.json's stand-in for an array kept in arrays.npz


@dataclass(frozen=True)
class CachedModel:
    onnx: Path  # the float32 export: input "image", outputs "logit" and "feature_map"
    metadata: dict  # the checkpoint's "pneumocam" entry, arrays as NumPy
    head_weight: np.ndarray  # (512,) the classifier's weights: the CAM's
    head_bias: float
    weights_fingerprint: str  # quantize.weights_fingerprint: where this network's INT8 copy is cached


def cache_key(name_or_path: str | Path) -> str:
    """A hash of what the checkpoint is: its file's bytes (and a bundled model's calibration), the version."""
    digest = hashlib.sha256(f"pneumocam {__version__} onnx-cache {CACHE_FORMAT}\n".encode())
    files = [resolve_checkpoint(name_or_path)]
    model = BUNDLED_MODELS.get(str(name_or_path))
    if model and model.calibration and not Path(name_or_path).exists():
        files.append(bundled_file(model.calibration))
    for path in files:
        if not path.is_file():
            return ""  # nothing to cache: loading it says what is wrong
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:32]


def cache_folder(name_or_path: str | Path) -> Path | None:
    key = cache_key(name_or_path)
    return cache_dir() / "onnx" / key if key else None


def load_cached(name_or_path: str | Path) -> CachedModel | None:
    """The cached entry of this checkpoint, or None when there is none (or it cannot be read: it is remade)."""
    folder = cache_folder(name_or_path)
    if folder is None or not (folder / "model.json").is_file():
        return None
    return _read(folder)


def _read(folder: Path) -> CachedModel | None:
    try:
        description = json.loads((folder / "model.json").read_text())
        with np.load(folder / "arrays.npz") as stored:
            arrays = {name: stored[name] for name in stored.files}
        return CachedModel(folder / "model.onnx", _with_arrays(description["metadata"], arrays),
                           arrays["head_weight"], float(description["head_bias"]), description["weights_fingerprint"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the unreadable ONNX cache entry %s (%s); remaking it", folder, exc)
        return None


def save_cached(name_or_path: str | Path, net: torch.nn.Module, metadata: dict) -> CachedModel | None:
    """Export `net` (the checkpoint's network) and write its entry atomically (a whole folder, renamed into
    place); None, with a warning, where the cache cannot be written (the caller then exports for one run)."""
    from pneumocam.deploy.backends import export_onnx
    from pneumocam.deploy.quantize import weights_fingerprint

    folder = cache_folder(name_or_path)
    if folder is None:
        return None
    arrays: dict[str, np.ndarray] = {"head_weight": net.fc.weight.detach().float().cpu().numpy().reshape(-1)}
    description = {"checkpoint": Path(str(name_or_path)).name, "metadata": _without_arrays(metadata, arrays),
                   "head_bias": float(net.fc.bias.detach()), "weights_fingerprint": weights_fingerprint(net)}
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            size = (Contract.from_metadata(metadata) or Contract()).image_size
            export_onnx(net.cpu(), staging / "model.onnx", size=size)
            np.savez(staging / "arrays.npz", **arrays)
            (staging / "model.json").write_text(json.dumps(description, indent=1))
            shutil.rmtree(folder, ignore_errors=True)  # an unreadable entry of the same key
            os.replace(staging, folder)
        except OSError:
            if not folder.is_dir():  # another process may have put the same entry in place first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        log.warning("could not cache the ONNX export in %s (%s): this start exports it again", folder.parent, exc)
        return None
    return _read(folder)  # as a later start reads it (the key is not hashed again)


def _without_arrays(value: Any, arrays: dict[str, np.ndarray], at: str = "metadata") -> Any:
    """`value` with every tensor or array moved into `arrays` under its dotted place, JSON-ready."""
    if isinstance(value, dict):
        return {str(k): _without_arrays(v, arrays, f"{at}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_arrays(v, arrays, f"{at}.{i}") for i, v in enumerate(value)]
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor or an array
        arrays[at] = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        return {ARRAY: at}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _with_arrays(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {ARRAY}:
            return arrays[value[ARRAY]]
        return {k: _with_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_arrays(v, arrays) for v in value]
    return value

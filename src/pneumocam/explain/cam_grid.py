"""The CAM's arithmetic in NumPy: cells from a feature map, where the cells sit in the image, min-max.

Inference runs on any backend (eager PyTorch, ONNX Runtime, OpenVINO) and, on the ONNX ones, without importing
torch at all, so the map it returns is computed here, from the backend's feature map and the classifier's
weights. cam.py keeps the torch versions that training and the gradient methods need; its `upsample` uses the
same resize matrices, so both place the cells identically (see cam.upsample_and_normalize for the alignments).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pneumocam.config import ALIGNMENTS


def cam_cells(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Raw CAM: features (B, C, h, w), classifier weight (C,) -> (B, h, w) in logit units (mean + bias = logit)."""
    features = np.asarray(features, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32).reshape(-1)
    if features.ndim != 4 or features.shape[1] != weight.size:
        raise ValueError(f"features {features.shape} do not match a classifier of {weight.size} inputs")
    return np.einsum("c,bchw->bhw", weight, features, optimize=True).astype(np.float32)


@lru_cache(maxsize=16)
def resize_matrix(n_cells: int, n_pixels: int, alignment: str = "receptive-field") -> np.ndarray:
    """(n_pixels, n_cells) bilinear weights along one axis: pixel i reads cell coordinate
    i * n_cells / n_pixels ("receptive-field": cell p at pixel p * s) or (i + 0.5) * n_cells / n_pixels - 0.5
    ("block-centre": cell p at the middle of its block, as F.interpolate(align_corners=False)); beyond the
    first and last cell's centre the edge value is kept. Read-only: it is shared."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; choose from {ALIGNMENTS}")
    pixels = np.arange(n_pixels, dtype=np.float64)
    scale = n_cells / n_pixels
    source = pixels * scale if alignment == "receptive-field" else (pixels + 0.5) * scale - 0.5
    source = np.clip(source, 0, n_cells - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, n_cells - 1)
    upper = source - low
    matrix = np.zeros((n_pixels, n_cells), dtype=np.float64)
    np.add.at(matrix, (np.arange(n_pixels), low), 1 - upper)
    np.add.at(matrix, (np.arange(n_pixels), high), upper)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upsample_cells(maps: np.ndarray, size: tuple[int, int] = (224, 224),
                   alignment: str = "receptive-field") -> np.ndarray:
    """(B, h, w) maps -> (B, H, W) by bilinear interpolation, values and units kept."""
    maps = np.asarray(maps, dtype=np.float32)
    rows = resize_matrix(maps.shape[-2], size[0], alignment)
    columns = resize_matrix(maps.shape[-1], size[1], alignment)
    return ((rows @ maps) @ columns.T).astype(np.float32, copy=False)


def normalize_cells(maps: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Min-max each map of (B, h, w) to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > eps, (flat - low) / np.maximum(span, eps), 0.0)
    return scaled.reshape(maps.shape).astype(np.float32)


def upsample_and_normalize_cells(maps: np.ndarray, size: tuple[int, int] = (224, 224),
                                 alignment: str = "receptive-field") -> np.ndarray:
    """Min-max normalise, then resize (the SPEC's order), clipped to [0, 1] against rounding."""
    return np.clip(upsample_cells(normalize_cells(maps), size, alignment), 0.0, 1.0)


def pooled(features: np.ndarray) -> np.ndarray:
    """(B, C, h, w) feature maps -> (B, C) global-average-pooled vectors, as the classifier reads them."""
    return np.asarray(features, dtype=np.float32).mean(axis=(2, 3))

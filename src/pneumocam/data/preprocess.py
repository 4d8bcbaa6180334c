"""The preprocessing contract, from a file to the network's input tensor, shared by training and prediction.

Single images: any (H, W) gray image in [0, 1] -> the model's square input, 224 px unless the data were
prepared with another `--image-size` (`to_model_input`). Prepared images (`load_file`) and batches:
`collate_images` normalises with the `Normalization` a checkpoint records.

Non-square images are padded to a square (centred, with black = air) before resizing by default, so
anatomy keeps its aspect ratio; `resize_mode="stretch"` resizes directly instead. Downsampling is
anti-aliased (Pillow's resampling filters widen their support when shrinking).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pneumocam.config import IMAGE_SIZE, RESIZE_MODES, RSNA_MEAN, RSNA_STD
from pneumocam.data.readers import ImageReadError
from pneumocam.errors import PneumocamError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Contract:
    """How a file becomes the network's input, and where the CAM's cells sit, as the model was trained.

    Written into every checkpoint by `train` (from the prepared data's settings) and read back by
    everything that predicts (Predictor, cam, serve, export), so that training and serving see the same pixels.
    """

    image_size: int = IMAGE_SIZE
    resize_mode: str = "pad"  # pad to a square with black, then resize | stretch
    cam_alignment: str = "receptive-field"  # cam.ALIGNMENTS

    @classmethod
    def from_metadata(cls, meta: dict) -> Contract | None:
        """The contract a checkpoint records, or None for a checkpoint that predates it."""
        recorded = meta.get("preprocessing")
        if not recorded:
            return None
        return cls(int(recorded["image_size"]), recorded["resize_mode"], recorded["cam_alignment"])


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre (H, W) in a black square of side max(H, W); offsets match `square_geometry`."""
    height, width = image.shape
    side = max(height, width)
    if height == width:
        return image
    out = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def to_model_input(image: np.ndarray, size: int = IMAGE_SIZE, resize_mode: str = "pad") -> np.ndarray:
    """(H, W) float in [0, 1] -> (size, size) float32 in [0, 1], anti-aliased bilinear resize."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {image.shape}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    square = pad_to_square(image) if resize_mode == "pad" else image
    if square.shape == (size, size):
        return np.ascontiguousarray(square, dtype=np.float32)
    resized = Image.fromarray(np.asarray(square, dtype=np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def load_file(path: str | Path) -> np.ndarray:
    """Read one prepared image: a (S, S) float32 array in [0, 1]. A damaged file raises ImageReadError
    naming it (evaluate and localize then stop with that one line, not a traceback)."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"not a readable prepared image ({type(exc).__name__}: {exc}); "
                                   "run pneumocam prepare again") from exc


@dataclass(frozen=True)
class Normalization:
    mean: float = RSNA_MEAN
    std: float = RSNA_STD
    origin: str = "rsna-constants"  # or the stats.json the values came from


def read_normalization(data_dir: str | Path, use_data_stats: bool | None = None) -> Normalization:
    """Mean/std for the network's input.

    None (default): the data set's own mean/std from DATA/stats.json when `prepare` wrote one, else the
    course's RSNA constants 0.49/0.248 (a hand-made folder). True: stats.json, required. False: the
    constants. The result says where it came from (`origin`), and training records it in the checkpoint.
    """
    stats_path = Path(data_dir) / "stats.json"
    if use_data_stats is False or (use_data_stats is None and not stats_path.exists()):
        return Normalization()
    if not stats_path.exists():
        raise PneumocamError(f"{stats_path}: not found; prepare the data with `pneumocam prepare` first")
    stats = json.loads(stats_path.read_text())
    return Normalization(float(stats["mean"]), float(stats["std"]), str(stats_path))


def data_contract(data_dir: str | Path) -> Contract:
    """The preprocessing `prepare` applied to DATA (its image size and resize mode, from stats.json), which
    training records so that prediction repeats it. A hand-made folder gets the default resize mode and the
    side of its first image."""
    stats_path = Path(data_dir) / "stats.json"
    settings = json.loads(stats_path.read_text()).get("settings", {}) if stats_path.exists() else {}
    default = Contract()
    size = settings.get("image_size") or _first_image_side(Path(data_dir)) or default.image_size
    return Contract(int(size), settings.get("resize_mode", default.resize_mode), default.cam_alignment)


def _first_image_side(data_dir: Path) -> int | None:
    first = next(iter(sorted((data_dir / "Processed").glob("*/*/*.npy"))), None)
    return int(np.load(first, mmap_mode="r").shape[0]) if first is not None else None


def normalised_batch(batch: Sequence[np.ndarray], norm: Normalization) -> np.ndarray:
    """A list of (S, S) images in [0, 1] -> the normalised (B, 1, S, S) float32 array the network reads."""
    stacked = np.stack([np.asarray(b, dtype=np.float32) for b in batch])[:, None]
    return ((stacked - np.float32(norm.mean)) / np.float32(norm.std)).astype(np.float32, copy=False)


def collate_images(batch: Sequence[np.ndarray], norm: Normalization) -> torch.Tensor:
    """normalised_batch as a torch tensor."""
    import torch

    return torch.from_numpy(normalised_batch(batch, norm))

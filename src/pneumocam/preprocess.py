"""Single-image preprocessing: any (H, W) gray image in [0, 1] -> the model's 224x224 input.

Non-square images are padded to a square (centred, with black = air) before resizing by default, so
anatomy keeps its aspect ratio; `resize_mode="stretch"` resizes directly instead. Downsampling is
anti-aliased (Pillow's resampling filters widen their support when shrinking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
RESIZE_MODES = ("pad", "stretch")


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


@dataclass(frozen=True)
class Geometry:
    """How an (H, W) source maps into the square output: out = (src + offset) * scale."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def box_to_output(self, x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
        """A box (top-left x, y, width, height) in source pixels -> the same box in output pixels."""
        return (
            (x + self.offset_x) * self.scale_x,
            (y + self.offset_y) * self.scale_y,
            width * self.scale_x,
            height * self.scale_y,
        )


def square_geometry(height: int, width: int, size: int = IMAGE_SIZE, resize_mode: str = "pad") -> Geometry:
    if resize_mode == "stretch":
        return Geometry(size / width, size / height, 0.0, 0.0)
    if resize_mode != "pad":
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    side = max(height, width)
    return Geometry(size / side, size / side, float((side - width) // 2), float((side - height) // 2))


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


"""Box geometry: ground-truth boxes (x, y, width, height) as pixels, masks and CAM cells.

The bottom layer that data preparation, training (box guidance) and the localisation scores share, so that
they agree on which pixels a box holds: a pixel (row r, column c) is inside a box when its centre
(c + 0.5, r + 0.5) is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumocam.config import ALIGNMENTS, IMAGE_SIZE, RESIZE_MODES
from pneumocam.errors import PneumocamError
from pneumocam.files import read_csv

if TYPE_CHECKING:  # the tensor helpers below import torch themselves: prediction reads boxes without it
    import torch

Box = tuple[float, float, float, float]


def box_mask(boxes: Sequence[Box] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the union of the boxes; or, for an (..., K, 4) array of boxes, an (..., H, W)
    stack of masks, one per row of K (whole training batches at once; 0-size boxes add nothing)."""
    height, width = shape
    table = np.asarray(boxes, dtype=np.float64)
    table = table.reshape(-1, 4) if table.ndim < 2 else table  # an empty list: no boxes
    rows = np.arange(height) + 0.5
    cols = np.arange(width) + 0.5
    mask = np.zeros((*table.shape[:-2], height, width), dtype=bool)
    for k in range(table.shape[-2]):  # K is small (at most a handful of boxes per image)
        x, y, w, h = (table[..., k, i, None] for i in range(4))  # each (..., 1)
        inside_rows = (rows >= y) & (rows < y + h)  # (..., H)
        inside_cols = (cols >= x) & (cols < x + w)  # (..., W)
        mask |= inside_rows[..., :, None] & inside_cols[..., None, :]
    return mask


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
    """Where an (height, width) source lands in the square output of `preprocess.to_model_input`."""
    if resize_mode == "stretch":
        return Geometry(size / width, size / height, 0.0, 0.0)
    if resize_mode != "pad":
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    side = max(height, width)
    return Geometry(size / side, size / side, float((side - width) // 2), float((side - height) // 2))


def load_boxes(data_dir: str | Path) -> dict[str, list[Box]]:
    """DATA/boxes.csv (written by prepare) -> {file relative to the data dir: [(x, y, w, h) in 224-px space]}."""
    path = Path(data_dir) / "boxes.csv"
    if not path.exists():
        raise PneumocamError(f"{path}: not found (run `pneumocam prepare` first)")
    out: dict[str, list] = {}
    for row in read_csv(path):
        out.setdefault(row["file"], []).append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))
    return out


def split_boxes(files: Sequence[str], boxes: dict[str, list[Box]]) -> torch.Tensor:
    """The boxes of each file (`boxes`: load_boxes) as one (N, K, 4) tensor (x, y, w, h), K = the most boxes
    any file has; files with fewer are padded with empty (0-size) boxes."""
    import torch

    per_sample = [boxes.get(key, []) for key in files]
    table = torch.zeros((len(per_sample), max([1, *(len(b) for b in per_sample)]), 4))
    for i, sample_boxes in enumerate(per_sample):
        if sample_boxes:
            table[i, : len(sample_boxes)] = torch.tensor(sample_boxes)
    return table


def box_masks(boxes: torch.Tensor, size: int = 224) -> torch.Tensor:
    """(N, K, 4) boxes (x, y, w, h) in pixels -> (N, 1, size, size) bool masks, each of its row's union.

    The pixel-centre rule of `box_mask`, so training and scoring
    agree on which pixels a box holds; empty (0-size) padding boxes add nothing. Bool, not float: a
    batch of 256 is 4x less to convert, pin and copy, and the device makes it float.
    """
    import torch

    return torch.from_numpy(box_mask(boxes.numpy(), (size, size)))[:, None]


def cell_coverage(masks: torch.Tensor, cells: tuple[int, int], alignment: str = "receptive-field") -> torch.Tensor:
    """(B, 1, H, W) box masks (bool, or float in [0, 1]) -> (B, h, w): each CAM cell's share inside a box.

    A cell's area is the s x s square (s = H / h) the alignment centres it on (see
    cam.upsample_and_normalize): around pixel p s for "receptive-field", (p + 0.5) s for "block-centre".
    """
    import torch.nn.functional as F

    height, width = masks.shape[-2:]
    if height % cells[0] or width % cells[1] or height // cells[0] != width // cells[1]:
        raise ValueError(f"a {height}x{width} mask does not split into {cells[0]}x{cells[1]} square cells")
    stride = height // cells[0]
    masks = masks.float()
    if alignment == "receptive-field":  # cell p spans pixels [p s - s/2, p s + s/2)
        half = stride // 2
        masks = F.pad(masks, (half, 0, half, 0))[..., :height, :width]
    elif alignment != "block-centre":
        raise ValueError(f"unknown alignment {alignment!r}; choose from {ALIGNMENTS}")
    return F.avg_pool2d(masks, stride)[:, 0]

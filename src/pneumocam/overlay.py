"""CAM overlays: a colour-mapped heatmap blended on the gray image, and the side-by-side figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pneumocam.files import save_figure

METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM",
                "eigencam": "Eigen-CAM", "layercam": "LayerCAM", "gradcam-lib": "Grad-CAM (pytorch-grad-cam)",
                "gradcam++-lib": "Grad-CAM++ (pytorch-grad-cam)"}


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend: out = (1 - alpha) * gray + alpha * colormap(cam).

    image: (H, W) in [0, 1]; cam: (H, W) in [0, 1]; returns (H, W, 3) float32 RGB in [0, 1].
    """
    if image.shape != cam.shape:
        raise ValueError(f"image {image.shape} and cam {cam.shape} must have the same shape")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cmap = matplotlib.colormaps[colormap]
    # the colormap's own lookup table, indexed as matplotlib indexes it for floats, in float32: same colours,
    # a third of the time of calling the colormap (serve draws one overlay per request)
    table = cmap(np.arange(cmap.N))[:, :3].astype(np.float32)
    heat = table[np.minimum((np.clip(cam, 0, 1) * cmap.N).astype(np.intp), cmap.N - 1)]
    return ((1 - alpha) * np.clip(image, 0, 1)[..., None] + alpha * heat).astype(np.float32)


def to_png(image: np.ndarray) -> bytes:
    """(H, W) gray or (H, W, 3) RGB float in [0, 1] -> 8-bit PNG bytes (Pillow; no figure).

    zlib level 1 with run-length matching: a quarter of the default's time for as many bytes on an overlay
    (serve encodes two per request)."""
    import zlib
    from io import BytesIO

    from PIL import Image

    pixels = np.clip(np.round(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def _draw_boxes(ax, boxes: Sequence[tuple[float, float, float, float]]) -> None:
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=1.5, linestyle="--"))


def side_by_side(image: np.ndarray, cam: np.ndarray, title: str = "", alpha: float = 0.5,
                 colormap: str = "jet", boxes: Sequence = (), method: str = "cam") -> Figure:
    """The original (left) and the CAM overlay (right); ground-truth boxes dashed on both if given."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.3), constrained_layout=True)
    left.imshow(image, cmap="gray", vmin=0, vmax=1)
    left.set_title("original")
    right.imshow(overlay_cam(image, cam, alpha, colormap))
    right.set_title(f"{METHOD_NAMES.get(method, method)} ({colormap}, alpha {alpha})")
    for ax in (left, right):
        _draw_boxes(ax, boxes)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


@dataclass(frozen=True)
class SideBySideJob:
    """Everything one side-by-side PNG needs, so that worker processes can draw it."""

    path: Path
    image: np.ndarray
    cam: np.ndarray
    title: str
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: tuple = ()
    method: str = "cam"


def save_side_by_side(job: SideBySideJob) -> Path:
    """Draw a side_by_side figure and save it atomically as a 100-dpi PNG at job.path."""
    figure = side_by_side(job.image, job.cam, job.title, job.alpha, job.colormap, job.boxes, job.method)
    try:
        save_figure(job.path, figure, dpi=100)
    finally:
        plt.close(figure)
    return job.path


def overlay_grid(items: Sequence[tuple[np.ndarray, np.ndarray, str, Sequence]], columns: int = 4,
                 alpha: float = 0.5, colormap: str = "jet") -> Figure:
    """A grid of overlays, each item (image, cam, caption, boxes)."""
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, cam, caption, boxes) in zip(axes.flat, items, strict=False):
        ax.imshow(overlay_cam(image, cam, alpha, colormap))
        _draw_boxes(ax, boxes)
        ax.set_title(caption, fontsize=9)
    return fig

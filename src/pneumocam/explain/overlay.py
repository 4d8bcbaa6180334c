"""CAM overlays: a colour-mapped map blended on the gray image, with a colour bar, and the figures around it.

Two scales (ShownMap.scale):
- "absolute" (the default): the CAM in the model's own units. Each pixel is coloured by Prediction.evidence,
  the calibrated logit the image would get if every cell were like this one, minus the threshold's logit, on a
  fixed span of +-EVIDENCE_SPAN: warm above the decision boundary, cool below, the X-ray itself where a cell
  sits at the boundary (the colour's weight grows with the distance from it). The map's mean is the image's own
  calibrated logit minus the threshold's, so the picture carries the model's answer. Colour map: coolwarm
  (Moreland's diverging map, designed for even perceptual steps and a light centre; its red-blue ends stay apart
  for the common red-green colour blindness).
- "relative": the seed's picture, min-max per image in jet: where the model looked most, not evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

from pneumocam.config import CAM_SCALES
from pneumocam.files import save_figure
from pneumocam.model.calibration import logit, sigmoid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVIDENCE_SPAN = 4.0  # calibrated logit units from the threshold to either end of the scale (odds x 55)
EVIDENCE_COLORMAP = "coolwarm"
RELATIVE_LABEL = "relative: where the model looked most, not evidence"


@dataclass(frozen=True)
class ShownMap:
    """A map as an overlay shows it: `values` are evidence (absolute) or a min-max map in [0, 1] (relative)."""

    values: np.ndarray
    scale: str = "relative"
    threshold: float | None = None  # absolute: the probability at the boundary (the colour bar's centre)
    colormap: str = "jet"

    @classmethod
    def of(cls, prediction, scale: str = "absolute", colormap: str = "jet") -> ShownMap:
        """The map of a deploy.predictor.Prediction on `scale`; only CAM has logit units, so the other methods (and a
        relative request) give the relative map."""
        if scale not in CAM_SCALES:
            raise ValueError(f"unknown CAM scale {scale!r}; choose from {CAM_SCALES}")
        if scale == "absolute" and prediction.evidence is not None:
            return cls(prediction.evidence, "absolute", prediction.threshold, EVIDENCE_COLORMAP)
        return cls(prediction.cam, "relative", None, colormap)

    def label(self) -> str:
        if self.scale == "relative":
            return RELATIVE_LABEL
        at = f" (threshold {self.threshold:.3f})" if self.threshold is not None else ""
        return f"p(pneumonia) if the whole image looked like this region; white = the threshold{at}"

    def ticks(self) -> tuple[list[float], list[str]]:
        """Colour-bar positions (in `values` units) and their labels: probabilities where a threshold is known."""
        if self.scale == "relative":
            return [0.0, 1.0], ["least", "most"]
        positions = [-EVIDENCE_SPAN, -EVIDENCE_SPAN / 2, 0.0, EVIDENCE_SPAN / 2, EVIDENCE_SPAN]
        if self.threshold is None:
            return positions, [f"{p:+g}" for p in positions]
        centre = logit(self.threshold)
        return positions, [f"{sigmoid(centre + p):.3g}" for p in positions]

    @property
    def value_range(self) -> tuple[float, float]:
        """The values at the colour bar's two ends."""
        return (0.0, 1.0) if self.scale == "relative" else (-EVIDENCE_SPAN, EVIDENCE_SPAN)


@lru_cache(maxsize=8)
def _lookup(colormap: str) -> np.ndarray:
    """The colormap's table as (N, 3) float32, made once per colormap (read-only: it is shared)."""
    cmap = matplotlib.colormaps[colormap]
    table = cmap(np.arange(cmap.N))[:, :3].astype(np.float32)
    table.flags.writeable = False
    return table


@lru_cache(maxsize=8)
def _stop_colours(colormap: str, stops: int) -> tuple[str, ...]:
    table = _lookup(colormap)
    return tuple(matplotlib.colors.to_hex(table[int(i)]) for i in np.linspace(0, len(table) - 1, stops))


def _colour_index(fractions: np.ndarray, n: int) -> np.ndarray:
    """The entry of an n-colour lookup table at `fractions` in [0, 1], as matplotlib indexes it for floats."""
    return np.minimum((np.clip(fractions, 0, 1) * n).astype(np.intp), n - 1)


def _colours(colormap: str, fractions: np.ndarray) -> np.ndarray:
    """(..., 3) colours of `colormap` at `fractions` in [0, 1]: its own lookup table in float32, the same colours
    in a third of the time of calling the colormap (serve draws overlays per request)."""
    table = _lookup(colormap)
    return table[_colour_index(fractions, len(table))]


def _fractions(shown: ShownMap) -> np.ndarray:
    """Where each value of `shown` falls on its colour bar, 0 to 1: absolute, evidence / span around the middle
    (clipped at the ends); relative, the value itself."""
    values = np.asarray(shown.values, dtype=np.float32)
    if shown.scale == "absolute":
        return (np.clip(values / EVIDENCE_SPAN, -1, 1) + 1) / 2
    return values


def _weight(scale: str, fractions: np.ndarray) -> np.ndarray:
    """The colour's opacity at `fractions`: absolute, its distance from the boundary in the middle (|evidence| /
    span); relative, 1."""
    if scale == "absolute":
        return np.abs(2 * fractions - 1).astype(np.float32)
    return np.ones(np.shape(fractions), np.float32)


def overlay_evidence(image: np.ndarray, evidence: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The absolute overlay: colour from coolwarm at evidence / EVIDENCE_SPAN, blended with weight
    alpha * |evidence| / EVIDENCE_SPAN (clipped at the span's ends); (H, W, 3) float32 RGB in [0, 1]."""
    if image.shape != evidence.shape:
        raise ValueError(f"image {image.shape} and evidence {evidence.shape} must have the same shape")
    layer = overlay_layer(ShownMap(evidence, "absolute", colormap=EVIDENCE_COLORMAP))
    weight = alpha * layer[..., 3:]
    return ((1 - weight) * np.clip(image, 0, 1)[..., None] + weight * layer[..., :3]).astype(np.float32)


def overlay_map(image: np.ndarray, shown: ShownMap, alpha: float = 0.5) -> np.ndarray:
    """The overlay of `shown` on `image` by its scale."""
    if shown.scale == "absolute":
        return overlay_evidence(image, shown.values, min(1.0, alpha + 0.1))
    return overlay_cam(image, shown.values, alpha, shown.colormap)


def overlay_layer(shown: ShownMap) -> np.ndarray:
    """The colour layer alone as (H, W, 4) RGBA in [0, 1], for a viewer that blends it itself (the web page's
    opacity slider): absolute, the colour's weight is |evidence| / span as in overlay_evidence; relative, 1."""
    fractions = _fractions(shown)
    weight = _weight(shown.scale, fractions)
    return np.concatenate([_colours(shown.colormap, fractions), weight[..., None]], axis=-1).astype(np.float32)


def layer_png(shown: ShownMap) -> bytes:
    """overlay_layer as a palette PNG: each pixel an index into the colormap's table, each entry's alpha that
    colour's weight (a bin's centre). The same colours, alpha within 1/255 of the RGBA layer's, in a quarter of
    its bytes to encode (serve sends one per answer)."""
    import zlib
    from io import BytesIO

    from PIL import Image

    table = _lookup(shown.colormap)
    alpha = _weight(shown.scale, (np.arange(len(table), dtype=np.float32) + 0.5) / len(table))  # at each bin's centre
    image = Image.fromarray(_colour_index(_fractions(shown), len(table)).astype(np.uint8), mode="P")
    image.putpalette(np.round(table * 255).astype(np.uint8).tobytes())
    buffer = BytesIO()
    image.save(buffer, format="PNG", transparency=np.round(alpha * 255).astype(np.uint8).tobytes(), compress_level=1,
               compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def colour_bar_description(shown: ShownMap, stops: int = 11) -> dict:
    """The colour bar as data, for a viewer that draws its own (the web page): colour stops, ticks, label."""
    low, high = shown.value_range
    positions, labels = shown.ticks()
    return {"scale": shown.scale, "label": shown.label(), "colours": list(_stop_colours(shown.colormap, stops)),
            "ticks": [{"at": (position - low) / (high - low), "label": label}
                      for position, label in zip(positions, labels, strict=True)],
            "span_logit": EVIDENCE_SPAN if shown.scale == "absolute" else None}


def colour_bar_strip(width: int, shown: ShownMap, height: int = 44) -> np.ndarray:
    """A colour bar with its tick labels and units as pixels, (height, width, 3) float32 RGB, to burn in below an
    overlay that has no figure around it (predict --overlays, the Secondary Capture)."""
    from PIL import Image, ImageDraw, ImageFont

    low, high = shown.value_range
    margin = max(8, width // 16)
    table = _lookup(shown.colormap)
    positions = np.linspace(0, len(table) - 1, width - 2 * margin).astype(np.intp)
    canvas = np.zeros((height, width, 3), np.float32)
    canvas[2:12, margin : width - margin] = table[positions][None]
    picture = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(9, min(14, width // 40)))
    for position, text in zip(*shown.ticks(), strict=True):
        x = margin + (position - low) / (high - low) * (width - 2 * margin - 1)
        draw.line([(x, 12), (x, 15)], fill=(255, 255, 255))
        draw.text((x, 15), text, fill=(255, 255, 255), font=font, anchor="ma")
    draw.text((width / 2, 29), shown.label(), fill=(255, 255, 255), font=font, anchor="ma")
    return np.asarray(picture, dtype=np.float32) / 255


def add_colour_bar(fig: Figure, axes, shown: ShownMap) -> None:
    """A matplotlib colour bar for `shown` beside `axes`, with its ticks and label."""
    low, high = shown.value_range
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(low, high), shown.colormap)
    bar = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.02)
    positions, labels = shown.ticks()
    bar.set_ticks(positions, labels=labels)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(shown.label(), fontsize=7)

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
    heat = _colours(colormap, cam)
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
    from matplotlib.patches import Rectangle

    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="white", linewidth=1.5, linestyle="--"))


def side_by_side(image: np.ndarray, shown: ShownMap, title: str = "", alpha: float = 0.5, boxes: Sequence = (),
                 method: str = "cam") -> Figure:
    """The original (left) and the overlay with its colour bar (right); ground-truth boxes dashed on both."""
    import matplotlib.pyplot as plt  # figures only: predict and serve draw overlays without pyplot

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.6, 4.3), constrained_layout=True)
    left.imshow(image, cmap="gray", vmin=0, vmax=1)
    left.set_title("original")
    right.imshow(overlay_map(image, shown, alpha))
    right.set_title(f"{METHOD_NAMES.get(method, method)}, {shown.scale} scale")
    add_colour_bar(fig, right, shown)
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
    shown: ShownMap
    title: str
    alpha: float = 0.5
    boxes: tuple = ()
    method: str = "cam"


def save_side_by_side(job: SideBySideJob) -> Path:
    """Draw a side_by_side figure and save it atomically as a 100-dpi PNG at job.path."""
    import matplotlib.pyplot as plt

    figure = side_by_side(job.image, job.shown, job.title, job.alpha, job.boxes, job.method)
    try:
        save_figure(job.path, figure, dpi=100)
    finally:
        plt.close(figure)
    return job.path


def overlay_grid(items: Sequence[tuple[np.ndarray, ShownMap, str, Sequence]], columns: int = 4,
                 alpha: float = 0.5) -> Figure:
    """A grid of overlays, each item (image, shown map, caption, boxes), with one colour bar: in probabilities
    where every absolute map has the same threshold, else in logit units from each image's threshold."""
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns + 0.8, 3.2 * rows), constrained_layout=True,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, shown, caption, boxes) in zip(axes.flat, items, strict=False):
        ax.imshow(overlay_map(image, shown, alpha))
        _draw_boxes(ax, boxes)
        ax.set_title(caption, fontsize=9)
    if items:
        first = items[0][1]
        same = len({shown.threshold for _, shown, _, _ in items}) == 1
        add_colour_bar(fig, axes, first if same else ShownMap(first.values, first.scale, None, first.colormap))
    return fig

"""How well saliency maps hit ground-truth boxes: pointing game, IoU, IoBB, hit rates, energy.

All maps are (N, H, W) arrays in [0, 1]; boxes are (x, y, width, height) in the same pixel space
(a pixel (row r, column c) is inside a box when its centre (c + 0.5, r + 0.5) is). An image's
ground truth is the union of its boxes.

- pointing game (Zhang et al., 2016): the map's maximum falls inside a box.
- IoU at threshold t: region = map >= t; |region ∩ boxes| / |region ∪ boxes|.
- IoBB at threshold t (ChestX-ray8, Wang et al., 2017): the bounding box of the region is the
  detected box; |detected ∩ boxes| / |detected|. A hit at level L means IoBB >= L.
- energy: the share of the map's total mass inside the boxes (energy-based pointing game).
- peak distance: how far (pixels) the map's maximum lies from the nearest box; 0 for a hit. It says
  whether misses are near misses (a 7x7 map's peak sits on a 32-pixel grid) or elsewhere.
- pixel AUPRC (Arun et al. 2021): the average precision of the map's values as a ranking of the pixels
  against the box mask; chance is the share of the image the boxes cover.
- CheXlocalize IoU (Saporta et al. 2022): region = map above its Otsu threshold, and empty when the model's
  probability is below a cutoff (the model's own threshold), so a map cannot score where the model says no.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumocam.data.boxes import Box, box_mask

THRESHOLDS = (0.3, 0.5, 0.7)
IOBB_LEVELS = (0.1, 0.25, 0.5)


def peak(saliency: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum (the first one in row-major order on ties)."""
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return int(row), int(col)


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask[peak(saliency)])


def distance_to_boxes(row: int, col: int, boxes: Sequence[Box]) -> float:
    """Euclidean distance from the centre of pixel (row, col) to the nearest box; 0 inside one."""
    y, x = row + 0.5, col + 0.5
    return min(float(np.hypot(max(bx - x, 0.0, x - (bx + bw)), max(by - y, 0.0, y - (by + bh))))
               for bx, by, bw, bh in boxes)


def iou(region: np.ndarray, mask: np.ndarray) -> float:
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def iobb(region: np.ndarray, mask: np.ndarray) -> float:
    if not region.any():
        return 0.0
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    detected = np.zeros_like(region)
    detected[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return float(np.logical_and(detected, mask).sum() / detected.sum())


def energy_in_boxes(saliency: np.ndarray, mask: np.ndarray) -> float:
    total = float(saliency.sum())
    return float(saliency[mask].sum() / total) if total > 0 else 0.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of a 256-bin histogram that maximises the between-class variance (the middle
    of the cuts that do, when several tie)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = (weight_low * weight_high * (mean_low - mean_high) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))  # a plateau when the classes separate cleanly
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)  # its middle


def pixel_auprc(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of the map's values ranking the pixels inside the boxes first."""
    from sklearn.metrics import average_precision_score

    if not mask.any() or mask.all():
        return float(mask.any())
    return float(average_precision_score(mask.ravel(), saliency.ravel()))


def chexlocalize_iou(saliency: np.ndarray, mask: np.ndarray, probability: float | None, cutoff: float) -> float:
    """IoU of the Otsu-thresholded map with the boxes; the region is empty below the probability cutoff."""
    if probability is not None and probability < cutoff:
        return iou(np.zeros_like(mask), mask)
    return iou(saliency > otsu_threshold(saliency), mask)


def score_image(saliency: np.ndarray, boxes: Sequence[Box], probability: float | None = None,
                cutoff: float = 0.5) -> dict:
    mask = box_mask(boxes, saliency.shape)
    row, col = peak(saliency)
    hit = bool(mask[row, col])  # pointing_hit, with the peak kept for the distance
    scores = {"pointing": hit, "peak_row": row, "peak_col": col,
              "peak_distance": 0.0 if hit else distance_to_boxes(row, col, boxes),
              "energy": energy_in_boxes(saliency, mask), "auprc": pixel_auprc(saliency, mask),
              "chexlocalize_iou": chexlocalize_iou(saliency, mask, probability, cutoff)}
    for t in THRESHOLDS:
        region = saliency >= t
        scores[f"iou@{t}"] = iou(region, mask)
        scores[f"iobb@{t}"] = iobb(region, mask)
    return scores


def score_images(maps: np.ndarray, boxes: Sequence[Sequence[Box]], probabilities: Sequence[float] | None = None,
                 cutoff: float = 0.5) -> list[dict]:
    """score_image for each (map, boxes) pair (with the model's probability of each image, for the CheXlocalize
    IoU's cutoff; without them, no cutoff applies)."""
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} maps but {len(boxes)} box lists")
    if len(maps) == 0:
        raise ValueError("no images with boxes to score")
    probabilities = [None] * len(maps) if probabilities is None else probabilities
    return [score_image(m, b, p, cutoff) for m, b, p in zip(maps, boxes, probabilities, strict=True)]


def score_maps(maps: np.ndarray, boxes: Sequence[Sequence[Box]], probabilities: Sequence[float] | None = None,
               cutoff: float = 0.5) -> dict:
    """Mean scores over images (see summarize)."""
    return summarize(score_images(maps, boxes, probabilities, cutoff))


def summarize(per_image: list[dict]) -> dict:
    """Mean scores over score_image results: pointing_game, mean_iou (at 0.5), iou/iobb per threshold,
    hit rates at IoBB 0.1/0.25/0.5 (region at threshold 0.5), energy, and the peak distance's median
    and 90th percentile."""

    def mean(key: str) -> float:
        return float(np.mean([s[key] for s in per_image]))

    result = {"n_images": len(per_image), "pointing_game": mean("pointing"), "mean_iou": mean("iou@0.5"),
              "energy_in_boxes": mean("energy"), "pixel_auprc": mean("auprc"),
              "chexlocalize_iou": mean("chexlocalize_iou")}
    result["iou"] = {str(t): mean(f"iou@{t}") for t in THRESHOLDS}
    result["iobb"] = {str(t): mean(f"iobb@{t}") for t in THRESHOLDS}
    result["hit_rate_iobb"] = {str(level): float(np.mean([s["iobb@0.5"] >= level for s in per_image]))
                               for level in IOBB_LEVELS}
    distances = [s["peak_distance"] for s in per_image]
    result["peak_distance_px"] = {"median": float(np.median(distances)),
                                  "p90": float(np.percentile(distances, 90))}
    return result


def centre_prior(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """A Gaussian bump at the image centre in [0, 1]: the 'looks at the middle' baseline."""
    height, width = shape
    rows = (np.arange(height) + 0.5 - height / 2) / (sigma_fraction * height)
    cols = (np.arange(width) + 0.5 - width / 2) / (sigma_fraction * width)
    return np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2)).astype(np.float32)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps, ties given their average rank (scipy.stats.spearmanr).

    Use it on the maps at their own 7x7 resolution: an upsampled map repeats its edge values over about a
    quarter of its pixels, and those ties, ranked in any order, would decide much of the correlation.
    A constant map correlates with nothing: 0.
    """
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def per_image_values(per_image: list[dict]) -> dict[str, np.ndarray]:
    """Each summarised score as an (N,) array of per-image values (a hit is 1.0), keyed as summarize names them:
    the inputs of the bootstrap CIs and of the paired margins over a baseline."""
    values = {"pointing_game": [s["pointing"] for s in per_image], "energy_in_boxes": [s["energy"] for s in per_image],
              "pixel_auprc": [s["auprc"] for s in per_image],
              "chexlocalize_iou": [s["chexlocalize_iou"] for s in per_image]}
    for t in THRESHOLDS:
        values[f"iou@{t}"] = [s[f"iou@{t}"] for s in per_image]
        values[f"iobb@{t}"] = [s[f"iobb@{t}"] for s in per_image]
    for level in IOBB_LEVELS:
        values[f"hit_rate_iobb@{level}"] = [s["iobb@0.5"] >= level for s in per_image]
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}

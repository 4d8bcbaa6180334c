"""Is a saliency map faithful: do the pixels it marks drive the pneumonia logit?

- Deletion / insertion (Petsiuk et al. 2018): remove the pixels most-salient-first (replace them with a
  blurred copy of the image or the dataset mean), or reveal them one tenth at a time on that replacement, and
  follow the logit and its sigmoid. A faithful map makes deletion fall fast (low area) and insertion rise fast
  (high area).
- ROAD (Rong et al. 2022, "Remove and Debias"): remove 10-90% of the pixels, most relevant first (MoRF) or
  least relevant first (LeRF), and fill them by noisy linear imputation, so that the shape of the removed
  region leaks as little as possible. Faithful: MoRF low, LeRF high.

The score is always the network's single pneumonia logit or its sigmoid, never a softmax over one output,
which is 1 whatever the input (`target_scores` refuses it). Every perturbation level is one batched forward
pass over the images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pneumocam.config import REPLACEMENTS

TARGETS = ("logit", "probability")
STEPS = 10
ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
BLUR_SIGMA = 8.0  # pixels: a CAM cell is 32 px at any input size, so detail below a cell is gone
ROAD_NOISE = 0.01  # standard deviation of the noise added to imputed pixels, in [0, 1] pixel units

Score = Callable[[np.ndarray], np.ndarray]  # (B, H, W) images in [0, 1] -> (B, K) network outputs


def target_scores(outputs: np.ndarray | torch.Tensor, target: str) -> np.ndarray:
    """(B, K) network outputs -> (B,) scores: the logit or its sigmoid. A softmax over a single output is
    constant (1.0) and would make every map look equally (un)faithful, so it is an error, as is any other
    target or a network with more than one output."""
    outputs = torch.as_tensor(outputs, dtype=torch.float64)
    if outputs.ndim != 2 or outputs.shape[1] != 1:
        raise ValueError(f"expected (B, 1) outputs of the single pneumonia logit, got {tuple(outputs.shape)}")
    if target == "softmax":
        raise ValueError("a softmax over the single pneumonia logit is always 1.0 and measures nothing; "
                         "use target 'logit' or 'probability' (its sigmoid)")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {TARGETS}")
    z = outputs[:, 0]
    return (z if target == "logit" else torch.sigmoid(z)).numpy()


def salience_order(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> (N, H*W) pixel indices, most salient first (stable on ties)."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return np.argsort(-flat, axis=1, kind="stable")


def replacement_images(images: np.ndarray, kind: str, mean: float) -> np.ndarray:
    """What removed pixels become: a Gaussian-blurred copy of each image, or the dataset mean."""
    if kind == "mean":
        return np.full_like(images, mean, dtype=np.float32)
    if kind != "blur":
        raise ValueError(f"unknown replacement {kind!r}; choose from {REPLACEMENTS}")
    from torchvision.transforms.functional import gaussian_blur

    radius = int(3 * BLUR_SIGMA)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    return gaussian_blur(x, [2 * radius + 1] * 2, [BLUR_SIGMA] * 2)[:, 0].numpy()


def _counts(n_pixels: int, steps: int) -> list[int]:
    return [int(round(k * n_pixels / steps)) for k in range(steps + 1)]


@dataclass(frozen=True)
class Curves:
    fractions: np.ndarray  # (S,) share of pixels removed (deletion, ROAD) or revealed (insertion)
    logit: np.ndarray  # (N, S)
    probability: np.ndarray  # (N, S)

    def area(self, target: str = "probability") -> np.ndarray:
        """(N,) area under each image's curve over the fractions (trapezoid rule)."""
        values = self.logit if target == "logit" else self.probability
        return np.trapezoid(values, self.fractions, axis=1) / (self.fractions[-1] - self.fractions[0])


def _scores(score: Score, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    outputs = score(np.stack(batch))
    return target_scores(outputs, "logit"), target_scores(outputs, "probability")


def perturbation_curves(score: Score, images: np.ndarray, maps: np.ndarray, mode: str = "deletion",
                        replacement: str = "blur", mean: float = 0.5, steps: int = STEPS) -> Curves:
    """Deletion or insertion curves of every image, in `steps` equal shares of its pixels. Each level is one
    batched call of `score` over all the images."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"unknown mode {mode!r}; choose deletion or insertion")
    images = np.asarray(images, dtype=np.float32)
    n, height, width = images.shape
    order = salience_order(maps)
    filler = replacement_images(images, replacement, mean)
    source, start = (filler, images) if mode == "deletion" else (images, filler)
    logits, probabilities = [], []
    for count in _counts(height * width, steps):
        batch = start.reshape(n, -1).copy()
        chosen = order[:, :count]
        rows = np.arange(n)[:, None]
        batch[rows, chosen] = source.reshape(n, -1)[rows, chosen]
        z, p = _scores(score, list(batch.reshape(n, height, width)))
        logits.append(z)
        probabilities.append(p)
    return Curves(np.linspace(0, 1, steps + 1), np.stack(logits, 1), np.stack(probabilities, 1))


def _neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """Sum over each pixel's 8 neighbours with weights 1/6 (sideways) and 1/12 (diagonal); zero outside the
    image. Shifted slices: cheaper than a 3x3 convolution with one channel."""
    p = F.pad(x, (1, 1, 1, 1))
    side = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    corner = p[..., :-2, :-2] + p[..., :-2, 2:] + p[..., 2:, :-2] + p[..., 2:, 2:]
    return side / 6 + corner / 12


def linear_impute(images: torch.Tensor, removed: torch.Tensor, tolerance: float = 1e-4,
                  max_iterations: int = 3000, initial: torch.Tensor | None = None) -> torch.Tensor:
    """Fill the removed pixels of (B, H, W) images so that each is the weighted mean of its 8 neighbours
    (weights 1/6 sideways, 1/12 diagonally; ROAD's linear imputation), the kept pixels fixed: the sparse
    linear system solved by conjugate gradients, batched over the images, in the images' dtype, from `initial`
    (default 0) until the residual is `tolerance` of the right-hand side."""
    x = images[:, None]
    unknown = removed.to(x.dtype)[:, None]
    degree = _neighbour_mean(torch.ones_like(x))  # smaller on the border

    def apply(u: torch.Tensor) -> torch.Tensor:  # A u for u living on the unknown pixels
        return unknown * (degree * u - _neighbour_mean(u))

    known = x * (1 - unknown)
    b = unknown * _neighbour_mean(known)
    u = torch.zeros_like(x) if initial is None else unknown * initial.to(x.dtype)[:, None]
    r = b - apply(u)
    p = r.clone()
    rs = (r * r).sum(dim=(1, 2, 3), keepdim=True)
    scale = (b * b).sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-30)
    for _ in range(max_iterations):
        if bool((rs <= tolerance**2 * scale).all()):
            break
        ap = apply(p)
        alpha = rs / (p * ap).sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-30)
        u = u + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dim=(1, 2, 3), keepdim=True)
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new
    return (known + u)[:, 0].to(images.dtype)


def multiscale_impute(images: torch.Tensor, removed: torch.Tensor, coarsest: int = 28,
                      tolerance: float = 1e-4) -> torch.Tensor:
    """linear_impute, started from the solution of the same problem at half the resolution (recursively, down
    to `coarsest` pixels): large removed regions converge in tens of iterations instead of thousands. The
    answer is the full-resolution system's, to `tolerance`."""
    height, width = images.shape[-2:]
    initial = None
    if min(height, width) >= 2 * coarsest and height % 2 == 0 and width % 2 == 0:
        kept = (~removed).to(images.dtype)[:, None]
        pooled_kept = F.avg_pool2d(kept, 2)
        coarse_images = (F.avg_pool2d(images[:, None] * kept, 2) / pooled_kept.clamp(min=1e-12))[:, 0]
        coarse = multiscale_impute(coarse_images, (pooled_kept == 0)[:, 0], coarsest, tolerance)
        initial = F.interpolate(coarse[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return linear_impute(images, removed, tolerance, initial=initial)


def road_curves(score: Score, images: np.ndarray, maps: np.ndarray, order: str = "morf",
                percentages: tuple[int, ...] = ROAD_PERCENTAGES, noise: float = ROAD_NOISE,
                seed: int = 0) -> Curves:
    """ROAD: at each percentage, remove that share of pixels (most relevant first for MoRF, least for LeRF),
    impute them linearly plus Gaussian noise, and score the batch."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"unknown ROAD order {order!r}; choose morf or lerf")
    images = np.asarray(images, dtype=np.float32)
    n, height, width = images.shape
    ranking = salience_order(maps if order == "morf" else -np.asarray(maps))
    generator = torch.Generator().manual_seed(seed)
    logits, probabilities = [], []
    for percentage in percentages:
        removed = np.zeros((n, height * width), dtype=bool)
        removed[np.arange(n)[:, None], ranking[:, : int(round(percentage / 100 * height * width))]] = True
        removed_t = torch.from_numpy(removed.reshape(n, height, width))
        filled = multiscale_impute(torch.from_numpy(images), removed_t)
        filled = filled + removed_t * torch.randn(filled.shape, generator=generator) * noise
        z, p = _scores(score, list(filled.clamp(0, 1).numpy()))
        logits.append(z)
        probabilities.append(p)
    return Curves(np.asarray(percentages) / 100, np.stack(logits, 1), np.stack(probabilities, 1))

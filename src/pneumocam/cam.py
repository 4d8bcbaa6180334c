"""Class Activation Maps as pure functions of tensors (no hooks: the model returns its features).

CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016): for a head
that is a global average pool followed by one linear layer,

    M(i, j) = sum_k w_k A_k(i, j)        and        logit = mean_ij M(i, j) + b,

so the raw map explains the pneumonia logit exactly. Sign convention: positive values push towards
pneumonia; the raw map keeps its sign, only the displayed map is min-max normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_activation_map(features: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """Raw CAM: features (B, C, h, w), fc_weight (C,) or (1, C) -> (B, h, w), same units as the logit.

    Written as the reshape + weighted sum of the method: A -> (B, C, h*w), M = w^T A -> (B, h*w).
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    weight = fc_weight.reshape(-1)
    if weight.numel() != features.shape[1]:
        raise ValueError(f"fc weight has {weight.numel()} entries but features have {features.shape[1]} channels")
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)  # (B, 512, 49)
    cam = torch.einsum("c,bcn->bn", weight.to(features.dtype), flat)  # (B, 49)
    return cam.reshape(batch, height, width)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max each map of (B, h, w) to [0, 1]. A constant map becomes all zeros (no NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def upsample_and_normalize(maps: torch.Tensor, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """(B, h, w) raw maps -> (B, H, W) in [0, 1]: min-max normalise, then bilinear resize (SPEC order).

    Bilinear interpolation stays inside the input range, so the clamp only removes rounding error.
    """
    normalized = normalize_maps(maps)
    resized = F.interpolate(normalized[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return resized.clamp_(0.0, 1.0)

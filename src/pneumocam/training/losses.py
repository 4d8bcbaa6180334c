"""Losses shared by the auxiliary heads of training."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def known_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the images whose target is known (NaN: unknown); masked rather than indexed, so the step
    never waits for the device to count them."""
    known = ~torch.isnan(targets)
    each = F.binary_cross_entropy_with_logits(logits.float(), torch.where(known, targets, 0.0), reduction="none")
    return (each * known).sum() / known.sum().clamp(min=1)

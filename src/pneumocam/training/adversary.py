"""A view adversary: gradient reversal (Ganin & Lempitsky, ICML 2015), conditioned on the label.

Why: on RSNA adults much of what a network learns to rank is portable AP films (sicker patients) against upright
PA films, a shortcut that fails within each view. A small head tries to tell AP from PA films of the same label
from the pooled features; its gradient reaches the network reversed, so the features learn to hide the view
beyond what the label itself says. Conditioning on the label leaves the label's own information alone (an
unconditioned adversary would also push the features to forget pneumonia, which is commoner on AP films).
Training only: the head is not saved with the network, so the logit and its exact CAM stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn


class _Reversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The identity going forward; going back, the gradient times -scale."""
    return _Reversal.apply(x, scale)


class ViewAdversary(nn.Module):
    """One logit per label for "this film is PA", read from the pooled features through a gradient reversal of
    `strength`: the head learns at full rate, the network is pushed at `strength` the other way."""

    def __init__(self, channels: int, strength: float):
        super().__init__()
        self.head = nn.Linear(channels, 2)  # column 0: the negatives' view, column 1: the positives'
        self.strength = strength

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(reverse_gradient(pooled, self.strength))
        return logits.gather(1, labels.long()[:, None])[:, 0]

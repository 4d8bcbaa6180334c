"""A view adversary, conditioned on the label: the features learn to leave it guessing.

Why: on RSNA adults much of what a network learns to rank is portable AP films (sicker patients) against upright PA
films, a shortcut that fails within each view. A small head learns to tell AP from PA films of the same label from
the pooled features; the network is trained, at a chosen strength, to make that head answer 50:50 (the confusion
loss of Tzeng et al., ICCV 2015). A head that learns at the network's rate is fooled without the view leaving the
features (on RSNA folds its loss stayed near chance while the probability told AP from PA negatives better than
before), so it learns ten times as fast: two time scales, as in Heusel et al., NeurIPS 2017. Reversing the head's
gradient instead (Ganin & Lempitsky, 2015) gives the network an unbounded objective: on the first RSNA fold it drove
the training loss from 2.2 to 6 within 20 steps, and a toy encoder trained that way kept the view; the confusion
loss has its optimum where it cannot be read. Conditioning on the label leaves the label's own information alone: an
unconditioned adversary would also push the features to forget pneumonia, which is commoner on AP films. Training
only: the head is not saved with the network, so the logit and its exact CAM stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pneumocam.training.losses import known_bce

HEAD_LR_FACTOR = 10.0  # the head learns this much faster than the network, so it keeps up with the features


class ViewAdversary(nn.Module):
    """One logit per label for "this film is PA" (column 0 for the negatives, 1 for the positives)."""

    def __init__(self, channels: int):
        super().__init__()
        self.head = nn.Linear(channels, 2)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(pooled).gather(1, labels.long()[:, None])[:, 0]

    def losses(self, pooled: torch.Tensor, labels: torch.Tensor, views: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the head's loss, which trains only the head: BCE on the true views; the confusion loss, which trains
        only the network: BCE of the head's fixed weights against 0.5), both over the films whose view is known
        (`views`: 1 PA, 0 AP, NaN unknown)."""
        own = known_bce(self(pooled.detach(), labels), views)
        fooled = F.linear(pooled, self.head.weight.detach(), self.head.bias.detach())
        fooled = fooled.gather(1, labels.long()[:, None])[:, 0]
        return own, known_bce(fooled, torch.where(torch.isnan(views), views, torch.full_like(views, 0.5)))

"""A ranking loss within strata: each pneumonia film is compared only with the negatives of its own source and view.

Why: on RSNA adults a logit that only tells portable AP films (sicker patients, more pneumonia) from upright PA
films already lowers the batch's cross-entropy, and reweighting the images (--balance-by, --group-dro) still leaves
that gradient in. A pairwise logistic loss (RankNet, Burges et al., ICML 2005; AUROC is the share of such pairs
ranked right) over pairs of a positive and a negative from the same stratum cannot be lowered by the view: within a
pair it is the same. It is added to the cross-entropy, which keeps the probabilities' scale. Training only: the
network, its logit and its exact CAM stay as they are.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def hard_pairs(rank_weight: float, rank_hard_weight: float) -> bool:
    """--rank-hard-weight is on: training batches must carry each film's finding to weigh the pairs by."""
    return rank_weight > 0 and rank_hard_weight != 1


def within_stratum_ranking(logits: torch.Tensor, labels: torch.Tensor, strata: torch.Tensor,
                           negative_weights: torch.Tensor | None = None) -> torch.Tensor:
    """softplus(negative's logit - positive's logit) over the batch's (positive, negative) pairs that share a
    stratum: the mean within each stratum, then over the strata that have a pair (so the few pneumonias on PA films
    weigh as much as the many on AP films); 0 when no stratum has one. `negative_weights` (per image; None: all 1)
    make a stratum's mean a weighted one, a pair weighing what its negative does (--rank-hard-weight: the "Not
    Normal" films). Masked rather than indexed, so the step never waits for the device."""
    positive = labels.bool()
    same = strata[:, None] == strata[None, :]
    pairs = (same & positive[:, None] & ~positive[None, :]).float()
    if negative_weights is not None:
        pairs = pairs * negative_weights.float()[None, :]
    # each row's stratum's total pair weight: the sum of its positives' rows
    total = (same & positive[None, :]).float() @ pairs.sum(1)
    weight = pairs / total.clamp(min=1e-12)[:, None]  # each stratum's pairs sum to 1
    logits = logits.float()
    each = F.softplus(logits[None, :] - logits[:, None])  # row: the positive, column: the negative
    return (each * weight).sum() / weight.sum().clamp(min=1)

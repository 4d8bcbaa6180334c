"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018): train on blends of two films.

Why: a fold trains on a few hundred adults, few enough for the network to learn single films by heart; asking it to
answer linearly between pairs is a regulariser that needs no new images. Only the training batches change: the
network, its logit and its exact CAM stay as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def mix_batch(batch: NamedTuple, share: float, partner: torch.Tensor) -> NamedTuple:
    """`batch` (training.Batch) blended with itself reordered by `partner` (a permutation of its rows):
    images, targets and findings become share x own + (1 - share) x partner's (a finding unknown for either film
    stays unknown: NaN propagates); the box masks become both films' boxes, where the map of the blend belongs;
    the labels, used only for accuracy, are those of the film with the larger share; group indices, views and
    ranking strata cannot be blended and are refused."""
    if batch.groups is not None or batch.views is not None or batch.strata is not None:
        raise ValueError("mixup blends films of different groups and views: it cannot be combined with group DRO, "
                         "the view adversary or the ranking within strata")

    def blend(values: torch.Tensor) -> torch.Tensor:
        return share * values + (1 - share) * values[partner]

    findings = None if batch.findings is None else blend(batch.findings)
    return batch._replace(images=blend(batch.images), targets=blend(batch.targets), findings=findings,
                          labels=batch.labels if share >= 0.5 else batch.labels[partner],
                          masks=[torch.maximum(mask, mask[partner]) for mask in batch.masks])

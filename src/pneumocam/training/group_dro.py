"""Group DRO: train for the worst group rather than the average image (Sagawa et al., ICLR 2020).

Groups are the values of manifest attributes (e.g. the view) crossed with the label, so "PA films with
pneumonia" is a group of its own. The loss is a weighted mean of the groups' mean losses; after each step the
weight of every group present in the batch grows with exp(step x its loss), so the groups the model serves worst
weigh most. Unlike --balance-by, which only changes how often each image is drawn, this changes what the
optimiser minimises. Everything stays on the device: no per-step synchronisation.
"""

from __future__ import annotations

import torch

DRO_STEP = 0.01  # the group weights' step size (Sagawa et al.'s eta_q)


def group_ids(groups: list[tuple[str, ...]], labels=None) -> tuple[torch.Tensor, list[str]]:
    """(each image's group index, each group's name as "AP/1"): attribute values x label (without `labels`, the
    attribute values alone, as --rank-weight's strata "rsna_1000/PA"), unknown values ("") a group of their own,
    named "unknown"."""
    keys = groups if labels is None else [(*g, str(int(y))) for g, y in zip(groups, labels, strict=True)]
    names = sorted(set(keys))
    index = {k: i for i, k in enumerate(names)}
    return torch.tensor([index[k] for k in keys]), ["/".join(v or "unknown" for v in k) for k in names]


class GroupWeights(torch.nn.Module):
    """The adversarial group weights q (a buffer: saved in the checkpoint, so a resumed run continues them)."""

    def __init__(self, n_groups: int, step: float = DRO_STEP):
        super().__init__()
        if n_groups < 1:
            raise ValueError("group DRO needs at least one group")
        self.step = step
        self.register_buffer("q", torch.full((n_groups,), 1.0 / n_groups))

    def forward(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The worst-group objective of one batch from each image's loss and group index; in training (the
        module's own `training` flag) also updates q."""
        n = self.q.numel()
        counts = torch.bincount(groups, minlength=n).to(losses.dtype)
        means = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add(0, groups, losses)
        means = means / counts.clamp(min=1)
        if self.training:
            with torch.no_grad():  # groups absent from the batch keep their weight (exp(0) = 1)
                q = self.q * torch.exp(self.step * means.detach() * (counts > 0))
                self.q.copy_(q / q.sum())
        return (self.q * means).sum()

"""Sharpness-aware minimisation (SAM; Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021): each step descends the gradient taken at the worst point within a radius rho of the
weights instead of at the weights themselves.

Why: a fold fine-tunes on about a thousand adults with noisy labels; a minimum whose loss stays low in a whole
neighbourhood is less tied to those particular films. It costs a second forward and backward pass per step and
changes nothing in the network, its logit or its exact CAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn


@torch.no_grad()
def climb(parameters: Iterable[torch.Tensor], rho: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move the parameters that have a gradient rho along it, normalised over all of them together (the ascent to
    the worst nearby point, to first order); returns each moved parameter with a copy of where it was."""
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return []
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad]))
    scale = rho / (norm + 1e-12)
    origins = [(p, p.detach().clone()) for p in with_grad]
    for parameter in with_grad:
        parameter.add_(parameter.grad * scale)
    return origins


@torch.no_grad()
def descend_back(origins: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put the parameters climb moved back exactly where they were (their gradients stay those of the worst
    point)."""
    for parameter, origin in origins:
        parameter.copy_(origin)


@contextmanager
def batchnorm_statistics_kept(module: nn.Module):
    """BatchNorm layers in training mode still normalise with the batch, but leave their running statistics as they
    are: the pass at the perturbed weights must not count the batch a second time."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # running = (1 - 0) x running + 0 x batch
        yield
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def sharpness_aware(closure: Callable[[], torch.Tensor], at_worst_point: Callable[[], object], module: nn.Module,
                    rho: float) -> Callable[[], torch.Tensor]:
    """Wrap an optimiser closure (zero the gradients, forward, backward); `at_worst_point` runs the same pass a
    second time (the caller's, e.g. without logging). The wrapped closure leaves the gradient of the worst point
    within rho in the parameters' .grad and returns the loss at the weights themselves."""

    def step() -> torch.Tensor:
        loss = closure()
        origins = climb(module.parameters(), rho)
        with batchnorm_statistics_kept(module):
            at_worst_point()
        descend_back(origins)
        return loss

    return step

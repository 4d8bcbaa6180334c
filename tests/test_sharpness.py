"""training.sharpness: the ascent to the worst nearby point, the way back, and BatchNorm statistics left alone."""

import torch
from torch import nn

from pneumocam.training.sharpness import batchnorm_statistics_kept, climb, descend_back, sharpness_aware


def _quartic() -> tuple[nn.Parameter, callable]:
    weights = nn.Parameter(torch.tensor([1.0, 2.0, -0.5]))

    def closure() -> torch.Tensor:
        weights.grad = None
        loss = (weights ** 4).sum()
        loss.backward()
        return loss.detach()

    return weights, closure


def test_climb_moves_rho_along_the_gradient_and_descend_back_returns_exactly():
    weights, closure = _quartic()
    start = weights.detach().clone()
    closure()
    gradient = weights.grad.clone()
    origins = climb([weights, nn.Parameter(torch.ones(2))], rho=0.1)  # a parameter without a gradient stays put
    assert len(origins) == 1
    moved = weights.detach() - start
    assert torch.allclose(moved, 0.1 * gradient / gradient.norm())
    descend_back(origins)
    assert torch.equal(weights.detach(), start)


def test_the_wrapped_closure_leaves_the_gradient_of_the_worst_point_and_returns_the_loss_at_the_weights():
    weights, closure = _quartic()
    start = weights.detach().clone()
    gradient = 4 * start ** 3
    worst = start + 0.05 * gradient / gradient.norm()
    module = nn.Module()
    module.weights = weights
    loss = sharpness_aware(closure, closure, module, rho=0.05)()
    assert torch.isclose(loss, (start ** 4).sum())
    assert torch.allclose(weights.grad, 4 * worst ** 3)
    assert torch.equal(weights.detach(), start)


def test_batchnorm_normalises_with_the_batch_but_keeps_its_running_statistics():
    layer = nn.BatchNorm1d(2).train()
    layer(torch.randn(8, 2) + 5)
    mean, var = layer.running_mean.clone(), layer.running_var.clone()
    with batchnorm_statistics_kept(nn.Sequential(layer)):
        out = layer(torch.randn(8, 2) - 5)
    assert torch.equal(layer.running_mean, mean) and torch.equal(layer.running_var, var)
    assert torch.allclose(out.mean(0), torch.zeros(2), atol=1e-5)  # still the batch's own statistics
    assert layer.momentum == 0.1
    layer(torch.randn(8, 2))
    assert not torch.equal(layer.running_mean, mean)

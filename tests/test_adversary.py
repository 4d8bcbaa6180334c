"""training.adversary: the label-conditioned view head and its two losses."""

import torch

from pneumocam.training.adversary import ViewAdversary


def test_each_image_gets_the_logit_of_its_own_label():
    adversary = ViewAdversary(channels=3)
    pooled = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 1, 0])
    assert torch.allclose(adversary(pooled, labels), adversary.head(pooled)[torch.arange(4), labels])


def test_the_head_loss_trains_only_the_head_and_the_confusion_loss_only_the_network():
    adversary = ViewAdversary(channels=3)
    pooled = torch.randn(4, 3, requires_grad=True)
    own, confusion = adversary.losses(pooled, torch.tensor([0, 1, 1, 0]), torch.tensor([1.0, 0.0, float("nan"), 1.0]))
    own.backward(retain_graph=True)
    assert pooled.grad is None and adversary.head.weight.grad.abs().sum() > 0
    adversary.zero_grad()
    confusion.backward()
    assert adversary.head.weight.grad is None or adversary.head.weight.grad.abs().sum() == 0
    assert pooled.grad[2].abs().sum() == 0 < pooled.grad[0].abs().sum()  # a film of unknown view is left alone


def test_unknown_views_are_skipped_and_a_batch_without_views_costs_nothing():
    adversary = ViewAdversary(channels=3)
    pooled, labels = torch.randn(3, 3), torch.tensor([0, 1, 0])
    own, confusion = adversary.losses(pooled, labels, torch.full((3,), float("nan")))
    assert own == 0 and confusion == 0


def _hidden_view(strength: float) -> tuple[float, float]:
    """A linear encoder fed (view, noise), trained only against the adversary: (how much of the view its features
    still carry, the norm of the encoder's view column; the head's accuracy on the view afterwards)."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.eye_(encoder.weight)
    adversary = ViewAdversary(channels=2)
    optimiser = torch.optim.SGD([*encoder.parameters(), *adversary.parameters()], lr=0.1)
    views = torch.randint(0, 2, (256,)).float()
    inputs = torch.stack([views * 2 - 1, torch.randn(256)], dim=1)
    labels = torch.randint(0, 2, (256,))
    for _ in range(300):
        optimiser.zero_grad()
        own, confusion = adversary.losses(encoder(inputs), labels, views)
        (own + strength * confusion).backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = ((adversary(encoder(inputs), labels) > 0).float() == views).float().mean()
    return float(encoder.weight[:, 0].detach().norm()), float(accuracy)


def test_the_confusion_loss_makes_the_features_hide_the_view():
    """Without it the head reads the view perfectly; with it the view column all but vanishes and the head
    is left near chance."""
    assert _hidden_view(0.0) == (1.0, 1.0)
    column, accuracy = _hidden_view(1.0)
    assert column < 0.2 and accuracy < 0.6

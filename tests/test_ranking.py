import pytest
import torch
from torch.nn import functional as F

from pneumocam.training import group_ids, within_stratum_ranking


def _by_loops(logits, labels, strata, negative_weights=None) -> float:
    """The loss written out: each stratum's mean pair loss (a pair weighing what its negative does), then the mean
    over the strata that have a pair."""
    weights = torch.ones(len(labels)) if negative_weights is None else negative_weights
    means = []
    for s in sorted(set(strata.tolist())):
        pairs = [(weights[j].item(), F.softplus(logits[j] - logits[i]).item()) for i in range(len(labels))
                 for j in range(len(labels)) if strata[i] == strata[j] == s and labels[i] == 1 and labels[j] == 0]
        if pairs:
            means.append(sum(w * loss for w, loss in pairs) / sum(w for w, _ in pairs))
    return sum(means) / len(means) if means else 0.0


def test_strata_without_labels_are_named_with_unknown_values_named():
    ids, names = group_ids([("rsna_1000", "PA"), ("kermany224", ""), ("rsna_1000", "PA"), ("rsna_1000", "AP")])
    assert names == ["kermany224/unknown", "rsna_1000/AP", "rsna_1000/PA"]
    assert ids.tolist() == [2, 0, 2, 1]


@pytest.mark.parametrize("weighted", [False, True])
def test_the_loss_is_each_strata_mean_pair_loss_averaged_over_the_strata(weighted):
    """With negative weights (--rank-hard-weight) each stratum's mean is a weighted one, a pair weighing what its
    negative does; weights all 1 are the plain loss, exactly."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(12, generator=generator) * 3
        labels = torch.randint(0, 2, (12,), generator=generator)
        strata = torch.randint(0, 3, (12,), generator=generator)
        hard = 1 + 2.0 * torch.randint(0, 2, (12,), generator=generator) if weighted else None  # 3 on some
        assert within_stratum_ranking(logits, labels, strata, hard).item() == pytest.approx(
            _by_loops(logits, labels, strata, hard), rel=1e-5, abs=1e-7)
        assert torch.equal(within_stratum_ranking(logits, labels, strata, torch.ones(12)),
                           within_stratum_ranking(logits, labels, strata))


def test_what_only_tells_the_strata_apart_cannot_change_the_loss():
    """A shift of every logit of one stratum (what a network that reads the view can do) changes no pair the loss
    compares; ranking within a stratum does."""
    logits = torch.tensor([2.0, 0.5, -1.0, 1.0, 0.0, 3.0])
    labels = torch.tensor([1, 0, 0, 1, 0, 0])
    strata = torch.tensor([0, 0, 0, 1, 1, 1])
    base = within_stratum_ranking(logits, labels, strata)
    shifted = within_stratum_ranking(logits + 5.0 * (strata == 1), labels, strata)
    assert shifted.item() == pytest.approx(base.item())
    reranked = logits.clone()
    reranked[5] = -3.0  # the negative that outranked its stratum's positive now falls below it
    assert within_stratum_ranking(reranked, labels, strata) < base


def test_a_batch_without_a_pair_in_any_stratum_gives_zero_and_a_gradient():
    logits = torch.tensor([1.0, -1.0, 0.5], requires_grad=True)
    labels, strata = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2])  # the only negative is alone in its stratum
    loss = within_stratum_ranking(logits, labels, strata)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum().item() == 0.0


def test_a_hard_negative_ranked_above_its_positive_costs_more_the_more_it_weighs():
    logits = torch.tensor([1.0, 2.0, -2.0])  # the positive; a negative above it ("Not Normal"); one below it
    labels, strata = torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0])
    losses = [within_stratum_ranking(logits, labels, strata, torch.tensor([1.0, h, 1.0])).item() for h in (0, 1, 3)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[0] == pytest.approx(F.softplus(torch.tensor(-3.0)).item())  # weight 0: the hard pair left out

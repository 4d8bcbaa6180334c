import math

import pytest
import torch

from pneumocam.training import DRO_STEP, GroupWeights, group_ids


def test_groups_are_attribute_values_times_the_label_with_unknown_named():
    ids, names = group_ids([("AP",), ("PA",), ("",), ("AP",), ("PA",)], [1, 0, 1, 0, 0])
    assert names == ["unknown/1", "AP/0", "AP/1", "PA/0"]
    assert ids.tolist() == [2, 3, 0, 1, 3]


def test_the_objective_is_the_weighted_mean_of_the_groups_mean_losses():
    weights = GroupWeights(3).eval()  # eval: no update, so q stays uniform
    losses = torch.tensor([1.0, 3.0, 10.0, 4.0])
    groups = torch.tensor([0, 0, 1, 2])
    assert weights(losses, groups).item() == pytest.approx((2.0 + 10.0 + 4.0) / 3)
    assert weights.q.tolist() == pytest.approx([1 / 3] * 3)


def test_the_worst_served_group_gains_weight_and_an_absent_one_is_not_raised():
    weights = GroupWeights(3).train()
    losses, groups = torch.tensor([0.1, 2.0]), torch.tensor([0, 1])  # group 2 is not in the batch
    weights(losses, groups)
    raw = torch.tensor([math.exp(DRO_STEP * 0.1), math.exp(DRO_STEP * 2.0), 1.0])
    assert weights.q.tolist() == pytest.approx((raw / raw.sum()).tolist())
    for _ in range(2000):
        weights(losses, groups)
    q = weights.q.tolist()
    assert q[1] > 0.99 and q[1] > q[0] > q[2]  # the highest loss gains most; an absent group's factor is exp(0)


def test_the_gradient_reaches_each_image_through_its_group_weight():
    weights = GroupWeights(2).eval()
    losses = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    weights(losses, torch.tensor([0, 0, 1])).backward()
    assert losses.grad.tolist() == pytest.approx([0.25, 0.25, 0.5])  # q = 1/2 each, split over the group's images


def test_no_groups_is_refused():
    with pytest.raises(ValueError, match="at least one group"):
        GroupWeights(0)

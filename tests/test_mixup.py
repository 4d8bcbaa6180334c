import math

import pytest
import torch

from pneumocam.training import Batch, mix_batch


def _batch(groups=None) -> Batch:
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, 0, 0] = 1.0  # film 0 has a box in the top-left pixel, film 2 in the bottom-right one
    masks[2, 0, 3, 3] = 1.0
    return Batch(images=images, labels=torch.tensor([1, 0, 1]), masks=[masks],
                 findings=torch.tensor([0.0, 1.0, float("nan")]), groups=groups,
                 targets=torch.tensor([1.0, 0.0, 0.8]))


def test_images_targets_and_findings_blend_with_the_partner_film():
    partner = torch.tensor([1, 2, 0])
    mixed = mix_batch(_batch(), 0.75, partner)
    assert mixed.images[:, 0, 0, 0].tolist() == pytest.approx([0.25, 1.25, 1.5])  # 0.75 own + 0.25 partner's
    assert mixed.targets.tolist() == pytest.approx([0.75, 0.2, 0.85])
    assert mixed.findings[0].item() == pytest.approx(0.25)
    assert math.isnan(mixed.findings[1]) and math.isnan(mixed.findings[2])  # film 2's finding is unknown: so are
    # the findings of both blends it is in
    assert mixed.labels.tolist() == [1, 0, 1]  # the larger share's film names the label that accuracy counts


def test_a_blend_keeps_both_films_boxes_and_the_smaller_share_names_no_label():
    partner = torch.tensor([2, 0, 1])
    mixed = mix_batch(_batch(), 0.3, partner)
    mask = mixed.masks[0]
    assert mask[0, 0, 0, 0] == 1 and mask[0, 0, 3, 3] == 1  # film 0 blended with film 2: both boxes
    assert mask[1, 0, 0, 0] == 1 and mask[1].sum() == 1  # film 1 (no box) blended with film 0: film 0's box
    assert mixed.labels.tolist() == [1, 1, 0]  # the partner has the larger share (0.7)


def test_a_share_of_one_leaves_the_batch_as_it_was():
    batch = _batch()
    mixed = mix_batch(batch, 1.0, torch.tensor([2, 0, 1]))
    assert torch.equal(mixed.images, batch.images) and torch.equal(mixed.targets, batch.targets)
    assert torch.equal(mixed.labels, batch.labels)


def test_group_indices_and_ranking_strata_cannot_be_blended():
    with pytest.raises(ValueError, match="group DRO"):
        mix_batch(_batch(groups=torch.tensor([0, 1, 0])), 0.5, torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="ranking within strata"):
        mix_batch(_batch()._replace(strata=torch.tensor([0, 1, 0])), 0.5, torch.tensor([1, 2, 0]))

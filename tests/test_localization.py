import numpy as np
import pytest

from pneumocam.data import box_mask
from pneumocam.explain import (
    centre_prior,
    distance_to_boxes,
    energy_in_boxes,
    iobb,
    iou,
    pointing_hit,
    rank_correlation,
    score_maps,
)


def test_pointing_iou_iobb_energy_exact():
    mask = box_mask([(0, 0, 2, 2)], (4, 4))  # top-left 2x2
    saliency = np.zeros((4, 4))
    saliency[0, 1], saliency[0, 2] = 1.0, 0.6
    assert pointing_hit(saliency, mask)
    region = saliency >= 0.5  # pixels (0,1) and (0,2)
    assert iou(region, mask) == pytest.approx(1 / 5)  # intersection 1, union 4 + 1
    assert iobb(region, mask) == pytest.approx(1 / 2)  # detected box = row 0, cols 1-2
    assert energy_in_boxes(saliency, mask) == pytest.approx(1 / 1.6)
    saliency[3, 3] = 2.0
    assert not pointing_hit(saliency, mask)


def test_empty_region_and_empty_map_score_zero():
    mask = box_mask([(0, 0, 1, 1)], (3, 3))
    assert iobb(np.zeros((3, 3), bool), mask) == 0.0
    assert energy_in_boxes(np.zeros((3, 3)), mask) == 0.0


def test_score_maps_aggregates_per_image():
    boxes = [[(0, 0, 2, 2)], [(2, 2, 2, 2)]]
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0  # hit
    maps[1, 0, 0] = 1.0  # miss
    result = score_maps(maps, boxes)
    assert result["n_images"] == 2 and result["pointing_game"] == 0.5
    assert result["iou"]["0.5"] == pytest.approx((1 / 4 + 0) / 2)
    assert result["hit_rate_iobb"]["0.5"] == 0.5
    # image 1's peak at pixel (0, 0), centre (0.5, 0.5); its box starts at (2, 2): sqrt(1.5^2 + 1.5^2)
    assert result["peak_distance_px"]["median"] == pytest.approx(np.hypot(1.5, 1.5) / 2)
    with pytest.raises(ValueError, match="box lists"):
        score_maps(maps, boxes[:1])


def test_distance_to_boxes_is_zero_inside_and_euclidean_outside():
    boxes = [(10, 10, 5, 5), (40, 0, 10, 10)]
    assert distance_to_boxes(12, 12, boxes) == 0.0  # pixel centre (12.5, 12.5) is inside the first
    assert distance_to_boxes(12, 20, boxes) == pytest.approx(5.5)  # x 20.5 is 5.5 right of x = 15
    assert distance_to_boxes(20, 20, boxes) == pytest.approx(np.hypot(5.5, 5.5))
    assert distance_to_boxes(5, 36, boxes) == pytest.approx(3.5)  # nearer the second box


def test_centre_prior_peaks_in_the_middle_and_rank_correlation():
    prior = centre_prior((8, 8))
    assert prior.max() == prior[3:5, 3:5].max() and prior.min() == prior[0, 0]
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # ties get their average rank: [0, 0, 1] against [0, 1, 1] is 0.5 (Spearman), whatever the order of ties
    assert rank_correlation(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert rank_correlation(np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0])) == pytest.approx(0.5)


def test_otsu_splits_a_bimodal_map_and_pixel_auprc_ranks_box_pixels():
    from pneumocam.explain import chexlocalize_iou, otsu_threshold, pixel_auprc

    rng = np.random.default_rng(0)
    saliency = np.where(np.arange(100)[None, :] < 40, 0.2, 0.8) + rng.normal(0, 0.02, (100, 100))
    assert 0.3 < otsu_threshold(saliency) < 0.7
    mask = np.zeros((100, 100), bool)
    mask[:, 40:] = True
    assert pixel_auprc(saliency, mask) == pytest.approx(1.0)
    assert pixel_auprc(rng.random((100, 100)), mask) == pytest.approx(0.6, abs=0.03)  # chance: the box share
    assert chexlocalize_iou(saliency, mask, probability=0.9, cutoff=0.5) == pytest.approx(1.0)
    assert chexlocalize_iou(saliency, mask, probability=0.1, cutoff=0.5) == 0.0  # the model says no: empty

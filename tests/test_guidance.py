import pytest
import torch

from pneumocam.data import cell_coverage
from pneumocam.training import box_guidance_loss


def _mask(x0, y0, x1, y1, size=224):
    mask = torch.zeros(1, 1, size, size)
    mask[..., y0:y1, x0:x1] = 1
    return mask


def _cam_peaked_at(row, col, height=8.0):
    cam = torch.zeros(1, 7, 7)
    cam[0, row, col] = height
    return cam


def test_loss_is_small_when_the_map_points_into_the_box_and_large_elsewhere():
    coverage = cell_coverage(_mask(80, 80, 112, 112), (7, 7))
    inside = box_guidance_loss(_cam_peaked_at(3, 3), coverage)
    outside = box_guidance_loss(_cam_peaked_at(0, 6), coverage)
    # softmax share in the box: e^8 / (e^8 + 48) inside, 1 / (e^8 + 48) outside
    share = torch.exp(torch.tensor(8.0)) / (torch.exp(torch.tensor(8.0)) + 48)
    assert inside.item() == pytest.approx(-torch.log(share).item(), rel=1e-5)
    assert outside.item() == pytest.approx(torch.log(torch.exp(torch.tensor(8.0)) + 48).item(), rel=1e-5)


def test_loss_ignores_a_constant_shift_of_the_map_so_it_leaves_the_logit_to_the_classifier():
    coverage = cell_coverage(_mask(40, 60, 130, 200), (7, 7))
    cam = torch.randn(1, 7, 7, generator=torch.Generator().manual_seed(0))
    assert box_guidance_loss(cam + 5.0, coverage).item() == pytest.approx(box_guidance_loss(cam, coverage).item(),
                                                                           rel=1e-5)


def test_images_without_boxes_add_nothing_and_a_batch_without_any_gives_zero():
    coverage = torch.cat([cell_coverage(_mask(80, 80, 112, 112), (7, 7)), torch.zeros(1, 7, 7)])
    cams = torch.cat([_cam_peaked_at(0, 6), torch.randn(1, 7, 7)])
    alone = box_guidance_loss(cams[:1], coverage[:1])
    assert box_guidance_loss(cams, coverage).item() == pytest.approx(alone.item(), rel=1e-6)
    cams.requires_grad_(True)
    none = box_guidance_loss(cams, torch.zeros(2, 7, 7))
    none.backward()
    assert none.item() == 0.0 and torch.equal(cams.grad, torch.zeros_like(cams))


def test_a_gradient_step_moves_the_map_into_the_box():
    coverage = cell_coverage(_mask(140, 40, 200, 120), (7, 7))
    cam = torch.randn(2, 7, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    coverage = coverage.expand(2, 7, 7)
    before = box_guidance_loss(cam, coverage)
    before.backward()
    with torch.no_grad():
        after = box_guidance_loss(cam - 1.0 * cam.grad, coverage)
    assert after < before

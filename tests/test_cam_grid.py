"""The CAM's NumPy arithmetic against torch's own resizers, and the logit identity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pneumocam.explain import cam_cells, resize_matrix, upsample_and_normalize_cells, upsample_cells
from pneumocam.model import PneumoniaNet


@pytest.mark.parametrize("size", [(224, 224), (100, 37), (7, 7)])
def test_block_centre_is_bilinear_interpolate_without_corner_alignment(size):
    maps = torch.randn(3, 7, 7, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    assert np.abs(upsample_cells(maps.numpy(), size, "block-centre") - expected.numpy()).max() < 1e-5


@pytest.mark.parametrize("size", [(224, 224), (64, 96)])
def test_receptive_field_puts_cell_p_at_pixel_p_stride_and_keeps_the_edge(size):
    """grid_sample at map coordinate i * h / H with border padding: the definition, computed another way."""
    maps = torch.randn(2, 7, 7, generator=torch.Generator().manual_seed(1))
    ys, xs = (2 * torch.arange(n) * (7 / n) / 6 - 1 for n in size)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].expand(2, -1, -1, -1).float()
    expected = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    got = upsample_cells(maps.numpy(), size, "receptive-field")
    assert np.abs(got - expected.numpy()).max() < 1e-5
    if size == (224, 224):  # cell (3, 2) sits at pixel (96, 64), the last one's value holds to the edge
        assert got[0, 96, 64] == pytest.approx(float(maps[0, 3, 2]), abs=1e-5)
        assert got[0, 223, 223] == pytest.approx(float(maps[0, 6, 6]), abs=1e-5)


def test_resize_rows_sum_to_one_and_unknown_alignments_are_refused():
    for alignment in ("receptive-field", "block-centre"):
        assert np.allclose(resize_matrix(7, 224, alignment).sum(axis=1), 1)
    with pytest.raises(ValueError, match="unknown alignment 'centre'"):
        resize_matrix(7, 224, "centre")


def test_cells_mean_plus_bias_is_the_logit_and_normalised_maps_span_zero_to_one():
    net = PneumoniaNet().eval()
    with torch.no_grad():
        logits, features = net(torch.randn(2, 1, 224, 224, generator=torch.Generator().manual_seed(2)))
    cells = cam_cells(features.numpy(), net.fc.weight.detach().numpy())
    assert np.allclose(cells.mean(axis=(1, 2)) + float(net.fc.bias), logits[:, 0].numpy(), atol=1e-5)
    maps = upsample_and_normalize_cells(cells)
    assert maps.shape == (2, 224, 224) and maps.min() >= 0 and maps.max() == pytest.approx(1, abs=1e-6)
    assert not upsample_and_normalize_cells(np.ones((1, 7, 7))).any()  # constant: zeros, no NaN

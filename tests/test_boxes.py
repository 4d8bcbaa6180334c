import numpy as np
import pytest
import torch

from pneumocam.data import box_mask, box_masks, cell_coverage, load_boxes, split_boxes, square_geometry


def _mask(x0, y0, x1, y1, size=224):
    mask = torch.zeros(1, 1, size, size)
    mask[..., y0:y1, x0:x1] = 1
    return mask


def test_box_mask_uses_pixel_centres():
    mask = box_mask([(1, 1, 2, 2)], (5, 5))
    expected = np.zeros((5, 5), bool)
    expected[1:3, 1:3] = True
    assert np.array_equal(mask, expected)
    assert box_mask([(0, 0, 1, 1), (3, 3, 1, 2)], (5, 5)).sum() == 3
    assert box_mask([], (5, 5)).shape == (5, 5) and not box_mask([], (5, 5)).any()
    assert box_mask(np.zeros((3, 0, 4)), (5, 5)).shape == (3, 5, 5)  # a stack of rows without boxes


def test_box_masks_follow_the_scoring_rule_per_row_and_ignore_padding():
    import torch

    from pneumocam.data import box_mask

    boxes = torch.tensor([[[1.0, 2.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]],  # columns 1-2 of row 2; padding
                          [[0.5, 0.5, 3.0, 3.0], [3.0, 3.0, 1.0, 2.0]]])
    masks = box_masks(boxes, 5)
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 2, 1:3] = True
    assert masks.shape == (2, 1, 5, 5) and torch.equal(masks[0], expected)
    assert torch.equal(masks[1, 0], torch.from_numpy(box_mask([(0.5, 0.5, 3, 3), (3, 3, 1, 2)], (5, 5))))


def test_split_boxes_lines_up_with_the_samples(phantom_data):
    import torch

    from pneumocam.data import dataset_files, split_dataset

    dataset = split_dataset(phantom_data, "train")
    boxes = load_boxes(phantom_data)
    table = split_boxes(dataset_files(dataset, phantom_data), boxes)
    for key, row in zip(dataset_files(dataset, phantom_data), table, strict=True):
        expected = boxes.get(key, [])
        assert torch.allclose(row[: len(expected)], torch.tensor(expected).reshape(-1, 4))
        assert not row[len(expected):].any()
    assert sum(key in boxes for key in dataset_files(dataset, phantom_data)) > 0


def test_cell_coverage_follows_the_cam_alignment():
    """The box loss must see each cell where the network's layers centre it (traced from the real network)."""
    from conftest import receptive_field_centres
    from pneumocam.model import PneumoniaNet

    centre = int(receptive_field_centres(PneumoniaNet("none"))[3])
    mask = _mask(centre - 16, centre - 16, centre + 16, centre + 16)  # the 32x32 square centred on cell 3
    receptive = cell_coverage(mask, (7, 7), "receptive-field")[0]
    expected = torch.zeros(7, 7)
    expected[3, 3] = 1.0  # cell 3 spans pixels [80, 112) when centred on 32 * 3
    assert torch.equal(receptive, expected)
    block = cell_coverage(mask, (7, 7), "block-centre")[0]  # cell p spans [32 p, 32 p + 32)
    expected = torch.zeros(7, 7)
    expected[2:4, 2:4] = 0.25
    assert torch.equal(block, expected)


def test_cell_coverage_rejects_unknown_alignment_and_uneven_cells():
    with pytest.raises(ValueError, match="alignment"):
        cell_coverage(_mask(0, 0, 10, 10), (7, 7), "centre")
    with pytest.raises(ValueError, match="square cells"):
        cell_coverage(_mask(0, 0, 10, 10), (5, 5))


@pytest.mark.parametrize("mode, expected", [("pad", (1.12, 19.6)), ("stretch", (1.12, 11.2))])
def test_a_box_follows_its_image_into_the_square_output(mode, expected):
    # a wide 100x50 image into a 56x56 square: padded, it sits 25 px down in a 100x100 square first
    x, y, width, height = square_geometry(50, 100, 56, mode).box_to_output(2, 10, 4, 4)
    assert (x, y) == pytest.approx(expected)
    assert width == pytest.approx(4 * 0.56)

import json

import numpy as np
import pytest

from pneumocam.data import RSNA_MEAN, RSNA_STD, load_file, read_normalization
from pneumocam.errors import PneumocamError


def test_normalization_uses_stats_json_when_present_else_the_rsna_constants(tmp_path):
    bare = read_normalization(tmp_path)  # a hand-made folder without stats.json
    assert (bare.mean, bare.std, bare.origin) == (RSNA_MEAN, RSNA_STD, "rsna-constants")
    with pytest.raises(PneumocamError, match="stats.json"):
        read_normalization(tmp_path, use_data_stats=True)
    (tmp_path / "stats.json").write_text(json.dumps({"mean": 0.4, "std": 0.2}))
    own = read_normalization(tmp_path)
    assert (own.mean, own.std) == (0.4, 0.2) and own.origin.endswith("stats.json")
    assert read_normalization(tmp_path, use_data_stats=True) == own
    assert read_normalization(tmp_path, use_data_stats=False).mean == RSNA_MEAN


def test_load_file_returns_the_saved_array(tmp_path):
    array = np.random.default_rng(0).random((224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", array)
    assert np.array_equal(load_file(tmp_path / "x.npy"), array)


def test_box_masks_follow_the_scoring_rule_per_row_and_ignore_padding():
    import torch

    from pneumocam.data import box_masks
    from pneumocam.localization import box_mask

    boxes = torch.tensor([[[1.0, 2.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]],  # columns 1-2 of row 2; padding
                          [[0.5, 0.5, 3.0, 3.0], [3.0, 3.0, 1.0, 2.0]]])
    masks = box_masks(boxes, 5)
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 2, 1:3] = True
    assert masks.shape == (2, 1, 5, 5) and torch.equal(masks[0], expected)
    assert torch.equal(masks[1, 0], torch.from_numpy(box_mask([(0.5, 0.5, 3, 3), (3, 3, 1, 2)], (5, 5))))


def test_split_boxes_lines_up_with_the_samples(phantom_data):
    import torch

    from pneumocam.data import dataset_files, load_boxes, split_boxes, split_dataset

    dataset = split_dataset(phantom_data, "train")
    table = split_boxes(dataset, phantom_data)
    boxes = load_boxes(phantom_data)
    for key, row in zip(dataset_files(dataset, phantom_data), table, strict=True):
        expected = boxes.get(key, [])
        assert torch.allclose(row[: len(expected)], torch.tensor(expected).reshape(-1, 4))
        assert not row[len(expected):].any()
    assert sum(key in boxes for key in dataset_files(dataset, phantom_data)) > 0


def test_boxed_split_moves_the_mask_with_the_image(tmp_path):
    import torch
    from torchvision.datasets import DatasetFolder

    from pneumocam.data import BoxedSplit, Normalization, box_masks, load_file

    boxes = torch.tensor([[[60.0, 40.0, 50.0, 90.0]]])
    (tmp_path / "1").mkdir()
    np.save(tmp_path / "1" / "a.npy", box_masks(boxes)[0, 0].numpy())  # the image is its own box mask
    dataset = DatasetFolder(str(tmp_path), loader=load_file, extensions=(".npy",))
    dataset.target_transform = int
    norm = Normalization(0.5, 0.25)
    torch.manual_seed(0)
    for augment in ("shift", "original"):
        image, label, mask = BoxedSplit(dataset, boxes, norm, augment)[0]
        assert torch.allclose(image * norm.std + norm.mean, mask, atol=1e-6)
        assert not torch.equal(mask, box_masks(boxes)[0].float())  # it did move
    image, _, mask = BoxedSplit(dataset, boxes, norm, "none")[0]
    assert torch.equal(mask, box_masks(boxes)[0].float()) and label == 0

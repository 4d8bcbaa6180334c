import json

import numpy as np
import pytest

from pneumocam.config import RSNA_MEAN, RSNA_STD
from pneumocam.errors import PneumocamError
from pneumocam.preprocess import load_file, read_normalization


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


def test_boxed_split_moves_the_mask_with_the_image(tmp_path):
    import torch
    from torchvision.datasets import DatasetFolder

    from pneumocam.boxes import box_masks
    from pneumocam.data import BoxedSplit
    from pneumocam.preprocess import Normalization, load_file

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

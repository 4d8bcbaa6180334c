import json

import numpy as np
import pytest

from pneumocam.config import RSNA_MEAN, RSNA_STD
from pneumocam.data import load_file, read_normalization
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


def test_a_hand_made_folder_takes_its_size_from_its_images_and_refuses_a_mixed_one(tmp_path):
    from pneumocam.data import data_contract, load_split_in_memory

    for label, name, side in ((0, "a", 96), (1, "b", 96), (1, "c", 128)):
        (tmp_path / "Processed" / "train" / str(label)).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "Processed" / "train" / str(label) / f"{name}.npy", np.zeros((side, side), np.float32))
    assert data_contract(tmp_path).image_size == 96  # no stats.json: the first image's side
    with pytest.raises(PneumocamError, match=r"c\.npy: a 128x128 image in a data set of 96x96 images"):
        load_split_in_memory(tmp_path, "train")
    (tmp_path / "Processed" / "train" / "1" / "c.npy").unlink()
    assert tuple(load_split_in_memory(tmp_path, "train").images.shape) == (2, 1, 96, 96)


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
    # intensity jitter changes the image, not its box: the film's inside is one grey value, its box another
    image, _, mask = BoxedSplit(dataset, boxes, norm, "shift-intensity")[0]
    image = image * norm.std + norm.mean
    assert not torch.allclose(image, mask, atol=1e-3) and not torch.equal(mask, box_masks(boxes)[0].float())
    assert image[mask == 1].unique().numel() == 1


def test_balance_by_groups_gives_every_group_the_same_weighted_prevalence():
    import numpy as np

    from pneumocam.data import sample_weights, single_class_groups

    # AP films: 40 of 100 pneumonia; PA films: 5 of 100; unknown view: 10 of 20 (RSNA's shortcut, exaggerated)
    labels = np.array([1] * 40 + [0] * 60 + [1] * 5 + [0] * 95 + [1] * 10 + [0] * 10)
    groups = [("AP",)] * 100 + [("PA",)] * 100 + [("",)] * 20
    weights = sample_weights(labels, groups, balance_classes=False).numpy()
    overall = labels.mean()
    for g in set(groups):
        inside = np.array([x == g for x in groups])
        assert np.average(labels[inside], weights=weights[inside]) == pytest.approx(overall)
        assert weights[inside].sum() == pytest.approx(inside.sum())  # each group keeps its size
    balanced = sample_weights(labels, groups, balance_classes=True).numpy()
    for g in set(groups):
        inside = np.array([x == g for x in groups])
        assert np.average(labels[inside], weights=balanced[inside]) == pytest.approx(0.5)
    # unbalanced, the groups' prevalences differ: the test above is not true of equal weights
    assert labels[:100].mean() != pytest.approx(labels[100:200].mean())
    assert single_class_groups(np.array([1, 1, 0, 1]), [("a",), ("a",), ("b",), ("b",)]) == [("a",)]


def test_source_shares_set_each_sources_weight_and_balance_within_it():
    import numpy as np

    from pneumocam.data import parse_shares, sample_weights

    # 300 children (75% pneumonia, view unknown) and 100 adults (AP 40% / PA 10%)
    labels = np.array([1] * 225 + [0] * 75 + [1] * 20 + [0] * 30 + [1] * 5 + [0] * 45)
    sources = ["kermany224"] * 300 + ["rsna_1000"] * 100
    groups = [("",)] * 300 + [("AP",)] * 50 + [("PA",)] * 50
    shares = parse_shares("kermany224=1,rsna_1000=3")
    weights = sample_weights(labels, groups, False, sources, shares).numpy()
    adults = np.array(sources) == "rsna_1000"
    assert weights[adults].sum() / weights.sum() == pytest.approx(0.75)
    for view in ("AP", "PA"):  # within the adults, both views at the adults' prevalence
        inside = np.array([g == (view,) for g in groups])
        assert np.average(labels[inside], weights=weights[inside]) == pytest.approx(labels[adults].mean())
    with pytest.raises(PneumocamError, match="no share for source"):
        sample_weights(labels, None, False, sources, {"kermany224": 1.0})
    with pytest.raises(PneumocamError, match="positive share"):
        parse_shares("kermany224=0")


def test_soft_targets_match_training_files_by_name_and_refuse_what_they_cannot_use(tmp_path):
    import math

    from pneumocam.data import soft_targets

    teacher = tmp_path / "predictions.csv"
    teacher.write_text("source,probability,logit\n/elsewhere/Processed/train/0/a.npy,0.8,1.4\nz.npy,0.1,-2.2\n")
    files = ["Processed/train/0/a.npy", "Processed/train/1/c.npy"]
    soft = soft_targets(teacher, files, 0.5).tolist()
    assert soft[0] == pytest.approx(0.8) and math.isnan(soft[1])  # c.npy is not named: it keeps its label
    with pytest.raises(PneumocamError, match="names none of the 1 training images"):
        soft_targets(teacher, ["Processed/train/1/c.npy"], 0.5)
    teacher.write_text("source,probability\na.npy,1.5\n")
    with pytest.raises(PneumocamError, match=r"line 2: probability '1.5' is not in \[0, 1\]"):
        soft_targets(teacher, files, 0.5)
    teacher.write_text("source,score\na.npy,0.5\n")
    with pytest.raises(PneumocamError, match="line 2 needs a source"):
        soft_targets(teacher, files, 0.5)

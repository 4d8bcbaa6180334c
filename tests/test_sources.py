import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, require
from pneumocam.data import detect_format, discover_class_folders, discover_medmnist, parse_class_map, patient_from_name
from pneumocam.errors import PneumocamError


@pytest.mark.parametrize(
    ("stem", "patient"),
    [
        ("person1946_bacteria_4874", "person1946"),
        ("person1946_bacteria_4875", "person1946"),
        ("person20_virus_51", "person20"),
        ("NORMAL2-IM-1427-0001", "NORMAL2-IM-1427"),
        ("IM-0115-0001", "IM-0115"),
        ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "0004cfab-14fd-4e49-80ba-63a80b6bddd6"),
    ],
)
def test_patient_ids_from_kermany_names(stem, patient):
    assert patient_from_name(stem) == patient


def test_real_kermany_val_folder():
    root = require(SHARED_DATA / "kermany_sample")
    assert detect_format(root) == "folders"
    items, rejected = discover_class_folders(root)
    assert rejected == [] and len(items) == 16
    assert sum(it.label for it in items) == 8
    assert {it.split for it in items} == {"val"}  # the source's own split is kept
    assert {it.patient for it in items if it.label == 1} >= {"person1946", "person1947"}
    assert sum(1 for it in items if it.patient == "person1946") == 2  # one patient, two images


def test_real_medmnist_npz_counts_and_labels():
    path = require(SHARED_DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz")
    assert detect_format(path) == "medmnist"
    items, rejected = discover_medmnist(path)
    assert rejected == []
    train = [it for it in items if it.split == "train"]
    val = [it for it in items if it.split == "val"]
    assert (len(train), sum(it.label for it in train)) == (4708, 3494)
    assert (len(val), sum(it.label for it in val)) == (524, 389)
    with np.load(path) as archive:
        assert np.allclose(train[7].array, archive["train_images"][7] / 255.0)
    assert train[0].array.shape == (28, 28) and train[0].source_label.endswith(":train[0]")


def test_class_folders_without_val_are_split_later_and_unknown_classes_rejected(tmp_path):
    for cls in ("NORMAL", "PNEUMONIA", "OTHER"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train" / cls / f"person1_{cls}.png")
    (tmp_path / "train" / "NORMAL" / "notes.txt").write_text("x")
    items, rejected = discover_class_folders(tmp_path)
    assert [it.split for it in items] == [None, None]
    reasons = sorted(r["reason"] for r in rejected)
    assert "not in the class map" in reasons[0] and "unsupported file type" in reasons[1]
    items, rejected = discover_class_folders(tmp_path, parse_class_map("normal=0,pneumonia=1,other=1"))
    assert len(items) == 3


def test_class_map_parsing():
    assert parse_class_map("NORMAL=0, Viral=1") == {"normal": 0, "viral": 1}
    with pytest.raises(PneumocamError, match="NAME=0"):
        parse_class_map("NORMAL=2")

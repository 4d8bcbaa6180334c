import csv
import json
import shutil

import numpy as np
import pytest

from conftest import RSNA_SAMPLE, require
from pneumocam.errors import PneumocamError
from pneumocam.prepare import PrepareConfig, assign_splits, load_boxes, prepare
from pneumocam.sources import SourceItem


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_real_rsna_sample(tmp_path):
    source = require(RSNA_SAMPLE)
    report = prepare(source, tmp_path, PrepareConfig(val_fraction=0.2, seed=0, workers=2))
    arrays = sorted((tmp_path / "Processed").rglob("*.npy"))
    assert len(arrays) == 17 and report.n_rejected == 0
    for path in arrays:
        image = np.load(path)
        assert image.shape == (224, 224) and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1
    manifest = _rows(tmp_path / "manifest.csv")
    assert sum(int(r["label"]) for r in manifest) == 5
    boxes = _rows(tmp_path / "boxes.csv")
    assert len(boxes) == 10
    # 00436515-...: first box (264, 152, 213, 379) in the 1024-px image -> x 224/1024
    box = next(b for b in boxes if b["patient"].startswith("00436515") and float(b["x"]) < 100)
    assert [float(box[k]) for k in ("x", "y", "width", "height")] == pytest.approx(
        [264 * 0.21875, 152 * 0.21875, 213 * 0.21875, 379 * 0.21875], abs=1e-3)
    stats = json.loads((tmp_path / "stats.json").read_text())
    counts = stats["counts"]
    assert sum(counts[s][lab] for s in ("train", "val") for lab in ("0", "1")) == 17
    assert counts["val"]["1"] >= 1 and counts["val"]["0"] >= 1
    assert 0.3 < stats["mean"] < 0.6 and 0.1 < stats["std"] < 0.4
    assert len(stats["fingerprint"]) == 64


def test_resume_skips_finished_files_and_gives_identical_outputs(phantom_source, tmp_path):
    config = PrepareConfig(val_fraction=0.25, seed=0, workers=1)
    full = prepare(phantom_source, tmp_path / "full", config)
    partial = tmp_path / "partial"
    prepare(phantom_source, partial, config)
    removed = sorted((partial / "Processed").rglob("*.npy"))[::3]
    for path in removed:  # as if the run had been killed before these were written
        path.unlink()
    (partial / "manifest.csv").unlink()
    resumed = prepare(phantom_source, partial, config)
    assert resumed.n_written == len(removed) and resumed.n_resumed == 24 - len(removed)
    assert resumed.fingerprint == full.fingerprint
    for name in ("manifest.csv", "boxes.csv"):
        full_text = (tmp_path / "full" / name).read_text()
        assert full_text.replace(str(tmp_path / "full"), "") == (partial / name).read_text().replace(str(partial), "")


def test_changed_settings_are_refused(phantom_source, tmp_path):
    prepare(phantom_source, tmp_path, PrepareConfig(seed=0, workers=1))
    with pytest.raises(PneumocamError, match="different settings"):
        prepare(phantom_source, tmp_path, PrepareConfig(seed=1, workers=1))


def test_bad_and_unlabelled_files_are_rejected_not_fatal(phantom_source, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(phantom_source, source)
    images = source / "stage_2_train_images"
    (images / "broken.dcm").write_bytes(b"\0" * 300)
    labels = source / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text() + "broken,,,,,0\n")
    (images / "stray.dcm").write_bytes((images / next(images.glob("*.dcm")).name).read_bytes())
    report = prepare(source, tmp_path / "out", PrepareConfig(workers=1))
    rejected = _rows(tmp_path / "out" / "rejected.csv")
    reasons = {r["source"].split("/")[-1]: r["reason"] for r in rejected}
    assert set(reasons) == {"broken.dcm", "stray.dcm"}
    assert "not a readable DICOM" in reasons["broken.dcm"]
    assert "no row for stray" in reasons["stray.dcm"]
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    assert len(manifest) + len(rejected) == len(list(images.glob("*.dcm")))
    assert report.n_rejected == 2


def test_split_is_stratified_grouped_and_seeded():
    items = [SourceItem(f"p{i}.dcm", f"p{i // 2}", int(i % 4 == 0), f"s{i}") for i in range(40)]
    a = assign_splits(items, 0.25, seed=3)
    assert a == assign_splits(items, 0.25, seed=3) and a != assign_splits(items, 0.25, seed=4)
    patients_val = [p for p, s in a.items() if s == "val"]
    # 20 patients, 10 positive and 10 negative: 0.25 of each class is 2.5, rounded half up to 3
    assert len(patients_val) == 6
    positive_patients = {it.patient for it in items if it.label == 1}
    assert len(positive_patients & set(patients_val)) == 3


def test_missing_source_and_unknown_layout(tmp_path):
    with pytest.raises(PneumocamError, match="not found"):
        prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PneumocamError, match="unrecognised source layout"):
        prepare(tmp_path / "empty", tmp_path / "out")


def test_load_boxes(phantom_data):
    boxes = load_boxes(phantom_data)
    assert boxes and all(f.startswith("Processed/") and "/1/" in f for f in boxes)

import csv
import json
import shutil

import numpy as np
import pytest
import xxhash

from conftest import RSNA_SAMPLE, bomb_png, dead_pid, require
from conftest import SHARED_DATA as SHARED_DATA_DIR
from pneumocam.commands.prepare import assign_splits, prepare
from pneumocam.config import PrepareConfig
from pneumocam.data import SourceItem, load_boxes
from pneumocam.errors import PneumocamError


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
    for row in manifest:  # each row's content hash is the hash of the pixels as saved
        saved = np.load(tmp_path / row["file"])
        assert row["xxh3_128"] == xxhash.xxh3_128_hexdigest(saved.tobytes())
    boxes = _rows(tmp_path / "boxes.csv")
    assert len(boxes) == 10
    # 00436515-...: first box (264, 152, 213, 379) in the 1024-px image -> x 224/1024
    box = next(b for b in boxes if b["patient"].startswith("00436515") and float(b["x"]) < 100)
    assert [float(box[k]) for k in ("x", "y", "width", "height")] == pytest.approx(
        [264 * 0.21875, 152 * 0.21875, 213 * 0.21875, 379 * 0.21875], abs=1e-3)
    import pydicom

    for row in manifest:  # sex, age and view come from each DICOM's own header
        ds = pydicom.dcmread(row["source"], stop_before_pixels=True)
        assert (row["sex"], row["age"], row["view"]) == (ds.PatientSex, str(int(ds.PatientAge)), ds.ViewPosition)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["metadata"]["known"] == {"sex": 17, "age": 17, "view": 17, "finding": 17}
    # RSNA's detailed classes (stage_2_detailed_class_info.csv): 4 Normal, 8 Not Normal, 5 Lung Opacity
    from collections import Counter

    assert Counter(r["finding"] for r in manifest) == {"normal": 4, "not-normal": 8, "opacity": 5}
    assert all((r["finding"] == "opacity") == (r["label"] == "1") for r in manifest)
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
    # ... and killed (-9) while writing one: its temporary file stays behind, named after a dead process
    stale = removed[0].parent / f".{removed[0].name}.{dead_pid()}.{'0' * 32}.tmp"
    stale.write_bytes(b"half an array")
    resumed = prepare(phantom_source, partial, config)
    assert not stale.exists()
    assert resumed.n_written == len(removed) and resumed.n_resumed == 24 - len(removed)
    assert resumed.fingerprint == full.fingerprint
    for name in ("manifest.csv", "boxes.csv"):
        full_text = (tmp_path / "full" / name).read_text()
        assert full_text.replace(str(tmp_path / "full"), "") == (partial / name).read_text().replace(str(partial), "")


def test_worker_count_does_not_change_any_output(phantom_source, tmp_path):
    one = prepare(phantom_source, tmp_path / "one", PrepareConfig(val_fraction=0.25, seed=0, workers=1))
    two = prepare(phantom_source, tmp_path / "two", PrepareConfig(val_fraction=0.25, seed=0, workers=2))
    assert one.fingerprint == two.fingerprint and (one.mean, one.std) == (two.mean, two.std)
    for name in ("manifest.csv", "boxes.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    arrays = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*.npy"))
    assert len(arrays) == 24
    assert all((tmp_path / "one" / a).read_bytes() == (tmp_path / "two" / a).read_bytes() for a in arrays)


def test_changed_settings_are_refused(phantom_source, tmp_path):
    prepare(phantom_source, tmp_path, PrepareConfig(seed=0, workers=1))
    with pytest.raises(PneumocamError, match="different settings"):
        prepare(phantom_source, tmp_path, PrepareConfig(seed=1, workers=1))


def test_image_size_sets_the_side_of_every_image_and_the_space_of_the_boxes(phantom_source, phantom_data, tmp_path):
    report = prepare(phantom_source, tmp_path, PrepareConfig(val_fraction=0.25, seed=0, workers=1, image_size=96))
    assert report.n_rejected == 0
    files = sorted((tmp_path / "Processed").rglob("*.npy"))
    assert files and all(np.load(f).shape == (96, 96) for f in files)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["image_size"] == stats["settings"]["image_size"] == 96
    # the same images and splits as at 224 px, the boxes scaled by 96 / 224
    at_224, at_96 = _rows(phantom_data / "boxes.csv"), _rows(tmp_path / "boxes.csv")
    assert len(at_96) == len(at_224) > 0
    for small, large in zip(at_96, at_224, strict=True):
        assert small["file"] == large["file"]
        assert [float(small[k]) for k in ("x", "y", "width", "height")] == pytest.approx(
            [float(large[k]) * 96 / 224 for k in ("x", "y", "width", "height")], abs=0.01)
    with pytest.raises(PneumocamError, match="different settings"):  # a resume at another size is refused
        prepare(phantom_source, tmp_path, PrepareConfig(val_fraction=0.25, seed=0, workers=1))
    for bad in (100, 32):
        with pytest.raises(PneumocamError, match="multiple of 32 and at least 64"):
            prepare(phantom_source, tmp_path / str(bad), PrepareConfig(workers=1, image_size=bad))


def test_bad_and_unlabelled_files_are_rejected_not_fatal(phantom_source, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(phantom_source, source)
    images = source / "stage_2_train_images"
    (images / "broken.dcm").write_bytes(b"\0" * 300)
    labels = source / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text() + "broken,,,,,0\n")
    (images / "stray.dcm").write_bytes((images / next(images.glob("*.dcm")).name).read_bytes())
    (images / "notes.txt").write_text("not an image")
    (images / ".DS_Store").write_bytes(b"\0")  # hidden files and folders are not inputs
    (images / "subfolder").mkdir()
    report = prepare(source, tmp_path / "out", PrepareConfig(workers=1))
    rejected = _rows(tmp_path / "out" / "rejected.csv")
    reasons = {r["source"].split("/")[-1]: r["reason"] for r in rejected}
    assert set(reasons) == {"broken.dcm", "stray.dcm", "notes.txt"}
    assert "not a readable DICOM" in reasons["broken.dcm"]
    assert "no row for stray" in reasons["stray.dcm"]
    assert reasons["notes.txt"].startswith("not an RSNA image")
    assert all(r["source"].startswith(str(images) + "/") for r in rejected)
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    inputs = [p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert len(manifest) + len(rejected) == len(inputs)
    assert report.n_rejected == 3


def test_split_is_stratified_grouped_and_seeded():
    items = [SourceItem(f"p{i}.dcm", f"p{i // 2}", int(i % 4 == 0), f"s{i}") for i in range(40)]
    a = assign_splits(items, 0.25, seed=3)
    assert a == assign_splits(items, 0.25, seed=3) and a != assign_splits(items, 0.25, seed=4)
    patients_val = {it.patient for it, s in zip(items, a, strict=True) if s == "val"}
    assert not patients_val & {it.patient for it, s in zip(items, a, strict=True) if s == "train"}
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


def test_prepare_real_kermany_and_medmnist_subset(tmp_path):
    from conftest import SHARED_DATA

    kermany = require(SHARED_DATA / "kermany_sample")
    report = prepare(kermany, tmp_path / "k", PrepareConfig(workers=1))
    assert report.counts["val"] == {"0": 8, "1": 8} and report.n_rejected == 0
    stats = json.loads((tmp_path / "k" / "stats.json").read_text())
    assert stats["stats_split"] == "all" and stats["source_format"] == "folders"
    image = np.load(next((tmp_path / "k" / "Processed" / "val" / "1").glob("*.npy")))
    assert image.shape == (224, 224) and image[0].max() == 0.0  # wide image: padded rows on top are black

    npz = require(SHARED_DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz")
    with np.load(npz) as archive:
        subset = {k: archive[k][:20] for k in ("train_images", "train_labels", "val_images", "val_labels")}
    np.savez(tmp_path / "mnist.npz", **subset)
    report = prepare(tmp_path / "mnist.npz", tmp_path / "m", PrepareConfig(workers=1))
    assert sum(report.counts["train"].values()) == 20 and sum(report.counts["val"].values()) == 20
    manifest = _rows(tmp_path / "m" / "manifest.csv")
    assert manifest[0]["source"].startswith("mnist.npz:") and manifest[0]["split"] in ("train", "val")
    first = next(r for r in manifest if r["source"] == "mnist.npz:train[0]")
    image = np.load(tmp_path / "m" / first["file"])
    assert image.shape == (224, 224) and int(first["label"]) == int(subset["train_labels"][0, 0])
    assert abs(image.mean() - subset["train_images"][0].mean() / 255) < 0.01


def _bad_input_corpus(folder):
    """Every kind of bad or odd file a real export contains, in one class folder."""
    from PIL import Image

    from pneumocam.data import write_dicom_jpeg

    folder.mkdir(parents=True)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    good = (np.arange(96 * 80) % 251).reshape(96, 80).astype(np.uint8)
    write_dicom_jpeg(folder / "good.dcm", good, "p-good")
    data = (folder / "good.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    import pydicom

    ds = pydicom.dcmread(folder / "good.dcm")
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm")
    Image.fromarray(good).save(folder / "good.jpg")
    (folder / "corrupt.jpg").write_bytes((folder / "good.jpg").read_bytes()[:200])
    Image.fromarray(good.astype(np.uint16) * 257).save(folder / "sixteen.png")
    rgba = np.dstack([good, good, good, np.full_like(good, 255)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    np.save(folder / "nan.npy", np.full((8, 8), np.nan, np.float32))
    np.save(folder / "cube.npy", np.zeros((2, 8, 8), np.float32))
    (folder / "bomb.png").write_bytes(bomb_png())


def test_bad_input_corpus_is_read_or_rejected_with_reasons(tmp_path):
    _bad_input_corpus(tmp_path / "src" / "NORMAL")
    (tmp_path / "src" / "PNEUMONIA").mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 30), 60 * i, np.uint8)).save(tmp_path / "src" / "PNEUMONIA" / f"p{i}.png")
    report = prepare(tmp_path / "src", tmp_path / "out", PrepareConfig(workers=2, val_fraction=0.3))
    rejected = {r["source"].split("/")[-1]: r["reason"] for r in _rows(tmp_path / "out" / "rejected.csv")}
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    accepted = {r["source"].split("/")[-1] for r in manifest}
    assert accepted == {"good.dcm", "good.jpg", "sixteen.png", "rgba.png", "p0.png", "p1.png", "p2.png"}
    assert set(rejected) == {"zero.png", "text.png", "truncated.dcm", "nopixels.dcm", "corrupt.jpg", "nan.npy",
                             "cube.npy", "bomb.png"}
    assert "empty" in rejected["zero.png"] and "no pixel data" in rejected["nopixels.dcm"]
    assert "NaN" in rejected["nan.npy"] and "2-D" in rejected["cube.npy"]
    assert "too large" in rejected["bomb.png"]
    assert len(manifest) + len(rejected) == 15 and report.n_rejected == 8


@pytest.mark.slow
def test_prepare_killed_midway_resumes_to_identical_outputs(tmp_path):
    """kill -9 a real `pneumocam prepare` process part-way, rerun it, compare with an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pneumocam.config import SynthConfig
    from pneumocam.data import synthesize

    source = synthesize(tmp_path / "src", SynthConfig(n_images=120, size=1024, seed=2, workers=2))
    command = [sys.executable, "-m", "pneumocam.cli", "prepare", str(source), "--workers", "1"]
    subprocess.run([*command, str(tmp_path / "full")], check=True, capture_output=True, timeout=600)
    process = subprocess.Popen([*command, str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((tmp_path / "killed").rglob("*.npy"))) < 30:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list((tmp_path / "killed").rglob("*.npy")))
    assert 30 <= written < 120, "the run was not interrupted part-way"
    assert not (tmp_path / "killed" / "manifest.csv").exists()
    result = subprocess.run([*command, str(tmp_path / "killed")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "resumed" in result.stdout
    full_files = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full").rglob("*") if p.is_file())
    killed_files = sorted(p.relative_to(tmp_path / "killed") for p in (tmp_path / "killed").rglob("*") if p.is_file())
    assert full_files == killed_files  # no temporary or half-written file left behind
    for relative in full_files:
        if relative.suffix == ".npy" or relative.name in ("manifest.csv", "boxes.csv", "rejected.csv"):
            assert (tmp_path / "full" / relative).read_bytes() == (tmp_path / "killed" / relative).read_bytes()
    full_stats = json.loads((tmp_path / "full" / "stats.json").read_text())
    killed_stats = json.loads((tmp_path / "killed" / "stats.json").read_text())
    assert full_stats["fingerprint"] == killed_stats["fingerprint"] and full_stats["mean"] == killed_stats["mean"]


def _kermany_like(root, layout):
    """Class folders whose patient numbers recur across the source's own split folders, as in Kermany."""
    from PIL import Image

    for split, cls, name in layout:
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 40 + len(name), np.uint8)).save(folder / f"{name}.jpeg")


def test_official_splits_are_kept_image_by_image_and_shared_patients_reported(tmp_path, caplog):
    layout = [("train", "PNEUMONIA", f"person{i}_bacteria_{i}") for i in range(1, 21)]
    layout += [("train", "NORMAL", f"IM-{i:04d}-0001") for i in range(1, 11)]
    layout += [("test", "PNEUMONIA", f"person{i}_virus_{100 + i}") for i in (1, 2, 3)]  # patients 1-3 recur
    layout += [("test", "NORMAL", "IM-0001-0002"), ("test", "NORMAL", "IM-0500-0001")]  # IM-0001 recurs
    _kermany_like(tmp_path / "src", layout)
    with caplog.at_level("WARNING"):
        prepare(tmp_path / "src", tmp_path / "out", PrepareConfig(workers=1, val_fraction=0.2))
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    split_of = {r["source"].split("/")[-3] + "/" + r["source"].split("/")[-1]: r["split"] for r in manifest}
    assert sorted(k for k, s in split_of.items() if s == "test") == sorted(k for k in split_of if k.startswith("test/"))
    assert all(s in ("train", "val") for k, s in split_of.items() if k.startswith("train/"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["patients_in_several_source_splits"] == 4
    assert "4 patients" in caplog.text
    val_patients = {r["patient"] for r in manifest if r["split"] == "val"}
    train_patients = {r["patient"] for r in manifest if r["split"] == "train"}
    assert val_patients and not val_patients & train_patients  # the split prepare makes is patient-grouped


def _rsna_jpeg_copy(source, out, size, n=None, suffix=".jpg"):
    """A copy of the RSNA-as-JPEG layout, its images resized to `size` px (the labels CSV untouched)."""
    from PIL import Image

    images = out / "stage_2_train_images"
    images.mkdir(parents=True)
    for name in ("stage_2_train_labels.csv", "metadata.csv"):
        shutil.copy(source / name, out / name)
    names = sorted(p.name for p in (source / "stage_2_train_images").iterdir())
    for name in names[:n] if n else names:
        image = Image.open(source / "stage_2_train_images" / name)
        image.resize((size, size), Image.BILINEAR).save((images / name).with_suffix(suffix))
    return out


@pytest.mark.slow
def test_prepare_rsna_1000_jpeg_layout_with_boxes_in_224_space(tmp_path):
    source = require(SHARED_DATA_DIR / "rsna_1000")
    report = prepare(source, tmp_path / "out", PrepareConfig(workers=2, val_fraction=0.2))
    assert report.n_rejected == 0
    assert len(list((tmp_path / "out" / "Processed").rglob("*.npy"))) == 1000
    boxes = _rows(tmp_path / "out" / "boxes.csv")
    assert len(boxes) == 400
    manifest = _rows(tmp_path / "out" / "manifest.csv")  # sex, age and view from metadata.csv
    assert sum(r["view"] == "AP" for r in manifest) == 480 and all(r["sex"] in ("M", "F") for r in manifest)
    metadata = {r["patientId"]: r for r in _rows(source / "metadata.csv")}
    first = manifest[0]
    assert first["age"] == str(int(metadata[first["patient"]]["PatientAge"]))
    labels = _rows(source / "stage_2_train_labels.csv")
    for row in [r for r in labels if r["Target"] == "1"][:2]:  # two boxes by hand: 224 / 1024 each way
        mine = next(b for b in boxes if b["patient"] == row["patientId"] and
                    abs(float(b["x"]) - float(row["x"]) * 224 / 1024) < 1e-3)
        assert [float(mine[k]) for k in ("y", "width", "height")] == pytest.approx(
            [float(row[k]) * 224 / 1024 for k in ("y", "width", "height")], abs=1e-3)


def test_downsampled_rsna_copy_gives_the_same_boxes(tmp_path):
    source = require(SHARED_DATA_DIR / "rsna_1000")
    labels = _rows(source / "stage_2_train_labels.csv")
    boxed = sorted({r["patientId"] for r in labels if r["Target"] == "1"})[:3]
    plain = sorted({r["patientId"] for r in labels if r["Target"] == "0"})[:3]
    subset = tmp_path / "subset"
    (subset / "stage_2_train_images").mkdir(parents=True)
    for name in ("stage_2_train_labels.csv", "metadata.csv"):
        shutil.copy(source / name, subset / name)
    for patient in boxed + plain:
        shutil.copy(source / "stage_2_train_images" / f"{patient}.jpg", subset / "stage_2_train_images")
    small = _rsna_jpeg_copy(subset, tmp_path / "small", 256, suffix=".png")
    full_out, small_out = tmp_path / "full_out", tmp_path / "small_out"
    prepare(subset, full_out, PrepareConfig(workers=1))
    prepare(small, small_out, PrepareConfig(workers=1))
    full_boxes, small_boxes = _rows(full_out / "boxes.csv"), _rows(small_out / "boxes.csv")
    assert len(full_boxes) == len(small_boxes) >= 3
    for a, b in zip(full_boxes, small_boxes, strict=True):
        assert a["patient"] == b["patient"]
        assert [float(a[k]) for k in ("x", "y", "width", "height")] == pytest.approx(
            [float(b[k]) for k in ("x", "y", "width", "height")], abs=1.0)
    # boxes drawn on a 512-px canvas but images kept at 256: --box-space says so
    prepare(small, tmp_path / "space", PrepareConfig(workers=1, box_space=512))
    doubled = _rows(tmp_path / "space" / "boxes.csv")
    assert float(doubled[0]["width"]) == pytest.approx(float(small_boxes[0]["width"]) * 2, abs=1e-2)


def test_test_fraction_carves_a_patient_grouped_stratified_test_split(tmp_path):
    items = [SourceItem(f"p{i}.dcm", f"p{i // 2}", int(i % 4 == 0), f"s{i}") for i in range(80)]
    splits = assign_splits(items, 0.2, seed=0, test_fraction=0.2)
    by_patient = {}
    for it, split in zip(items, splits, strict=True):
        by_patient.setdefault(it.patient, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())  # a patient never spans two splits
    positive = {it.patient for it in items if it.label == 1}
    for patients in (positive, set(by_patient) - positive):
        test = {p for p in patients if by_patient[p] == {"test"}}
        val = {p for p in patients if by_patient[p] == {"val"}}
        assert len(test) == len(val) == 4  # 20 patients of each class: 0.2 each
    assert splits == assign_splits(items, 0.2, seed=0, test_fraction=0.2)
    assert assign_splits(items, 0.2, seed=0) == [
        "train" if s == "test" else s for s in assign_splits(items, 0.2, seed=0)]  # no test without the flag
    own_test = [SourceItem("a.png", "a", 0, "a", split="test"), SourceItem("b.png", "b", 1, "b")]
    with pytest.raises(PneumocamError, match="own test split"):
        assign_splits(own_test, 0.2, seed=0, test_fraction=0.1)


def test_two_sources_make_one_data_set_with_each_split_as_if_prepared_alone(tmp_path):
    layout = [("train", "PNEUMONIA", f"person{i}_bacteria_{i}") for i in range(1, 13)]
    layout += [("train", "NORMAL", f"IM-{i:04d}-0001") for i in range(1, 9)]
    _kermany_like(tmp_path / "kermany", layout)
    rsna = require(RSNA_SAMPLE)
    config = PrepareConfig(workers=1, val_fraction=0.25)
    alone = {name: prepare(src, tmp_path / f"alone-{name}", config) for name, src in
             (("kermany", tmp_path / "kermany"), ("rsna", rsna))}
    both = prepare([tmp_path / "kermany", rsna], tmp_path / "both", config)
    assert both.n_written == sum(r.n_written for r in alone.values())
    rows = _rows(tmp_path / "both" / "manifest.csv")
    for name in ("kermany", "rsna_sample"):
        key = "kermany" if name == "kermany" else "rsna"
        mine = {r["patient"].split(":", 1)[1]: r["split"] for r in rows if r["patient"].startswith(name + ":")}
        theirs = {r["patient"]: r["split"] for r in _rows(tmp_path / f"alone-{key}" / "manifest.csv")}
        assert mine == theirs
    assert len(_rows(tmp_path / "both" / "boxes.csv")) == 10  # RSNA's boxes, renamed with their files
    with pytest.raises(PneumocamError, match="different folder names"):
        prepare([rsna, rsna], tmp_path / "twice", config)

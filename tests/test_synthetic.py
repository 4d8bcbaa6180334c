import csv

import numpy as np
import pytest

from pneumocam.config import SynthConfig
from pneumocam.data import make_phantom, read_image, synthesize


def test_same_seed_gives_the_same_phantom():
    a, b = make_phantom(3, 5, True, size=256), make_phantom(3, 5, True, size=256)
    assert a.patient_id == b.patient_id and a.boxes == b.boxes
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, make_phantom(4, 5, True, size=256).image)


def test_positive_has_boxes_inside_the_image_negative_has_none():
    positive, negative = make_phantom(0, 1, True, size=512), make_phantom(0, 1, False, size=512)
    assert positive.target == 1 and 1 <= len(positive.boxes) <= 3
    assert negative.target == 0 and negative.boxes == ()
    for x, y, w, h in positive.boxes:
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 512.01 and y + h <= 512.01
    # the lesion brightens its box relative to the same phantom without it
    x, y, w, h = (int(round(v)) for v in positive.boxes[0])
    cx, cy = x + w // 2, y + h // 2
    patch = np.s_[cy - h // 8 : cy + h // 8, cx - w // 8 : cx + w // 8]
    assert positive.image[patch].mean() > negative.image[patch].mean() + 10


@pytest.mark.slow
def test_synthesize_writes_rsna_layout_deterministically(tmp_path):
    config = SynthConfig(n_images=6, positive_fraction=0.5, size=128, seed=1)
    synthesize(tmp_path / "a", config)
    synthesize(tmp_path / "b", SynthConfig(**{**config.__dict__, "workers": 2}))
    labels_a = (tmp_path / "a" / "stage_2_train_labels.csv").read_text()
    assert labels_a == (tmp_path / "b" / "stage_2_train_labels.csv").read_text()
    rows = list(csv.DictReader(labels_a.splitlines()))
    patients = {r["patientId"] for r in rows}
    assert len(patients) == 6
    assert len({r["patientId"] for r in rows if r["Target"] == "1"}) == 3
    for pid in patients:
        a = read_image(tmp_path / "a" / "stage_2_train_images" / f"{pid}.dcm")
        b = read_image(tmp_path / "b" / "stage_2_train_images" / f"{pid}.dcm")
        assert a.shape == (128, 128) and np.array_equal(a, b)


def test_phantom_dicom_is_jpeg_baseline_monochrome2(tmp_path):
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit

    synthesize(tmp_path, SynthConfig(n_images=1, size=128))
    path = next((tmp_path / "stage_2_train_images").glob("*.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8


@pytest.mark.slow
def test_lung_density_varies_in_negatives_so_a_brighter_lung_is_no_label_cue():
    def left_minus_right(image: np.ndarray) -> float:
        size = image.shape[0]
        rows = slice(int(0.40 * size), int(0.52 * size))
        left = image[rows, int(0.27 * size) : int(0.37 * size)].mean()
        right = image[rows, int(0.63 * size) : int(0.73 * size)].mean()
        return float(left - right)

    differences = [left_minus_right(make_phantom(0, i, False, size=256).image.astype(float)) for i in range(30)]
    # a lesion brightens a lung patch by well over 10 grey levels (test above); lungs without one must
    # differ from each other by as much, or "the brighter lung" would separate the classes
    assert np.std(differences) > 10

import csv
import logging
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from conftest import RSNA_SAMPLE, require
from pneumocam.cli import main
from pneumocam.commands.predict import run_predict
from pneumocam.config import PredictConfig
from pneumocam.data import write_dicom_jpeg
from pneumocam.deploy.dicom_results import (
    ABSENT,
    PNEUMONIA,
    PRESENT,
    ModelIdentity,
    patient_study_source,
    reported_probability,
    result_panel,
    structured_report,
)

pytest.importorskip("highdicom", reason="DICOM results need pneumocam[dicom]")


def dciodvfy_errors(path) -> list[str]:
    """dicom3tools' verdict on one file: its "Error" lines (warnings are allowed)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _phantom_dicom(path, patient_id="PHANTOM^ONE", age="51"):
    rng = np.random.default_rng(0)
    write_dicom_jpeg(path, rng.integers(40, 200, (300, 260), dtype=np.uint8), patient_id, view="AP")
    ds = pydicom.dcmread(path)
    ds.PatientAge = age
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """`pneumocam predict --dicom-out` on the 17 real RSNA DICOMs, as the issue asks."""
    images = require(RSNA_SAMPLE / "stage_2_train_images")
    out = tmp_path_factory.mktemp("dicom-results")
    code = main(["predict", "pneumocam-cxr", str(images / "*.dcm"), "--out", str(out / "table"),
                 "--dicom-out", str(out / "dicom")])
    with open(out / "table" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return code, rows, out / "dicom"


@pytest.mark.slow
def test_predict_writes_one_sc_and_one_sr_per_real_dicom(real_results):
    code, rows, folder = real_results
    assert code == 0 and len(rows) == 17
    assert len(list(folder.glob("*_sc.dcm"))) == 17 and len(list(folder.glob("*_sr.dcm"))) == 17
    for row in rows:
        source = pydicom.dcmread(row["source"], stop_before_pixels=True)
        sc, sr = pydicom.dcmread(row["dicom_sc"]), pydicom.dcmread(row["dicom_sr"])
        for result in (sc, sr):
            assert result.StudyInstanceUID == source.StudyInstanceUID
            assert result.PatientID == source.PatientID
            assert result.SeriesInstanceUID != source.SeriesInstanceUID
            equipment = result.ContributingEquipmentSequence[0]
            assert equipment.Manufacturer == "pneumocam"
            assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.shape[2] == 3 and sc.SeriesDescription.startswith("pneumocam")
        assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
        assert reported_probability(sr) == pytest.approx(float(row["probability"]), abs=1e-6)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian's dicom3tools)")
def test_dciodvfy_finds_no_errors_in_the_results(real_results):
    _, rows, _ = real_results
    for row in rows:
        for key in ("dicom_sc", "dicom_sr"):
            assert dciodvfy_errors(row[key]) == [], row[key]


def test_sr_codes_the_finding_and_the_algorithm(tmp_path):
    source = pydicom.dcmread(_phantom_dicom(tmp_path / "a.dcm"), stop_before_pixels=True)
    model = ModelIdentity("pneumocam-cxr", "pneumocam 0.1.0 data abc", 0.288, "Youden's J on val")
    codes = {}
    for predicted in (0, 1):
        sr = structured_report(source, 0.7 if predicted else 0.1, predicted, model)
        texts = [str(item.get("TextValue", "")) for item in _items(sr)]
        assert "pneumocam-cxr" in texts and any("Youden's J on val" in text for text in texts)
        codes[predicted] = [item.ConceptCodeSequence[0].CodeValue for item in _items(sr) if item.ValueType == "CODE"
                            and item.ConceptNameCodeSequence[0].CodeValue == PNEUMONIA.value]
        assert reported_probability(sr) == pytest.approx(0.7 if predicted else 0.1)
    assert codes == {0: [ABSENT.value], 1: [PRESENT.value]}


def _items(node):
    for item in getattr(node, "ContentSequence", []):
        yield item
        yield from _items(item)


def test_malformed_patient_age_is_rewritten_in_a_copy_only(tmp_path):
    source = pydicom.dcmread(_phantom_dicom(tmp_path / "a.dcm", age="51"), stop_before_pixels=True)
    assert patient_study_source(source).PatientAge == "051Y" and source.PatientAge == "51"
    source.PatientAge = "about fifty"
    assert "PatientAge" not in patient_study_source(source)


def test_panel_draws_a_known_map_where_it_lies_with_its_colour_bar_beside_the_banner():
    from pneumocam.explain import ShownMap

    image = np.full((300, 300), 0.5, dtype=np.float32)
    evidence = np.full((224, 224), -4.0, np.float32)
    evidence[:112, :56] = 4.0  # above the threshold in a tall block at the top left only
    panel = result_panel(image, ShownMap(evidence, "absolute", 0.3, "coolwarm"), 0.5, 1, 0.3).astype(int)
    assert panel.shape == (512 + 72, 1024, 3)
    assert np.array_equal(panel[:512, :512, 0], panel[:512, :512, 1])  # left: the gray image
    overlay = panel[:512, 512:]
    warm, cool = overlay[..., 0] > overlay[..., 2] + 40, overlay[..., 2] > overlay[..., 0] + 40
    assert warm[:240, :112].all() and cool[272:, :].all() and cool[:, 144:].all()  # where the map put them
    assert not warm[272:, :].any() and not warm[:, 144:].any()
    banner = panel[512:]
    assert banner[:, :512].max() == 255  # the text, left
    bar_row = banner[6, 512 + 40 : 1024 - 40]  # the colour bar, right, under the overlay: blue to red
    assert bar_row[0, 2] > bar_row[0, 0] + 60 and bar_row[-1, 0] > bar_row[-1, 2] + 60


def test_non_dicom_inputs_are_reported_and_patient_names_stay_out_of_logs(tmp_path, caplog, capsys):
    dicom = _phantom_dicom(tmp_path / "in.dcm", patient_id="Secret Name")
    png = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(png)
    with caplog.at_level(logging.DEBUG):
        rows, failures, _ = run_predict("pneumocam-cxr", [str(dicom), str(png)], tmp_path / "out",
                                        PredictConfig(dicom_out=str(tmp_path / "dicom")))
    assert len(rows) == 2 and [f["source"] for f in failures] == [str(png)]
    assert "not a DICOM file" in failures[0]["reason"]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["in_sc.dcm", "in_sr.dcm"]
    captured = capsys.readouterr()
    assert "Secret" not in caplog.text + captured.out + captured.err


def test_sc_keeps_the_sources_orientation_or_assumes_the_conventional_one(tmp_path):
    from pneumocam.deploy import display_orientation

    source = pydicom.dcmread(_phantom_dicom(tmp_path / "a.dcm"), stop_before_pixels=True)
    assert display_orientation(source) == ("L", "F")
    source.PatientOrientation = ["R", "F"]
    assert display_orientation(source) == ("R", "F")


def test_the_results_carry_the_threshold_of_the_films_view(tmp_path):
    from pneumocam.deploy import Prediction
    from pneumocam.deploy.dicom_results import THRESHOLD, result_objects

    path = _phantom_dicom(tmp_path / "a.dcm")
    source = pydicom.dcmread(path)
    model = ModelIdentity("pneumocam-cxr", "pneumocam 0.1.0 data abc", 0.288, "Youden's J on val")
    image = np.zeros((224, 224), np.float32)
    prediction = Prediction("a.dcm", 0.2, -1.0, 1, 0.15, image, cam=image, view="AP", threshold_basis="view AP")
    _, sr = result_objects(source, image, prediction, model)
    thresholds = [float(item.MeasuredValueSequence[0].NumericValue) for item in _items(sr)
                  if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == THRESHOLD.value]
    assert thresholds == [pytest.approx(0.15)]
    texts = [str(item.get("TextValue", "")) for item in _items(sr)]
    assert any(text.startswith("threshold 0.1500 (view AP threshold applied; Youden's J on val") for text in texts)

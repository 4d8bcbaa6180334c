import json
import logging
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest

from conftest import RSNA_SAMPLE, free_port, require, wait_for_http
from pneumocam.cli import main
from pneumocam.commands.pacs import PacsState, run_pass, study_key
from pneumocam.config import PacsConfig
from pneumocam.dicom_results import reported_probability
from pneumocam.inference import Predictor

pytest.importorskip("dicomweb_client", reason="the PACS connection needs pneumocam[pacs]")
pytest.importorskip("highdicom", reason="DICOM results need pneumocam[dicom]")
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin on loopback, empty, for this module."""
    if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian: orthanc, orthanc-dicomweb)")
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {"Name": "pneumocam-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/system", process, 20)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _statistics(base: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{base}/statistics", timeout=10).read())


@pytest.mark.slow
def test_round_trip_through_a_real_orthanc(orthanc, tmp_path, caplog):
    from pneumocam.commands.pacs import connect

    files = sorted(require(RSNA_SAMPLE / "stage_2_train_images").glob("*.dcm"))
    client = connect(f"{orthanc}/dicom-web")
    client.store_instances([pydicom.dcmread(f) for f in files])
    assert _statistics(orthanc)["CountInstances"] == len(files) == 17

    state = tmp_path / "state.json"
    with caplog.at_level(logging.INFO, logger="pneumocam"):
        assert main(["pacs", "pneumocam-cxr", f"{orthanc}/dicom-web", "--state", str(state), "--once"]) == 0
    patients = {str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) for f in files}
    assert "17 done" in caplog.text and not any(patient in caplog.text for patient in patients)
    assert _statistics(orthanc)["CountInstances"] == 3 * 17  # an SC and an SR stored back per image
    done = json.loads(state.read_text())["done"]
    assert len(done) == 17

    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    by_file = {p.source: p for p in predictor.predict_files([str(f) for f in files], cam=False)[0]}
    for path in files[:4]:  # read the results back from Orthanc and check them against the file's prediction
        source = pydicom.dcmread(path, stop_before_pixels=True)
        series = {s["0008103E"]["Value"][0]: s["0020000E"]["Value"][0]
                  for s in client.search_for_series(source.StudyInstanceUID, fields=["SeriesDescription"])
                  if "0008103E" in s}
        sr_series = next(uid for text, uid in series.items() if "report" in text)
        sc_series = next(uid for text, uid in series.items() if "overlay" in text)
        sr = client.retrieve_series(source.StudyInstanceUID, sr_series)[0]
        sc = client.retrieve_series(source.StudyInstanceUID, sc_series)[0]
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
        assert reported_probability(sr) == pytest.approx(by_file[str(path)].probability, abs=1e-5)
        assert sc.pixel_array.shape[-1] == 3
        assert done[source.StudyInstanceUID]["results"][0]["sr"] == sr.SOPInstanceUID

    # idempotent: a second pass, also from a new process's view of the same state file, does nothing
    assert main(["pacs", "pneumocam-cxr", f"{orthanc}/dicom-web", "--state", str(state), "--once",
                 "--backend", "onnxruntime"]) == 0
    assert _statistics(orthanc)["CountInstances"] == 3 * 17


class _BrokenServer:
    """Answers the query, fails every retrieval: what a PACS under maintenance does."""

    def __init__(self, studies):
        self.studies = studies

    def search_for_studies(self, **kwargs):
        return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in self.studies]

    def search_for_series(self, study, **kwargs):
        raise ConnectionError("PACS unavailable")


def test_failed_studies_are_recorded_and_retried_at_most_max_attempts(tmp_path):
    state = PacsState.load(tmp_path / "state.json")
    config = PacsConfig(max_attempts=2)
    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    server = _BrokenServer(["1.2.3", "1.2.4"])
    assert run_pass(server, predictor, None, state, config)["failed"] == 2
    assert run_pass(server, predictor, None, state, config)["failed"] == 2
    assert run_pass(server, predictor, None, state, config)["new_studies"] == 0  # given up after two attempts
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["failed"]["1.2.3"]["attempts"] == 2 and "PACS unavailable" in saved["failed"]["1.2.3"]["reason"]
    assert len(study_key("1.2.3")) == 10 and "1.2.3" not in study_key("1.2.3")


def test_a_corrupt_state_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="state.json"):
        PacsState.load(path)


class _FlakyServer:
    """One study of two images; storing fails once, after the first image's results went in."""

    def __init__(self, images):
        self.images, self.stored, self.fail_next_store_after = images, [], 1

    def search_for_studies(self, **kwargs):
        return [{"0020000D": {"vr": "UI", "Value": ["1.2.9"]}}]

    def search_for_series(self, study, **kwargs):
        return [{"0020000E": {"vr": "UI", "Value": ["1.2.9.1"]}, "00080060": {"vr": "CS", "Value": ["CR"]}}]

    def retrieve_series(self, study, series, **kwargs):
        return [pydicom.dcmread(path) for path in self.images]

    def store_instances(self, datasets):
        if len(self.stored) == self.fail_next_store_after:
            self.fail_next_store_after = None
            raise ConnectionError("connection reset")
        self.stored.append([str(ds.SOPInstanceUID) for ds in datasets])


@pytest.mark.slow
def test_a_retried_study_does_not_store_an_images_results_twice(tmp_path):
    import numpy as np

    from pneumocam.dicom_results import ModelIdentity
    from pneumocam.synthetic import write_dicom_jpeg

    images = []
    for i in range(2):
        write_dicom_jpeg(tmp_path / f"{i}.dcm", np.random.default_rng(i).integers(30, 220, (256, 256), np.uint8),
                         f"P{i}")
        images.append(tmp_path / f"{i}.dcm")
    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    model = ModelIdentity.from_predictor(predictor, "pneumocam-cxr")
    server, state = _FlakyServer(images), PacsState.load(tmp_path / "state.json")
    assert run_pass(server, predictor, model, state)["failed"] == 1
    assert len(state.failed["1.2.9"]["results"]) == 1 and len(server.stored) == 1
    assert run_pass(server, predictor, model, state)["done"] == 1
    assert len(server.stored) == 2 and len(state.done["1.2.9"]["results"]) == 2  # the first image not sent again
    assert "1.2.9" not in state.failed

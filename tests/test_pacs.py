import json
import logging
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest

from conftest import RSNA_SAMPLE, free_port, require, wait_for_http
from pneumocam.cli import main
from pneumocam.commands.pacs import PacsState, connect, run_pass, state_lock, study_key
from pneumocam.config import PacsConfig
from pneumocam.deploy import Predictor, reported_probability
from pneumocam.errors import PneumocamError

pytest.importorskip("dicomweb_client", reason="the PACS connection needs pneumocam[pacs]")
pytest.importorskip("highdicom", reason="DICOM results need pneumocam[dicom]")
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """A real Orthanc with its DICOMweb plugin on loopback, empty at first; stop() and start() keep its storage."""

    def __init__(self, folder: Path):
        if ORTHANC is None or not DICOMWEB_PLUGIN.exists():
            pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian: orthanc, orthanc-dicomweb)")
        self.folder, port = folder, free_port()
        config = {"Name": "pneumocam-test", "StorageDirectory": str(folder / "db"),
                  "IndexDirectory": str(folder / "db"), "HttpPort": port, "DicomServerEnabled": False,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.base, self.process = f"http://127.0.0.1:{port}", None

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def start(self) -> None:
        with open(self.folder / "orthanc.log", "a") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for_http(f"{self.base}/system", self.process, 20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def count(self) -> int:
        return json.loads(urllib.request.urlopen(f"{self.base}/statistics", timeout=10).read())["CountInstances"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One Orthanc for the module's round trip."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server.base
    finally:
        server.stop()


@pytest.fixture
def fresh_orthanc(tmp_path):
    """An Orthanc of the test's own, holding three real RSNA DICOMs (three studies)."""
    (tmp_path / "orthanc").mkdir()
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        files = sorted(require(RSNA_SAMPLE / "stage_2_train_images").glob("*.dcm"))[:3]
        connect(server.dicomweb).store_instances([pydicom.dcmread(f) for f in files])
        assert server.count() == 3
        yield server
    finally:
        server.stop()


def _statistics(base: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{base}/statistics", timeout=10).read())


@pytest.mark.slow
def test_round_trip_through_a_real_orthanc(orthanc, tmp_path, caplog):
    files = sorted(require(RSNA_SAMPLE / "stage_2_train_images").glob("*.dcm"))
    client = connect(f"{orthanc}/dicom-web")
    client.store_instances([pydicom.dcmread(f) for f in files])
    assert _statistics(orthanc)["CountInstances"] == len(files) == 17

    state = tmp_path / "state.json"
    with caplog.at_level(logging.INFO, logger="pneumocam"):
        assert main(["pacs", "pneumocam-cxr", f"{orthanc}/dicom-web", "--state", str(state), "--once"]) == 0
    patients = {str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) for f in files}
    assert "17 new images done" in caplog.text and not any(patient in caplog.text for patient in patients)
    assert _statistics(orthanc)["CountInstances"] == 3 * 17  # an SC and an SR stored back per image
    done = json.loads(state.read_text())["done"]
    assert len(done) == 17 and state.stat().st_mode & 0o777 == 0o600  # UIDs and probabilities: owner only

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
        assert done[source.SOPInstanceUID]["sr"] == sr.SOPInstanceUID

    # idempotent: a second pass, also from a new process's view of the same state file, does nothing
    assert main(["pacs", "pneumocam-cxr", f"{orthanc}/dicom-web", "--state", str(state), "--once",
                 "--backend", "onnxruntime"]) == 0
    assert _statistics(orthanc)["CountInstances"] == 3 * 17


class _BrokenServer:
    """Answers the study query, fails every series query: what a PACS under maintenance does."""

    def __init__(self, studies):
        self.studies = studies

    def search_for_studies(self, **kwargs):
        return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in self.studies]

    def search_for_series(self, study, **kwargs):
        raise ConnectionError("PACS unavailable")


def test_failed_studies_are_recorded_and_retried_at_most_max_attempts(tmp_path):
    state = PacsState.load(tmp_path / "state.json")
    config = PacsConfig(max_attempts=2)
    server = _BrokenServer(["1.2.3", "1.2.4"])
    assert run_pass(server, None, None, state, config)["failed"] == 2
    assert run_pass(server, None, None, state, config)["failed"] == 2
    assert run_pass(server, None, None, state, config)["failed"] == 0  # given up after two attempts
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["failed"]["study:1.2.3"]["attempts"] == 2
    assert "PACS unavailable" in saved["failed"]["study:1.2.3"]["reason"]
    assert len(study_key("1.2.3")) == 10 and "1.2.3" not in study_key("1.2.3")


def test_a_corrupt_state_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="state.json"):
        PacsState.load(path)


def test_a_version_1_state_is_read_as_one_record_per_image(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"done": {"1.2.3": {"images": 1, "results": [{"sop_instance_uid": "1.2.3.4",
                                                                             "probability": 0.2}]}},
                                "failed": {"1.2.5": {"attempts": 1, "results": [{"sop_instance_uid": "1.2.5.6"}]}}}))
    state = PacsState.load(path)
    assert set(state.done) == {"1.2.3.4", "1.2.5.6"} and state.failed == {}
    assert state.done["1.2.3.4"]["probability"] == 0.2


def test_one_process_per_state_file(tmp_path):
    with state_lock(tmp_path / "state.json"):
        with pytest.raises(PneumocamError, match="another pneumocam pacs"):
            with state_lock(tmp_path / "state.json"):
                pass
    with state_lock(tmp_path / "state.json"):  # released when the holder is done
        pass


def test_a_token_is_not_sent_in_clear_text_beyond_this_machine():
    with pytest.raises(PneumocamError, match="clear text to pacs.example.org"):
        connect("http://pacs.example.org/dicom-web", token="secret")
    connect("http://pacs.example.org/dicom-web", token="secret", insecure=True)
    connect("https://pacs.example.org/dicom-web", token="secret")
    for loopback in ("http://127.0.0.1:8042/dicom-web", "http://localhost/dicom-web", "http://[::1]/dicom-web"):
        connect(loopback, token="secret")
    connect("http://pacs.example.org/dicom-web")  # no token, nothing to leak
    with pytest.raises(PneumocamError, match="not a DICOMweb URL"):
        connect("pacs.example.org/dicom-web")


def test_the_cli_refuses_the_token_over_http_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PACS_TOKEN", "secret")
    code = main(["pacs", "pneumocam-cxr", "http://pacs.example.org/dicom-web", "--token-env", "PACS_TOKEN",
                 "--state", str(tmp_path / "state.json"), "--once"])
    assert code == 1 and "--insecure" in capsys.readouterr().err and not (tmp_path / "state.json").exists()


class _FlakyServer:
    """One study of two images; storing fails once, after the first image's results went in."""

    def __init__(self, images):
        self.images, self.stored, self.fail_next_store_after = images, [], 1
        self.sops = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in images]

    def search_for_studies(self, **kwargs):
        return [{"0020000D": {"vr": "UI", "Value": ["1.2.9"]}}]

    def search_for_series(self, study, **kwargs):
        return [{"0020000E": {"vr": "UI", "Value": ["1.2.9.1"]}, "00080060": {"vr": "CS", "Value": ["CR"]}}]

    def search_for_instances(self, study, series, **kwargs):
        return [{"00080018": {"vr": "UI", "Value": [sop]}} for sop in self.sops]

    def retrieve_instance(self, study, series, sop, **kwargs):
        return pydicom.dcmread(self.images[self.sops.index(sop)])

    def store_instances(self, datasets):
        if len(self.stored) == self.fail_next_store_after:
            self.fail_next_store_after = None
            raise ConnectionError("connection reset")
        self.stored.append([str(ds.SOPInstanceUID) for ds in datasets])


def _two_phantom_dicoms(folder: Path) -> list[Path]:
    import numpy as np

    from pneumocam.data import write_dicom_jpeg

    for i in range(2):
        write_dicom_jpeg(folder / f"{i}.dcm", np.random.default_rng(i).integers(30, 220, (256, 256), np.uint8),
                         f"P{i}")
    return [folder / "0.dcm", folder / "1.dcm"]


@pytest.mark.slow
def test_a_failed_store_is_retried_for_that_image_only_with_the_same_uids(tmp_path):
    from pneumocam.deploy import ModelIdentity

    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    model = ModelIdentity.from_predictor(predictor, "pneumocam-cxr")
    server, state = _FlakyServer(_two_phantom_dicoms(tmp_path)), PacsState.load(tmp_path / "state.json")
    assert run_pass(server, predictor, model, state) == {"studies": 1, "images": 1, "skipped": 0, "failed": 1}
    assert len(server.stored) == 1 and set(state.done) == {server.sops[0]} and server.sops[1] in state.failed
    assert run_pass(server, predictor, model, state)["images"] == 1
    assert len(server.stored) == 2 and set(state.done) == set(server.sops)  # the first image not sent again
    assert state.failed == {}
    again = _FlakyServer(server.images)  # the same results made again (a crash before the save) get the same UIDs
    again.fail_next_store_after = None
    run_pass(again, predictor, model, PacsState.load(tmp_path / "other.json"))
    assert again.stored == server.stored


KILLED_AFTER_STORE = """
import os, signal, sys
from pneumocam.cli import main
from pneumocam.commands import pacs
pacs.PacsState.save = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # dies after STOW-RS, before the save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_between_a_store_and_the_save_a_rerun_stores_no_duplicate(fresh_orthanc, tmp_path):
    state = tmp_path / "state.json"
    arguments = ["pacs", "pneumocam-cxr", fresh_orthanc.dicomweb, "--state", str(state), "--once"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STORE, *arguments], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert fresh_orthanc.count() == 3 + 2 and not state.exists()  # one image's results in, none recorded
    assert main(arguments) == 0
    assert fresh_orthanc.count() == 3 + 2 * 3  # the first image's results stored again under the same UIDs
    assert len(json.loads(state.read_text())["done"]) == 3


@pytest.mark.slow
def test_an_image_added_to_a_processed_study_is_processed_on_the_next_pass(fresh_orthanc, tmp_path):
    state = tmp_path / "state.json"
    arguments = ["pacs", "pneumocam-cxr", fresh_orthanc.dicomweb, "--state", str(state), "--once"]
    assert main(arguments) == 0 and fresh_orthanc.count() == 9
    first = sorted(require(RSNA_SAMPLE / "stage_2_train_images").glob("*.dcm"))[0]
    late = pydicom.dcmread(first)  # a second image of the same study and series, arriving later
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    connect(fresh_orthanc.dicomweb).store_instances([late])
    assert main(arguments) == 0
    assert fresh_orthanc.count() == 10 + 2 and late.SOPInstanceUID in json.loads(state.read_text())["done"]


class _StopsTheServerAfterFirstStore:
    """A real client to a real Orthanc; after the first store, Orthanc goes down (maintenance, a crash)."""

    def __init__(self, orthanc: Orthanc):
        self.client, self.orthanc, self.stores = connect(orthanc.dicomweb, timeout_s=5), orthanc, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def store_instances(self, datasets):
        self.client.store_instances(datasets)
        self.stores += 1
        if self.stores == 1:
            self.orthanc.stop()


@pytest.mark.slow
def test_orthanc_stopped_mid_pass_nothing_lost_or_doubled(fresh_orthanc, tmp_path):
    from pneumocam.deploy import ModelIdentity

    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    model = ModelIdentity.from_predictor(predictor, "pneumocam-cxr")
    state = PacsState.load(tmp_path / "state.json")
    counts = run_pass(_StopsTheServerAfterFirstStore(fresh_orthanc), predictor, model, state)
    assert counts["images"] == 1 and counts["failed"] == 2  # the pass reports the failures
    fresh_orthanc.start()
    assert fresh_orthanc.count() == 3 + 2
    assert run_pass(connect(fresh_orthanc.dicomweb), predictor, model, state)["images"] == 2
    assert fresh_orthanc.count() == 3 + 2 * 3 and len(state.done) == 3 and state.failed == {}

"""PACS stage: find chest X-rays on a DICOMweb server, predict, store the results back, each exactly once.

One pass: QIDO-RS for studies with a CR or DX series and for those series' instances; each source image
(SOP instance) not yet done is retrieved (WADO-RS), predicted, and its Secondary Capture + structured
report (dicom_results) are stored back with STOW-RS into the same Study. Exactly once per source image:
- the state file records every source SOP Instance UID done (and every failure, retried up to
  `max_attempts` passes) and is saved atomically after each store, so an image that arrives in a study
  already processed is picked up by the next pass, also across restarts;
- the result UIDs derive from (source SOP Instance UID, model, kind of object): a store repeated after a
  crash between STOW-RS and the save carries the same UIDs, and the PACS keeps one instance per UID;
- one process at a time per state file (a lock beside it); the state is readable by its owner only (0600),
  since it holds UIDs and probabilities.
dicomweb-client does the HTTP. Logs name images by a short hash of their UID, never by patient fields.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pneumocam.config import PacsConfig
from pneumocam.data import ImageReadError, read_image
from pneumocam.deploy import MANUFACTURER, ModelIdentity, Predictor, is_loopback, resolve_token, result_objects
from pneumocam.errors import PneumocamError, missing_extra
from pneumocam.files import write_json
from pneumocam.model import checkpoint_label

log = logging.getLogger(__name__)
STUDY_UID, SERIES_UID, SOP_UID, MODALITY = "0020000D", "0020000E", "00080018", "00080060"
AS_STORED = (("application/dicom", "*"),)
STATE_VERSION = 2
OWNER_ONLY = 0o600


@dataclass
class PacsState:
    """What has been done, kept on disk: source SOP Instance UID -> its record; failures by SOP Instance UID, or
    by "study:UID" where a study's images could not be listed."""

    path: Path
    done: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> PacsState:
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") == STATE_VERSION:
                return cls(path, dict(data["done"]), dict(data["failed"]))
            return cls(path, _done_by_image(data["done"], data.get("failed", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PneumocamError(f"{path}: not a pneumocam PACS state file ({exc}); move it away to start over") \
                from exc

    def save(self) -> None:
        write_json(self.path, {"version": STATE_VERSION, "done": self.done, "failed": self.failed}, OWNER_ONLY)

    def wants(self, key: str, max_attempts: int) -> bool:
        return key not in self.done and self.failed.get(key, {}).get("attempts", 0) < max_attempts

    def record_failure(self, key: str, exc: Exception) -> int:
        attempts = self.failed.get(key, {}).get("attempts", 0) + 1
        self.failed[key] = {"attempts": attempts, "reason": f"{type(exc).__name__}: {exc}"[:500]}
        return attempts


def _done_by_image(studies: dict, failed: dict) -> dict[str, dict]:
    """A version 1 state (one record per study, its images' results inside) -> one record per source image."""
    done = {}
    for study, record in [*studies.items(), *failed.items()]:
        for result in record.get("results", []):
            done[result["sop_instance_uid"]] = {**result, "study": study_key(study)}
    return done


@contextlib.contextmanager
def state_lock(path: str | Path) -> Iterator[None]:
    """Hold STATE.lock for the duration: a second `pacs` on the same state would process the same images."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            _lock(handle)
        except OSError as exc:
            raise PneumocamError(f"{path}: another pneumocam pacs is using this state file (it holds {lock_path}); "
                                 "run one process per state file") from exc
        yield


def _lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the system when the process dies


def study_key(uid: str) -> str:
    """How logs and the state name a study or an image: a short hash of its UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def connect(url: str, token: str | None = None, timeout_s: float = 60.0, insecure: bool = False):
    """A DICOMweb client; a bearer token is never sent in clear text (http://) beyond this machine unless
    `insecure`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PneumocamError(f"{url}: not a DICOMweb URL (expected http://HOST[:PORT]/PATH or https://...)")
    if token and parts.scheme == "http" and not is_loopback(parts.hostname) and not insecure:
        raise PneumocamError(f"refusing to send the bearer token in clear text to {parts.hostname} over http://: "
                             "use https://, or pass --insecure on a network you trust")
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError as exc:
        raise missing_extra("the PACS connection", "dicomweb-client", "pacs") from exc
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url=url.rstrip("/"), headers=headers, timeout=timeout_s)


def _value(record: dict, tag: str) -> str:
    values = record.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def find_studies(client, modalities: tuple[str, ...], limit: int = 1000) -> list[str]:
    """StudyInstanceUIDs of every study holding one of `modalities` (one QIDO-RS query per modality)."""
    found: dict[str, None] = {}
    for modality in modalities:
        for record in client.search_for_studies(search_filters={"ModalitiesInStudy": modality}, limit=limit,
                                                get_remaining=True):
            found[_value(record, STUDY_UID)] = None
    return [uid for uid in found if uid]


def source_images(client, study: str, modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """(SeriesInstanceUID, SOPInstanceUID) of every image in the study's series of `modalities`."""
    images = []
    for record in client.search_for_series(study, fields=["Modality"]):
        series = _value(record, SERIES_UID)
        if _value(record, MODALITY) in modalities and series:
            images += [(series, _value(instance, SOP_UID))
                       for instance in client.search_for_instances(study, series, get_remaining=True)]
    return [(series, sop) for series, sop in images if sop]


def process_image(client, predictor: Predictor, model: ModelIdentity, uids: tuple[str, str, str],
                  folder: Path, scale: str = "absolute") -> dict:
    """Retrieve one source image (study, series, SOP Instance UIDs), predict, store its SC and SR; its record.
    An unreadable image is recorded as skipped (with the reason), so it is not fetched again on every pass."""
    study, series, sop = uids
    # as stored ("*"): a server's transcoding decodes JPEG with another decoder than `predict` uses
    source = client.retrieve_instance(study, series, sop, media_types=AS_STORED)
    record = {"study": study_key(study), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if str(source.get("Manufacturer", "")) == MANUFACTURER:
        return {**record, "skipped": "a pneumocam result"}
    path = folder / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    try:
        loaded = predictor.load_with_view(path)
    except ImageReadError as exc:
        log.warning("image %s of study %s skipped: %s", study_key(sop), study_key(study), exc.reason)
        return {**record, "skipped": exc.reason}
    prediction = predictor.predict_arrays([loaded.image], [study_key(sop)], views=[loaded.view])[0]
    sc, sr = result_objects(source, read_image(path), prediction, model, predictor.contract.resize_mode,
                            scale)
    client.store_instances([sc, sr])
    return {**record, "probability": prediction.probability, "predicted": prediction.predicted,
            "threshold": prediction.threshold, "threshold_basis": prediction.threshold_basis, "ood": prediction.ood,
            "sc": str(sc.SOPInstanceUID), "sr": str(sr.SOPInstanceUID)}


def run_pass(client, predictor: Predictor, model: ModelIdentity, state: PacsState,
             config: PacsConfig = PacsConfig()) -> dict:
    """One pass over the server; returns counts. The state is saved after every image and every failure; a
    failure to list the studies at all propagates (the pass did nothing)."""
    studies = find_studies(client, config.modalities, config.limit)
    counts = {"studies": len(studies), "images": 0, "skipped": 0, "failed": 0}
    with tempfile.TemporaryDirectory(prefix="pneumocam-pacs-") as folder:  # patient data: deleted on every path
        for study in studies:
            key = f"study:{study}"
            if not state.wants(key, config.max_attempts):
                continue
            try:
                images = source_images(client, study, config.modalities)
            except Exception as exc:  # network or server trouble: record it, go on with the next study
                _failed(state, key, exc, counts, config.max_attempts)
                continue
            state.failed.pop(key, None)
            for series, sop in images:
                if state.wants(sop, config.max_attempts):
                    _process(client, predictor, model, state, (study, series, sop), Path(folder), counts, config)
    return counts


def _process(client, predictor, model, state: PacsState, uids: tuple[str, str, str], folder: Path, counts: dict,
             config: PacsConfig) -> None:
    try:
        record = process_image(client, predictor, model, uids, folder, config.cam_scale)
    except Exception as exc:  # network, server or encoding trouble: record it, go on with the next image
        _failed(state, uids[2], exc, counts, config.max_attempts)
        return
    state.done[uids[2]] = record
    state.failed.pop(uids[2], None)
    state.save()
    counts["skipped" if "skipped" in record else "images"] += 1


def _failed(state: PacsState, key: str, exc: Exception, counts: dict, max_attempts: int) -> None:
    attempts = state.record_failure(key, exc)
    state.save()
    counts["failed"] += 1
    what = "study" if key.startswith("study:") else "image"
    log.warning("%s %s failed (attempt %d of %d): %s", what, study_key(key.removeprefix("study:")), attempts,
                max_attempts, type(exc).__name__)


def watch(checkpoint: str | Path, url: str, config: PacsConfig = PacsConfig()) -> dict:
    """Run passes until interrupted (or one pass with `config.once`); returns the last pass's counts."""
    client = connect(url, resolve_token(config.token_env), config.timeout_s, config.insecure)
    with state_lock(config.state):
        state = PacsState.load(config.state)
        predictor = Predictor.from_checkpoint(checkpoint, device=config.device, backend=config.backend)
        model = ModelIdentity.from_predictor(predictor, checkpoint_label(checkpoint))
        while True:
            try:
                counts = run_pass(client, predictor, model, state, config)
            except Exception as exc:  # the server could not be queried at all
                if config.once:
                    raise PneumocamError(f"the pass failed: could not list the studies on {url} "
                                         f"({type(exc).__name__})") from exc
                log.warning("pass failed: could not list the studies (%s); next try in %g s", type(exc).__name__,
                            config.interval_s)
            else:
                log.info("pass: %d studies, %d new images done, %d skipped, %d failed", counts["studies"],
                         counts["images"], counts["skipped"], counts["failed"])
                if config.once:
                    return counts
            time.sleep(config.interval_s)

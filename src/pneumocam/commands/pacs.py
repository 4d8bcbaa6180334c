"""PACS stage: find new chest X-ray studies on a DICOMweb server, predict, store the results back.

One pass: QIDO-RS for studies with a CR or DX series, WADO-RS for those series' images, a prediction
per image, and a Secondary Capture + structured report per image (dicom_results) sent back with
STOW-RS into the same Study. dicomweb-client does the HTTP. The state file records every study that
was done (and every failure, retried up to `max_attempts` passes), so a study is never processed
twice, also across restarts. Logs name studies by a short hash of their UID, never by patient fields.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydicom import Dataset

from pneumocam.checkpoints import checkpoint_label
from pneumocam.config import PacsConfig, resolve_token
from pneumocam.dicom_results import MANUFACTURER, ModelIdentity, result_objects
from pneumocam.errors import PneumocamError
from pneumocam.files import write_json
from pneumocam.inference import Predictor
from pneumocam.io import ImageReadError, read_image

log = logging.getLogger(__name__)
STUDY_UID, SERIES_UID, MODALITY = "0020000D", "0020000E", "00080060"
AS_STORED = (("application/dicom", "*"),)


@dataclass
class PacsState:
    """What has been done, kept on disk: StudyInstanceUID -> record."""

    path: Path
    done: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> PacsState:
        import json

        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, dict(data["done"]), dict(data.get("failed", {})))
        except (ValueError, KeyError, TypeError) as exc:
            raise PneumocamError(f"{path}: not a pneumocam PACS state file ({exc}); move it away to start over") \
                from exc

    def save(self) -> None:
        write_json(self.path, {"done": self.done, "failed": self.failed})

    def wants(self, study: str, max_attempts: int) -> bool:
        return study not in self.done and self.failed.get(study, {}).get("attempts", 0) < max_attempts


def study_key(uid: str) -> str:
    """How logs name a study: a short hash of its UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def connect(url: str, token: str | None = None, timeout_s: float = 60.0):
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError as exc:
        raise PneumocamError("the PACS connection needs dicomweb-client: pip install 'pneumocam[pacs]'") from exc
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


def _source_images(client, study: str, modalities: tuple[str, ...]) -> list[Dataset]:
    images = []
    for record in client.search_for_series(study, fields=["Modality"]):
        if _value(record, MODALITY) in modalities:
            # as stored ("*"): a server's transcoding decodes JPEG with another decoder than `predict` uses
            images += client.retrieve_series(study, _value(record, SERIES_UID), media_types=AS_STORED)
    return [ds for ds in images if str(ds.get("Manufacturer", "")) != MANUFACTURER]


def process_study(client, predictor: Predictor, model: ModelIdentity, study: str,
                  modalities: tuple[str, ...], results: list[dict]) -> dict:
    """Predict every CR/DX image of one study and store its results; returns the state record. `results` holds
    the images already done by an earlier, interrupted attempt (skipped now) and receives each new one as it is
    stored, so that a retry never stores an image's results twice."""
    skipped, stored = 0, {result["sop_instance_uid"] for result in results}
    with tempfile.TemporaryDirectory(prefix="pneumocam-pacs-") as folder:  # patient data: deleted on every path
        for number, source in enumerate(_source_images(client, study, modalities)):
            if str(source.SOPInstanceUID) in stored:
                continue
            path = Path(folder) / f"{number}.dcm"
            source.save_as(path, enforce_file_format=True)
            try:
                loaded = predictor.load_with_view(path)
            except ImageReadError as exc:
                skipped += 1
                log.warning("study %s: image %d skipped: %s", study_key(study), number, exc.reason)
                continue
            prediction = predictor.predict_arrays([loaded.image], [f"{study_key(study)}/{number}"],
                                                  views=[loaded.view])[0]
            sc, sr = result_objects(source, read_image(path), prediction, model, predictor.contract.resize_mode)
            client.store_instances([sc, sr])
            results.append({"sop_instance_uid": str(source.SOPInstanceUID), "probability": prediction.probability,
                            "predicted": prediction.predicted, "threshold": prediction.threshold,
                            "threshold_basis": prediction.threshold_basis, "ood": prediction.ood,
                            "sc": str(sc.SOPInstanceUID), "sr": str(sr.SOPInstanceUID)})
    return {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "images": len(results),
            "skipped": skipped, "results": results}


def run_pass(client, predictor: Predictor, model: ModelIdentity, state: PacsState,
             config: PacsConfig = PacsConfig()) -> dict:
    """One pass over the server; returns counts. The state is saved after every study."""
    studies = [uid for uid in find_studies(client, config.modalities, config.limit)
               if state.wants(uid, config.max_attempts)]
    counts = {"new_studies": len(studies), "done": 0, "failed": 0, "images": 0}
    for number, study in enumerate(studies, 1):
        results = list(state.failed.get(study, {}).get("results", []))
        try:
            record = process_study(client, predictor, model, study, config.modalities, results)
        except Exception as exc:  # network, server or decoding trouble: record it, go on with the next study
            attempts = state.failed.get(study, {}).get("attempts", 0) + 1
            state.failed[study] = {"attempts": attempts, "reason": f"{type(exc).__name__}: {exc}"[:500],
                                   "results": results}
            counts["failed"] += 1
            log.warning("study %d of %d (%s) failed (attempt %d of %d): %s", number, len(studies), study_key(study),
                        attempts, config.max_attempts, type(exc).__name__)
        else:
            state.done[study] = record
            state.failed.pop(study, None)
            counts["done"] += 1
            counts["images"] += record["images"]
            log.info("study %d of %d (%s): %d images, results stored", number, len(studies), study_key(study),
                     record["images"])
        state.save()
    return counts


def watch(checkpoint: str | Path, url: str, config: PacsConfig = PacsConfig()) -> dict:
    """Run passes until interrupted (or one pass with `config.once`); returns the last pass's counts."""
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, backend=config.backend)
    model = ModelIdentity.from_predictor(predictor, checkpoint_label(checkpoint))
    client = connect(url, resolve_token(config.token_env), config.timeout_s)
    state = PacsState.load(config.state)
    while True:
        counts = run_pass(client, predictor, model, state, config)
        log.info("pass: %d new studies, %d done (%d images), %d failed", counts["new_studies"], counts["done"],
                 counts["images"], counts["failed"])
        if config.once:
            return counts
        time.sleep(config.interval_s)

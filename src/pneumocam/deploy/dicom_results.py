"""A prediction as DICOM, for the archive the radiologist reads from (highdicom, pneumocam[dicom]).

Two objects per source image, both in the source's Study (patient and study modules copied from it),
each in a new Series of its own:
- a Secondary Capture: the image and its CAM overlay side by side, with the probability, the call and
  "NOT FOR DIAGNOSTIC USE" burned into the pixels;
- a Comprehensive SR (TID 1500 measurement report): the finding (pneumonia present or absent, SNOMED
  codes), the probability and the threshold (DCM codes), the rule that chose the threshold and the model's
  name and version (TID 4019 algorithm identification), a reference to the source image, and the
  algorithm in the Contributing Equipment Sequence, as IHE AI Results asks.
Patient identifiers are copied into these objects only; nothing here logs them.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pneumocam import __version__
from pneumocam.data.preprocess import to_model_input
from pneumocam.data.readers import read_dicom_dataset, read_image
from pneumocam.errors import PneumocamError, missing_extra
from pneumocam.explain.overlay import ShownMap, colour_bar_strip, overlay_map
from pneumocam.files import atomic_path

MANUFACTURER = "pneumocam"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
PROBABILITY, THRESHOLD = codes.DCM.Probability, codes.DCM.ThresholdValue
NO_UNITS = codes.UCUM.NoUnits
SC_SERIES = (9001, "pneumocam CAM overlay (not for diagnostic use)")
SR_SERIES = (9002, "pneumocam pneumonia report (not for diagnostic use)")
PANEL_SIDE = 512  # pixels per half of the Secondary Capture
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"


@dataclass(frozen=True)
class ModelIdentity:
    """What the algorithm identification says: the model's name, its version and how it decides."""

    name: str  # e.g. pneumocam-cxr, or a checkpoint's file name
    version: str  # pneumocam's version + the training data fingerprint
    threshold: float
    threshold_rule: str = ""

    @classmethod
    def from_predictor(cls, predictor, label: str) -> ModelIdentity:
        fingerprint = str(predictor.metadata.get("data_fingerprint") or "unknown")[:12]
        return cls(Path(label).name[:64], f"pneumocam {__version__} data {fingerprint}"[:64], predictor.threshold,
                   str(predictor.metadata.get("threshold_rule") or ""))

    def applied(self, threshold: float, basis: str = "overall") -> ModelIdentity:
        """The identity as one prediction used it: its operating point (a view's own, or the overall one) and,
        where the model has several, which one applied."""
        if basis == "overall":
            return replace(self, threshold=threshold)
        return replace(self, threshold=threshold, threshold_rule=f"{basis} threshold applied; {self.threshold_rule}")

    @property
    def uid(self) -> str:
        """A stable UID for this model (the device observer UID): the same model always gets the same one."""
        return generate_uid(entropy_srcs=[MANUFACTURER, self.name, self.version])

    def parameters(self) -> list[str]:
        rule = f" ({self.threshold_rule})" if self.threshold_rule else ""
        return [f"threshold {self.threshold:.4f}{rule}"[:1024]]


def _highdicom():
    try:
        import highdicom
    except ImportError as exc:
        raise missing_extra("DICOM output", "highdicom", "dicom") from exc
    return highdicom


@contextmanager
def _quiet_about_patients():
    """highdicom warns about oddly formed patient names by quoting them: keep them out of the logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*")
        yield


def _equipment(model: ModelIdentity):
    hd = _highdicom()
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name, software_versions=model.version,
        contribution_description="pneumonia classification and class activation map")


def result_panel(image: np.ndarray, shown: ShownMap, probability: float, predicted: int, threshold: float,
                 resize_mode: str = "pad") -> np.ndarray:
    """(H, W) source image in [0, 1] and the model's (S, S) map -> (H', W', 3) uint8: the image beside
    its overlay at PANEL_SIDE pixels, the text banner below, the overlay's colour bar beside the banner. The map
    is drawn on the image as the network saw it."""
    gray = to_model_input(image, PANEL_SIDE, resize_mode)
    values = np.asarray(Image.fromarray(shown.values.astype(np.float32), mode="F").resize(
        (PANEL_SIDE, PANEL_SIDE), Image.Resampling.BILINEAR))
    overlay = overlay_map(gray, replace(shown, values=values))  # the relative map's colours clip it to [0, 1]
    pixels = np.concatenate([np.repeat(gray[..., None], 3, axis=-1), overlay], axis=1)
    banner = np.zeros((72, pixels.shape[1], 3), dtype=np.float32)
    banner[:, PANEL_SIDE:] = colour_bar_strip(PANEL_SIDE, shown, height=72)  # under the overlay it explains
    canvas = Image.fromarray(np.round(np.concatenate([pixels, banner]) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=22)
    call = "pneumonia" if predicted else "no pneumonia"
    draw.text((12, PANEL_SIDE + 8), f"pneumocam: {call}, probability {probability:.3f} (threshold {threshold:.3f})",
              fill=(255, 255, 255), font=font)
    draw.text((12, PANEL_SIDE + 40), f"{DISCLAIMER} - research use only", fill=(255, 64, 64), font=font)
    return np.asarray(canvas)


TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def patient_study_source(source: Dataset) -> Dataset:
    """A copy of `source` whose patient and study modules can be copied into a valid result: type 2 attributes
    the source lacks are added empty, and Patient's Age is made valid DICOM (RSNA's files say "51" where AS wants
    "051Y": the same age, written as the standard asks; any other malformed age is dropped, not copied)."""
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise PneumocamError(f"the source DICOM has no {keyword}: its results cannot refer to it")
    copy = Dataset(dict(source.items()))  # a new dict sharing the elements: replace one, never assign to it
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in copy:
            setattr(copy, keyword, None)
    age = str(copy.get("PatientAge", "") or "")
    if age and not re.fullmatch(r"\d{3}[DWMY]", age):
        del copy.PatientAge
        if age.isdigit() and len(age) <= 3:
            copy.PatientAge = f"{int(age):03d}Y"
    return copy


def display_orientation(source: Dataset) -> tuple[str, str]:
    """The source's Patient Orientation (both halves of the panel keep it), or, where the source does not say,
    a frontal chest film's conventional display: rows towards the patient's left, columns towards the feet."""
    orientation = [str(value) for value in (source.get("PatientOrientation") or [])]
    return (orientation[0], orientation[1]) if len(orientation) == 2 and all(orientation) else ("L", "F")


def result_uid(source: Dataset, model: ModelIdentity, kind: str) -> str:
    """The UID of one result object (or its series) derived from the source image's SOP Instance UID, the model
    and the kind of object: the same result made twice gets the same UID, so a retried store replaces instead of
    adding a duplicate (a PACS keeps one instance per SOP Instance UID)."""
    return generate_uid(entropy_srcs=[MANUFACTURER, str(source.SOPInstanceUID), model.name, model.version, kind])


def secondary_capture(source: Dataset, panel: np.ndarray, model: ModelIdentity):
    """The Secondary Capture of `panel` (uint8 RGB) in the source's Study."""
    hd = _highdicom()
    source = patient_study_source(source)
    uids = result_uid(source, model, "sc-series"), result_uid(source, model, "sc")
    number, description = SC_SERIES
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=panel, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=uids[0], series_number=number,
        sop_instance_uid=uids[1], instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=display_orientation(source), transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=[_equipment(model)], series_description=description,
        manufacturer_model_name=model.name, software_versions=model.version)
    sc.Laterality = ""  # type 2C: a chest is not a paired structure, so empty
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{DISCLAIMER}: pneumonia probability and class activation map"
    return sc


def structured_report(source: Dataset, probability: float, predicted: int, model: ModelIdentity):
    """The Comprehensive SR (TID 1500) of one prediction, referencing `source`."""
    hd = _highdicom()
    source = patient_study_source(source)
    uids = [result_uid(source, model, kind) for kind in ("sr-series", "sr", "sr-tracking")]
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                              parameters=model.parameters(), manufacturer=MANUFACTURER)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids[2], identifier="pneumonia classification"),
        finding_type=PNEUMONIA, algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(PNEUMONIA, PRESENT if predicted else ABSENT)],
        measurements=[hd.sr.Measurement(PROBABILITY, float(probability), NO_UNITS, algorithm_id=algorithm),
                      hd.sr.Measurement(THRESHOLD, float(model.threshold), NO_UNITS)])
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.uid, name=model.name, manufacturer_name=MANUFACTURER, model_name=model.version))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY, imaging_measurements=[group])
    number, description = SR_SERIES
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=uids[0], series_number=number,
        sop_instance_uid=uids[1], instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        contributing_equipment=[_equipment(model)], series_description=description)


def reported_probability(sr: Dataset) -> float:
    """Read the probability back out of a pneumocam SR (how a test or a PACS viewer finds it)."""
    for item in _content_items(sr):
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "NUM" and (name.CodeValue, name.CodingSchemeDesignator) == (PROBABILITY.value, "DCM"):
            return float(item.MeasuredValueSequence[0].NumericValue)
    raise PneumocamError("no probability in this structured report")


def _content_items(node: Dataset):
    for item in getattr(node, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def result_objects(source: Dataset, image: np.ndarray, prediction, model: ModelIdentity,
                   resize_mode: str = "pad", scale: str = "absolute") -> tuple[Dataset, Dataset]:
    """(Secondary Capture, Comprehensive SR) of one prediction (deploy.predictor.Prediction) on `source`, whose
    pixels are `image` (H, W) in [0, 1]."""
    model = model.applied(prediction.threshold, prediction.threshold_basis)
    panel = result_panel(image, ShownMap.of(prediction, scale), prediction.probability, prediction.predicted,
                         prediction.threshold, resize_mode)
    with _quiet_about_patients():
        return (secondary_capture(source, panel, model),
                structured_report(source, prediction.probability, prediction.predicted, model))


def save_dicom(dataset: Dataset, path: str | Path) -> Path:
    """Write a DICOM object as a Part 10 file, atomically."""
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_results(source_path: str | Path, prediction, model: ModelIdentity, out_dir: str | Path, stem: str,
                  resize_mode: str = "pad", scale: str = "absolute") -> tuple[Path, Path]:
    """Write OUT/STEM_sc.dcm and OUT/STEM_sr.dcm for a prediction on the DICOM file `source_path`."""
    sc, sr = result_objects(read_dicom_dataset(source_path), read_image(source_path), prediction, model, resize_mode,
                            scale)
    out_dir = Path(out_dir)
    return save_dicom(sc, out_dir / f"{stem}_sc.dcm"), save_dicom(sr, out_dir / f"{stem}_sr.dcm")

"""Patient sex, age, view position and finding: read from DICOM headers, a metadata.csv or RSNA's detailed
class table, judged, and normalised.

Values as the manifest stores them: sex "M" or "F", age in whole years (0-120), view as written
("PA", "AP", "LL"...), finding one of FINDINGS (RSNA's three classes; "not-normal" are the hard negatives:
abnormal films without pneumonia-like opacity), each "" where unknown. A malformed value (an age of 155,
which RSNA has, or a sex of "O") becomes "" and is counted, never an error: the images are still good.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from pneumocam.config import SUBGROUP_ATTRIBUTES
from pneumocam.errors import PneumocamError

FIELDS = ("sex", "age", "view", "finding")
METADATA_CSV = "metadata.csv"
RSNA_CLASSES = "stage_2_detailed_class_info.csv"
# RSNA's detailed classes -> the manifest's finding
FINDINGS = {"normal": "normal", "no lung opacity / not normal": "not-normal", "lung opacity": "opacity"}
# column names accepted in a metadata.csv, per field: DICOM keywords (as in rsna_1000) or plain names
COLUMNS = {"sex": ("PatientSex", "sex"), "age": ("PatientAge", "age"), "view": ("ViewPosition", "view"),
           "finding": ("class", "finding")}
HEADER_KEYWORDS = {"sex": "PatientSex", "age": "PatientAge", "view": "ViewPosition"}
MAX_AGE = 120
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.I)  # "045Y" (the standard's AS), "6M", or a bare "45"


def normalise(field: str, value: str | None) -> tuple[str, bool]:
    """(the normalised value or "", whether a given value was malformed)."""
    value = (value or "").strip()
    if not value:
        return "", False
    if field == "sex":
        sex = value.upper()[:1]
        return (sex, False) if sex in ("M", "F") and value.upper() in ("M", "F", "MALE", "FEMALE") else ("", True)
    if field == "age":
        match = _AGE.match(value)
        if not match:
            return "", True
        number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
        years = number if unit == "Y" else number // {"M": 12, "W": 52, "D": 365}[unit]
        return (str(years), False) if years <= MAX_AGE else ("", True)
    if field == "view":
        view = value.upper()
        return (view, False) if re.fullmatch(r"[A-Z]{1,8}", view) else ("", True)
    if field == "finding":
        finding = FINDINGS.get(value.lower()) or (value.lower() if value.lower() in FINDINGS.values() else "")
        return finding, not finding
    raise ValueError(f"unknown metadata field {field!r}")


def read_metadata_csv(path: Path, required: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """metadata.csv -> {patientId: {field: raw value}} for the fields among its columns; a field of `required`
    without a column is an error, judged by the header, so a CSV without rows is judged too."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "patientId" not in columns:
            raise PneumocamError(f"{path}: needs a patientId column, found {columns}")
        present = {field: next(c for c in names if c in columns) for field, names in COLUMNS.items()
                   if any(c in columns for c in names)}
        for field in required:
            if field not in present:
                raise PneumocamError(f"{path}: needs a {field} column ({' or '.join(COLUMNS[field])})")
        return {row["patientId"]: {field: row[column] for field, column in present.items()} for row in reader}


def read_views(path: str | Path) -> dict[str, str]:
    """A CSV of view positions (a metadata.csv) -> {patientId: normalised view} for the rows that state a valid
    one: how files without a DICOM header (PNG, JPEG, .npy) get their view's operating point."""
    path = Path(path)
    if not path.is_file():
        raise PneumocamError(f"{path}: no such file")
    found = read_metadata_csv(path, required=("view",))
    views = {patient: normalise("view", values["view"])[0] for patient, values in found.items()}
    return {patient: view for patient, view in views.items() if view}


def read_rsna_classes(path: Path) -> dict[str, dict[str, str]]:
    """RSNA's stage_2_detailed_class_info.csv -> {patientId: {"finding": raw class}}."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"patientId", "class"} <= set(reader.fieldnames or ()):
            raise PneumocamError(f"{path}: expected columns patientId and class, found {reader.fieldnames}")
        return {row["patientId"]: {"finding": row["class"]} for row in reader}


def read_source_metadata(source: Path) -> dict[str, dict[str, str]]:
    """{patientId: raw fields} from what lies beside a source's labels: metadata.csv (sex, age, view) and RSNA's
    detailed class table (finding). Either may be missing."""
    found: dict[str, dict[str, str]] = {}
    if not source.is_dir():
        return found
    for name, reader in ((METADATA_CSV, read_metadata_csv), (RSNA_CLASSES, read_rsna_classes)):
        if (source / name).is_file():
            for patient, values in reader(source / name).items():
                found.setdefault(patient, {}).update(values)
    return found


def from_header(header: dict) -> dict[str, str]:
    """Raw DICOM header strings (data.readers.HEADER_FIELDS) -> {field: raw value}."""
    return {field: header.get(keyword, "") for field, keyword in HEADER_KEYWORDS.items()}


class Judge:
    """Normalises each image's raw fields and counts what it finds, for stats.json."""

    def __init__(self):
        self.known = Counter()
        self.malformed = Counter()

    def __call__(self, raw: dict[str, str]) -> dict[str, str]:
        out = {}
        for field in FIELDS:
            value, bad = normalise(field, raw.get(field))
            out[field] = value
            self.known[field] += bool(value)
            self.malformed[field] += bad
        return out

    def summary(self) -> dict:
        return {"known": {f: self.known[f] for f in FIELDS}, "malformed": {f: self.malformed[f] for f in FIELDS}}


AGE_BANDS = ((0, 17, "0-17"), (18, 39, "18-39"), (40, 59, "40-59"), (60, 79, "60-79"), (80, 10**6, "80+"))


def age_band(age: str) -> str:
    """Whole years as the manifest stores them ("45") -> "40-59"; "" stays unknown."""
    if not str(age).strip():
        return ""
    years = int(float(age))
    return next(name for low, high, name in AGE_BANDS if low <= years <= high)


def attribute_values(rows: list[dict], attributes: tuple[str, ...] = SUBGROUP_ATTRIBUTES) -> dict[str, list[str]]:
    """Manifest rows (sex, age, view columns) -> {attribute: one value per row, "" where unknown}."""
    derive = {"sex": lambda r: r.get("sex", ""), "view": lambda r: r.get("view", ""),
              "finding": lambda r: r.get("finding", ""),
              "age_band": lambda r: age_band(r.get("age", ""))}
    return {a: [derive[a](r) or "" for r in rows] for a in attributes}

"""Find the images of a source data set and their labels, without decoding any pixels.

Each reader returns (items, rejected): one SourceItem per usable input file, and one
{"source", "reason"} row for every input file that cannot be used (e.g. an image with no label).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumocam.errors import PneumocamError

log = logging.getLogger(__name__)

RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_IMAGES = "stage_2_train_images"


@dataclass(frozen=True)
class SourceItem:
    source: str  # path of the input file
    patient: str
    label: int  # 0 = no pneumonia, 1 = pneumonia
    stem: str  # output file name without suffix, unique within the data set
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # (x, y, w, h) in source pixels
    split: str | None = None  # a split the source already fixes, else None
    array: np.ndarray | None = None  # in-memory image (for array sources such as MedMNIST)
    source_label: str | None = None  # how to name the source in the manifest, when not a path


def read_rsna_labels(csv_path: Path) -> dict[str, tuple[int, list]]:
    """stage_2_train_labels.csv -> {patientId: (Target, [(x, y, w, h), ...])}; validates every row."""
    labels: dict[str, tuple[int, list]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        required = {"patientId", "x", "y", "width", "height", "Target"}
        if not required <= set(reader.fieldnames or ()):
            raise PneumocamError(f"{csv_path}: expected columns {sorted(required)}, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                target = int(row["Target"])
                box = None
                if target == 1:
                    box = tuple(float(row[k]) for k in ("x", "y", "width", "height"))
            except ValueError as exc:
                raise PneumocamError(f"{csv_path}:{line}: malformed row ({exc})") from exc
            if target not in (0, 1):
                raise PneumocamError(f"{csv_path}:{line}: Target must be 0 or 1, got {target}")
            previous, boxes = labels.get(row["patientId"], (0, []))
            if box is not None:
                boxes.append(box)
            labels[row["patientId"]] = (max(previous, target), boxes)
    return labels


def discover_rsna(source: Path) -> tuple[list[SourceItem], list[dict]]:
    """RSNA challenge layout: SOURCE/stage_2_train_images/<patientId>.dcm + SOURCE/stage_2_train_labels.csv."""
    images_dir = source / RSNA_IMAGES
    if not images_dir.is_dir():
        raise PneumocamError(f"{images_dir}: image folder not found (expected the RSNA layout)")
    labels = read_rsna_labels(source / RSNA_LABELS)
    items, rejected = [], []
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files:
        patient = path.stem
        if path.suffix.lower() != ".dcm":
            rejected.append({"source": str(path), "reason": "not a .dcm file"})
        elif patient not in labels:
            rejected.append({"source": str(path), "reason": f"no row for {patient} in {RSNA_LABELS}"})
        else:
            target, boxes = labels[patient]
            items.append(SourceItem(str(path), patient, target, patient, tuple(boxes)))
    n_unmatched = len(labels) - len(items)
    if n_unmatched:
        log.info("%d labelled patients in %s have no image in %s", n_unmatched, RSNA_LABELS, images_dir)
    return items, rejected


SOURCE_FORMATS: dict[str, Callable[[Path], tuple[list[SourceItem], list[dict]]]] = {
    "rsna": discover_rsna,
}


def detect_format(source: Path) -> str:
    if (source / RSNA_LABELS).is_file():
        return "rsna"
    raise PneumocamError(
        f"{source}: unrecognised source layout; expected the RSNA layout "
        f"({RSNA_IMAGES}/ + {RSNA_LABELS}); pass --format to choose one of {sorted(SOURCE_FORMATS)}"
    )

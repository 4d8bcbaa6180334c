"""Find the images of a source data set and their labels, without decoding any pixels.

Each reader returns (items, rejected): one SourceItem per usable input file, and one
{"source", "reason"} row for every input file that cannot be used (e.g. an image with no label).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumocam.data.readers import SUPPORTED_SUFFIXES
from pneumocam.errors import PneumocamError

log = logging.getLogger(__name__)

RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_IMAGES = "stage_2_train_images"
# the challenge's DICOMs, and the JPEG/PNG conversions (often downsampled) that many copies of it hold
RSNA_SUFFIXES = (".dcm", ".jpg", ".jpeg", ".png")
RSNA_BOX_SPACE = 1024  # the challenge's boxes are given in the 1024-px space of its DICOMs


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
    # the split the source's own folders name, fixed or not (Kermany train/ without val/ is carved later);
    # prepare reports patients found in two of these, it never moves them
    origin_split: str | None = None
    # boxes are in a box_space x box_space pixel space and are scaled by the image's actual size / box_space;
    # None = boxes are in the image's own pixels
    box_space: float | None = None


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


def discover_rsna(source: Path, box_space: float = RSNA_BOX_SPACE) -> tuple[list[SourceItem], list[dict]]:
    """RSNA challenge layout: SOURCE/stage_2_train_images/<patientId>.{dcm,jpg,jpeg,png} + SOURCE/
    stage_2_train_labels.csv. Boxes are in box_space pixels (1024 in the challenge), whatever the images' size."""
    images_dir = source / RSNA_IMAGES
    if not images_dir.is_dir():
        raise PneumocamError(f"{images_dir}: image folder not found (expected the RSNA layout)")
    if box_space <= 0:
        raise PneumocamError(f"--box-space must be positive, got {box_space}")
    labels = read_rsna_labels(source / RSNA_LABELS)
    items, rejected, seen = [], [], {}
    # names and strings, not Path objects: a stat and Path comparisons per file cost the other core
    with os.scandir(images_dir) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    folder = str(images_dir)
    for name in names:
        path = os.path.join(folder, name)
        patient, suffix = os.path.splitext(name)
        if suffix.lower() not in RSNA_SUFFIXES:
            rejected.append({"source": path, "reason": f"not an RSNA image ({', '.join(RSNA_SUFFIXES)})"})
        elif patient not in labels:
            rejected.append({"source": path, "reason": f"no row for {patient} in {RSNA_LABELS}"})
        elif patient in seen:
            rejected.append({"source": path, "reason": f"a second image of {patient} (kept {seen[patient]})"})
        else:
            seen[patient] = name
            target, boxes = labels[patient]
            items.append(SourceItem(path, patient, target, patient, tuple(boxes), box_space=box_space))
    n_unmatched = len(labels) - len(items)
    if n_unmatched:
        log.info("%d labelled patients in %s have no image in %s", n_unmatched, RSNA_LABELS, images_dir)
    return items, rejected


DEFAULT_CLASS_MAP = {"normal": 0, "pneumonia": 1, "0": 0, "1": 1}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Kermany / Guangzhou names: person1946_bacteria_4874.jpeg, NORMAL2-IM-1427-0001.jpeg, IM-0115-0001.jpeg
PATIENT_PATTERNS = (re.compile(r"^(person\d+)_", re.I), re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.I))


def patient_from_name(stem: str) -> str:
    """The patient id in a Kermany-style file name, else the file stem (one image = one patient)."""
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def parse_class_map(text: str | None) -> dict[str, int]:
    """"NORMAL=0,PNEUMONIA=1,VIRUS=1" -> {"normal": 0, ...}; None -> the default (NORMAL/PNEUMONIA, 0/1)."""
    if not text:
        return dict(DEFAULT_CLASS_MAP)
    mapping = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if value.strip() not in ("0", "1") or not name.strip():
            raise PneumocamError(f"--class-map entries must look like NAME=0 or NAME=1, got {part!r}")
        mapping[name.strip().lower()] = int(value)
    return mapping


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover_class_folders(source: Path, class_map: dict[str, int] | None = None) -> tuple[list, list]:
    """<root>/[<split>/]<CLASS>/<image>: split folders (train/val/test) are kept when present; without a
    val folder, validation is carved out of train later (grouped by patient)."""
    class_map = class_map or dict(DEFAULT_CLASS_MAP)
    top = _class_dirs(source)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in top if d.name.lower() in SPLIT_NAMES}
    layout = list(split_dirs.items()) if split_dirs else [(None, source)]
    has_val = "val" in split_dirs
    items, rejected = [], []
    for split, root in layout:
        fixed = split if split in ("val", "test") or (split == "train" and has_val) else None
        for class_dir in _class_dirs(root):
            files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
            label = class_map.get(class_dir.name.lower())
            for path in files:
                if label is None:
                    rejected.append({"source": str(path), "reason": f"class folder {class_dir.name!r} is not in the "
                                     f"class map {sorted(class_map)} (see --class-map)"})
                elif path.suffix.lower() not in SUPPORTED_SUFFIXES - {""}:
                    rejected.append({"source": str(path), "reason": f"unsupported file type {path.suffix!r}"})
                else:
                    stem = "__".join(path.relative_to(source).with_suffix("").parts)
                    items.append(SourceItem(str(path), patient_from_name(path.stem), label, stem, split=fixed,
                                            origin_split=split))
    return items, rejected


def discover_medmnist(source: Path) -> tuple[list[SourceItem], list[dict]]:
    """A MedMNIST .npz (train/val/test _images and _labels; 1 = pneumonia). Its splits are kept."""
    path = source if source.is_file() else next(iter(sorted(source.glob("*.npz"))), None)
    if path is None:
        raise PneumocamError(f"{source}: no .npz file found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PneumocamError(f"{path}: not a readable .npz archive ({exc})") from exc
    items, rejected = [], []
    with archive:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in archive.files]
        if not splits:
            raise PneumocamError(f"{path}: no MedMNIST keys (expected train_images, train_labels, ...)")
        for split in splits:
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            if len(images) != len(labels):
                raise PneumocamError(f"{path}: {split}_images has {len(images)} entries but {split}_labels "
                                     f"{len(labels)}")
            scale = 255.0 if images.dtype == np.uint8 else 1.0
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                name = f"{path.name}:{split}[{i}]"
                if int(label) not in (0, 1) or image.ndim not in (2, 3):
                    rejected.append({"source": name, "reason": f"label {label} or shape {image.shape} not usable"})
                    continue
                gray = image.mean(axis=-1) if image.ndim == 3 else image
                items.append(SourceItem(str(path), f"{split}-{i}", int(label), f"{split}_{i:05d}", split=split,
                                        array=(gray / scale).astype(np.float32), source_label=name,
                                        origin_split=split))
    return items, rejected


SOURCE_FORMATS: dict[str, Callable[..., tuple[list[SourceItem], list[dict]]]] = {
    "rsna": discover_rsna,
    "folders": discover_class_folders,
    "medmnist": discover_medmnist,
}


def discover(source: Path, fmt: str, class_map: str | None = None,
             box_space: float | None = None) -> tuple[list[SourceItem], list[dict]]:
    """The items and rejections of `source` read as `fmt`; class_map ("NAME=0,...") applies to class folders,
    box_space (None = the challenge's 1024) to the RSNA layout."""
    if fmt == "folders":
        return discover_class_folders(source, parse_class_map(class_map))
    if fmt == "rsna":
        return discover_rsna(source, box_space or RSNA_BOX_SPACE)
    return SOURCE_FORMATS[fmt](source)


def detect_format(source: Path) -> str:
    if source.is_file() and source.suffix == ".npz":
        return "medmnist"
    if (source / RSNA_LABELS).is_file():
        return "rsna"
    if source.is_dir() and list(source.glob("*.npz")) and not _class_dirs(source):
        return "medmnist"
    if source.is_dir() and _class_dirs(source):
        return "folders"
    raise PneumocamError(
        f"{source}: unrecognised source layout; expected the RSNA layout ({RSNA_IMAGES}/ + {RSNA_LABELS}), "
        f"class folders (<root>/[train|val|test/]<CLASS>/*) or a MedMNIST .npz; "
        f"pass --format to choose one of {sorted(SOURCE_FORMATS)}"
    )

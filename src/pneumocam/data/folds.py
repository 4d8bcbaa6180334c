"""Patient-grouped, stratified k-fold cross-validation over a prepared data set, and the fold folders to train on.

A validation split carved once from a small set is noisy and, when it also picks the checkpoint or the recipe,
optimistic. Recipes are compared here on the same k folds: every patient of the eligible images (e.g. the
adult RSNA images with view, sex and age) is in exactly one validation fold, the folds keep the view x label
mix of the whole set, and images that must never be scored (easy negatives from another source, other
populations) only ever train.

A fold folder is a prepared data set like any other (Processed/{train,val}/{0,1}/*.npy, manifest.csv, boxes.csv,
stats.json), made of links to the source folder's files, so `pneumocam train`, `evaluate` and `calibrate` run on
it unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneumocam.data.datasets import data_fingerprint, manifest_rows, read_fingerprint
from pneumocam.errors import PneumocamError
from pneumocam.files import read_csv, write_csv, write_json

FOLDS_FILE = "fold.json"


def assign_folds(rows: list[dict], k: int, seed: int = 0, stratify: tuple[str, ...] = ("view", "label"),
                 eligible: Callable[[dict], bool] = lambda row: True) -> dict[str, int]:
    """{file: fold in 0..k-1} for the eligible manifest rows: grouped by patient, stratified by the `stratify`
    columns (a patient's stratum is that of their first image; "" is a value of its own), seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    chosen = [r for r in rows if eligible(r)]
    if k < 2:
        raise PneumocamError(f"cross-validation needs at least 2 folds, got {k}")
    patients = sorted({r["patient"] for r in chosen})
    if len(patients) < k:
        raise PneumocamError(f"{len(patients)} patients cannot fill {k} folds")
    strata = {}
    for r in chosen:
        strata.setdefault(r["patient"], "|".join(str(r.get(c, "")) for c in stratify))
    stratum_index = {name: i for i, name in enumerate(sorted(set(strata.values())))}
    patient_index = {p: i for i, p in enumerate(patients)}
    y = np.array([stratum_index[strata[r["patient"]]] for r in chosen])
    groups = np.array([patient_index[r["patient"]] for r in chosen])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = {}
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(chosen)), y, groups)):
        for i in held:
            folds[chosen[i]["file"]] = fold
    return folds


def write_fold(data_dir: str | Path, out_dir: str | Path, folds: dict[str, int], fold: int,
               train_also: Callable[[dict], bool] = lambda row: False) -> Path:
    """OUT: a prepared data set whose val split is fold `fold` of `folds` and whose train split is the other
    folds plus the rows of DATA's own train split that `train_also` accepts. Files are symbolic links into DATA.
    Rerunning with the same arguments leaves a finished folder as it is (fold.json records what it holds)."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    rows = manifest_rows(data_dir)
    if not rows:
        raise PneumocamError(f"{data_dir}: no manifest.csv (prepare the data first)")
    if fold not in set(folds.values()):
        raise PneumocamError(f"fold {fold} is not among the folds {sorted(set(folds.values()))}")
    kept = []
    for row in rows.values():
        if row["file"] in folds:
            split = "val" if folds[row["file"]] == fold else "train"
        elif row["split"] == "train" and train_also(row):
            split = "train"
        else:
            continue
        kept.append({**row, "split": split, "file": f"Processed/{split}/{row['label']}/{Path(row['file']).name}",
                     "origin": row["file"]})
    description = {"data_dir": str(data_dir), "data_fingerprint": read_fingerprint(data_dir), "fold": fold,
                   "k": len(set(folds.values())), "fingerprint": data_fingerprint(kept)}
    done = out_dir / FOLDS_FILE
    if done.exists() and json.loads(done.read_text()) == description:
        return out_dir
    if (out_dir / "Processed").exists():
        raise PneumocamError(f"{out_dir}: holds another fold; choose an empty folder")
    for row in kept:
        link = out_dir / row["file"]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(data_dir / row["origin"], link)
    origin_of = {row["origin"]: row["file"] for row in kept}
    boxes = [{**b, "file": origin_of[b["file"]]} for b in _read_boxes(data_dir) if b["file"] in origin_of]
    write_csv(out_dir / "boxes.csv", ["file", "patient", "x", "y", "width", "height"], boxes)
    columns = [c for c in next(iter(rows.values())) if c != "origin"]
    write_csv(out_dir / "manifest.csv", columns, [{c: r[c] for c in columns} for r in kept])
    stats = json.loads((data_dir / "stats.json").read_text()) if (data_dir / "stats.json").exists() else {}
    counts = {s: {lab: sum(r["split"] == s and r["label"] == lab for r in kept) for lab in ("0", "1")}
              for s in ("train", "val", "test")}
    write_json(out_dir / "stats.json", {**stats, "counts": counts, "n_images": len(kept), "n_boxes": len(boxes),
                                        "fingerprint": description["fingerprint"], "fold_of": description})
    write_json(done, description)
    return out_dir


def _read_boxes(data_dir: Path) -> list[dict]:
    path = data_dir / "boxes.csv"
    return read_csv(path) if path.exists() else []


def summarize_folds(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min and max over folds (None where a fold could not define it)."""
    known = np.array([v for v in values if v is not None], dtype=float)
    if known.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n_folds": 0}
    return {"mean": float(known.mean()), "sd": float(known.std(ddof=1)) if known.size > 1 else 0.0,
            "min": float(known.min()), "max": float(known.max()), "n_folds": int(known.size)}

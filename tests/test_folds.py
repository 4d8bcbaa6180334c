from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pneumocam.data import (
    assign_folds,
    dataset_files,
    dataset_labels,
    manifest_rows,
    split_dataset,
    summarize_folds,
    write_fold,
)
from pneumocam.errors import PneumocamError


def _rows(n_patients: int = 90) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_patients):
        view = "AP" if p % 2 else "PA"
        label = int(rng.random() < (0.4 if view == "AP" else 0.1))
        for image in range(1 + p % 3):  # one to three images per patient
            rows.append({"file": f"f{p}_{image}", "patient": f"p{p}", "label": str(label), "view": view})
    rows.append({"file": "easy", "patient": "other", "label": "0", "view": "", "source": "covidx"})
    return rows


def test_folds_group_patients_keep_the_view_label_mix_and_leave_out_the_ineligible():
    rows = _rows()
    folds = assign_folds(rows, k=3, seed=0, eligible=lambda r: r.get("source") != "covidx")
    assert "easy" not in folds and sorted(set(folds.values())) == [0, 1, 2]
    by_patient = {}
    for r in rows[:-1]:
        by_patient.setdefault(r["patient"], set()).add(folds[r["file"]])
    assert all(len(f) == 1 for f in by_patient.values())  # a patient is never in two folds
    whole = Counter((r["view"], r["label"]) for r in rows[:-1])
    for fold in range(3):
        inside = Counter((r["view"], r["label"]) for r in rows[:-1] if folds[r["file"]] == fold)
        for stratum, n in whole.items():
            assert abs(inside[stratum] / sum(inside.values()) - n / len(rows[:-1])) < 0.08
    assert folds == assign_folds(rows, k=3, seed=0, eligible=lambda r: r.get("source") != "covidx")  # seeded
    with pytest.raises(PneumocamError, match="at least 2 folds"):
        assign_folds(rows, k=1)


def test_a_fold_folder_is_a_prepared_data_set_with_that_fold_as_validation(phantom_data, tmp_path):
    rows = list(manifest_rows(phantom_data).values())
    folds = assign_folds(rows, k=2, seed=0, eligible=lambda r: r["split"] == "train")
    out = write_fold(phantom_data, tmp_path / "fold1", folds, 1, train_also=lambda r: False)
    val = split_dataset(out, "val")
    train = split_dataset(out, "train")
    in_val = {f for f, k in folds.items() if k == 1}
    assert len(val) == len(in_val) and len(train) == len(folds) - len(in_val)
    assert set(dataset_labels(val).tolist()) <= {0, 1}
    assert sorted(dataset_files(val, out)) == sorted(f for f in manifest_rows(out) if f.startswith("Processed/val/"))
    fold_rows = manifest_rows(out)
    assert {Path(f).name for f in fold_rows if fold_rows[f]["split"] == "val"} == {Path(f).name for f in in_val}
    assert write_fold(phantom_data, tmp_path / "fold1", folds, 1) == out  # finished: left as it is
    with pytest.raises(PneumocamError, match="holds another fold"):
        write_fold(phantom_data, tmp_path / "fold1", folds, 0)
    assert summarize_folds([0.8, 0.9, None])["mean"] == pytest.approx(0.85)



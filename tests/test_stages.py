"""evaluate and cam stages end to end on the tiny checkpoint."""

import csv
import json

import numpy as np

from pneumocam.evaluate import EvalConfig, evaluate
from pneumocam.explain import CamConfig, explain_files

REQUIRED = {"n", "n_positive", "threshold", "accuracy", "precision", "recall", "f1", "specificity", "auroc", "auprc",
            "brier", "confusion", "ci95"}


def test_evaluate_writes_metrics_and_predictions(tiny_checkpoint, phantom_data, tmp_path):
    metrics = evaluate(tiny_checkpoint, phantom_data, tmp_path, EvalConfig(bootstrap=50))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED <= set(on_disk) and on_disk["n"] == metrics["n"] == 6
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    # predictions.csv recomputes to metrics.json
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["prediction"]) for r in rows])
    assert on_disk["confusion"]["tp"] == int(((preds == 1) & (labels == 1)).sum())
    assert on_disk["accuracy"] == (preds == labels).mean()
    assert on_disk["train_data_fingerprint"] == on_disk["data_fingerprint"]


def test_cam_writes_overlay_and_maps_per_image(tiny_checkpoint, phantom_data, tmp_path):
    inputs = [phantom_data / "Processed" / "val"]
    report = explain_files(tiny_checkpoint, inputs, tmp_path, CamConfig())
    assert len(report.rows) == 6 and report.failures == []
    for row in report.rows:
        assert (tmp_path / row["png"]).stat().st_size > 1000
        raw = np.load(tmp_path / row["cam7x7"])
        up = np.load(tmp_path / row["cam224"])
        assert raw.shape == (7, 7) and up.shape == (224, 224) and 0 <= up.min() and up.max() <= 1
    with open(tmp_path / "cams.csv") as f:
        assert len(list(csv.DictReader(f))) == 6

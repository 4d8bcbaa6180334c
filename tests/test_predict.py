import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumocam.commands.predict import run_predict
from pneumocam.config import PredictConfig


def test_predict_folder_glob_and_bad_file(tiny_checkpoint, phantom_data, tmp_path):
    (tmp_path / "in" / "nested").mkdir(parents=True)
    files = sorted((phantom_data / "Processed" / "val").rglob("*.npy"))[:3]
    for i, f in enumerate(files):
        (tmp_path / "in" / ("nested" if i else "") / f.name).write_bytes(f.read_bytes())
    (tmp_path / "in" / "nested" / "bad.png").write_text("not an image")
    rows, failures, text = run_predict(tiny_checkpoint, [str(tmp_path / "in"), str(tmp_path / "nothing*.dcm")], None)
    assert len(rows) == 3 and all(0 <= r["probability"] <= 1 for r in rows)
    assert {f["reason"] for f in failures} >= {"no files match this pattern"}
    assert any(f["source"].endswith("bad.png") for f in failures)
    assert text.splitlines()[0].startswith("source,probability") and len(text.splitlines()) == 4


def test_predict_to_folder_with_overlays_and_json(tiny_checkpoint, phantom_data, tmp_path):
    files = [str(p) for p in sorted((phantom_data / "Processed" / "val").rglob("*.npy"))[:2]]
    rows, failures, _ = run_predict(tiny_checkpoint, files, tmp_path, PredictConfig(overlays=True,
                                                                                     output_format="json"))
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert saved == rows and failures == []
    from PIL import Image

    for row in saved:  # the overlay with its colour bar burned in below it: blue at the left end, red at the right
        with Image.open(tmp_path / row["overlay"]) as png:
            pixels = np.asarray(png.convert("RGB")).astype(int)
        assert pixels.shape == (224 + 44, 224, 3)
        bar = pixels[224 + 6]
        assert bar[20, 2] > bar[20, 0] + 60 and bar[203, 0] > bar[203, 2] + 60


@pytest.mark.slow
def test_cli_predict_exit_codes(tiny_checkpoint, phantom_data, tmp_path):
    good = str(next((phantom_data / "Processed").rglob("*.npy")))
    command = [sys.executable, "-m", "pneumocam.cli", "predict", str(tiny_checkpoint)]
    ok = subprocess.run([*command, good], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and len(list(csv.DictReader(ok.stdout.splitlines()))) == 1
    partial = subprocess.run([*command, good, str(tmp_path / "missing.dcm"), "--threshold", "0.2"],
                             capture_output=True, text=True, timeout=300)
    assert partial.returncode == 3 and "missing.dcm" in partial.stderr and "Traceback" not in partial.stderr
    row = next(csv.DictReader(partial.stdout.splitlines()))
    assert float(row["threshold"]) == 0.2 and int(row["predicted"]) == int(float(row["probability"]) >= 0.2)
    failed = subprocess.run([*command, str(tmp_path / "missing.dcm")], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert np.isfinite(float(row["logit"]))


@pytest.mark.slow
def test_predict_over_pydicom_test_files_keeps_good_work_and_lists_every_failure(tiny_checkpoint, phantom_data,
                                                                                  tmp_path):
    import pydicom.data

    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
    good = str(next((phantom_data / "Processed").rglob("*.npy")))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pneumocam.cli", "predict", str(tiny_checkpoint), good,
                             *map(str, files), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    predicted = list(csv.DictReader(open(out / "predictions.csv")))
    failed = list(csv.DictReader(open(out / "failed.csv")))
    assert good in {r["source"] for r in predicted}
    assert any(r["source"].endswith("badVR.dcm") and "1A" in r["reason"] for r in failed)
    assert all(r["reason"] for r in failed) and len(predicted) + len(failed) == len(files) + 1


def test_a_views_csv_gives_files_without_a_header_their_views_threshold(tiny_checkpoint, tmp_path):
    """PNG/JPEG films (rsna_1000's, say) state no view; --views supplies it, so predict and cam apply the
    per-view operating point calibrate stored, and a file the CSV does not name falls back to the overall one."""
    import torch
    from PIL import Image

    from pneumocam.commands.cam import explain_files
    from pneumocam.config import CamConfig

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["pneumocam"]["thresholds_by_view"] = {"AP": 1e-4, "PA": 0.9999}  # every AP film positive, no PA
    torch.save(checkpoint, tmp_path / "per-view.ckpt")
    (tmp_path / "films").mkdir()
    for name in ("ap-film", "pa-film", "unlisted"):
        Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "films" / f"{name}.png")
    (tmp_path / "metadata.csv").write_text("patientId,ViewPosition\nap-film,AP\npa-film,pa\n")
    rows, failures, _ = run_predict(tmp_path / "per-view.ckpt", [str(tmp_path / "films")], tmp_path / "out",
                                    PredictConfig(views=str(tmp_path / "metadata.csv"), backend="torch"))
    assert not failures
    by_name = {Path(r["source"]).stem: r for r in rows}
    assert (by_name["ap-film"]["view"], by_name["ap-film"]["threshold_basis"], by_name["ap-film"]["predicted"]) \
        == ("AP", "view AP", 1)
    assert (by_name["pa-film"]["view"], by_name["pa-film"]["threshold_basis"], by_name["pa-film"]["predicted"]) \
        == ("PA", "view PA", 0)
    assert by_name["unlisted"]["threshold_basis"] == "overall (view unknown)"
    with open(tmp_path / "out" / "predictions.csv") as f:
        assert {r["view"] for r in csv.DictReader(f)} == {"AP", "PA", ""}
    explain_files(tmp_path / "per-view.ckpt", [tmp_path / "films"], tmp_path / "cams",
                  CamConfig(views=str(tmp_path / "metadata.csv"), workers=1))
    with open(tmp_path / "cams" / "cams.csv") as f:
        cams = {Path(r["source"]).stem: r for r in csv.DictReader(f)}
    assert [cams[n]["threshold_basis"] for n in ("ap-film", "pa-film", "unlisted")] == \
        ["view AP", "view PA", "overall (view unknown)"]

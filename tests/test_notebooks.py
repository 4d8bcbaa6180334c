"""Execute the three notebooks top to bottom with small parameters (nbclient), as CI does."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ORDER = ["1_train_model.ipynb", "2_evaluate_model.ipynb", "3_interpretability.ipynb"]


def _execute(name: str, tmp_path):
    """Run one notebook top to bottom in tmp_path; fail on the first error cell; return the executed copy."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / name)  # the executed copy, kept for inspection
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    return nb


def test_notebooks_are_committed_without_outputs():
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name


@pytest.mark.slow
def test_notebooks_run_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOCAM_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("PNEUMOCAM_NB_N_IMAGES", "60")
    monkeypatch.setenv("PNEUMOCAM_NB_EPOCHS", "1")
    for name in ORDER:
        nb = _execute(name, tmp_path)
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 3  # notebook 3 shows the step-by-step CAM, the gallery and Grad-CAM


@pytest.mark.slow
def test_notebooks_run_on_real_rsna_images_with_the_bundled_model(tmp_path, monkeypatch):
    import shutil

    from conftest import SHARED_DATA, require
    from pneumocam.commands.prepare import prepare
    from pneumocam.config import PrepareConfig
    from pneumocam.files import read_csv

    source = require(SHARED_DATA / "rsna_1000")
    subset = tmp_path / "rsna_subset"
    (subset / "stage_2_train_images").mkdir(parents=True)
    shutil.copy(source / "stage_2_train_labels.csv", subset)
    rows = read_csv(source / "stage_2_train_labels.csv")
    positives = sorted({r["patientId"] for r in rows if r["Target"] == "1"})[:16]
    negatives = sorted({r["patientId"] for r in rows if r["Target"] == "0"})[:16]
    for patient in positives + negatives:
        shutil.copy(source / "stage_2_train_images" / f"{patient}.jpg", subset / "stage_2_train_images")
    prepare(subset, tmp_path / "data", PrepareConfig(val_fraction=0.25, workers=1))
    monkeypatch.setenv("PNEUMOCAM_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("PNEUMOCAM_NB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PNEUMOCAM_NB_CHECKPOINT", "pneumocam-cxr")
    monkeypatch.setenv("PNEUMOCAM_NB_EPOCHS", "1")
    for name in ORDER:
        _execute(name, tmp_path)

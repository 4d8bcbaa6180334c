import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, require
from pneumocam.config import QuantizeConfig
from pneumocam.deploy import Predictor, int8_path, read_description, weights_fingerprint
from pneumocam.errors import PneumocamError

pytest.importorskip("onnxruntime", reason="INT8 quantisation needs pneumocam[fast]")


@pytest.fixture(scope="module")
def real_images():
    """33 real films: the 17 RSNA DICOMs (adults) and Kermany's 16 official val JPEGs (children)."""
    return [require(SHARED_DATA / "rsna_sample" / "stage_2_train_images"), require(SHARED_DATA / "kermany_sample")]


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PNEUMOCAM_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def made(int8_cache, real_images):
    from pneumocam.commands.quantize import quantize_model

    return quantize_model("pneumocam-cxr", real_images, QuantizeConfig(count=20, check_count=13))


@pytest.mark.slow
def test_the_int8_copy_stays_close_to_float32_on_real_films(made):
    check = made["check"]
    assert check["n"] == 13
    assert check["max_abs_probability_difference"] < 0.02, check["worst"]
    assert check["calls_changed"] == 0
    assert check["min_cam_spearman"] >= 0.98


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime-int8", "openvino-int8"])
def test_the_int8_cam_still_explains_its_logit_exactly(made, backend):
    pytest.importorskip(backend.removesuffix("-int8"), reason=f"{backend} needs pneumocam[fast]")

    predictor = Predictor.from_checkpoint("pneumocam-cxr", backend=backend)
    images = [predictor.load(f) for f in made["calibration"]["files"][:4]]
    logits, raw, *_ = predictor.forward(images)
    bias = float(predictor.net.fc.bias)
    assert np.abs(raw.mean(axis=(1, 2)) + bias - logits).max() < 1e-4


@pytest.mark.slow
def test_the_copy_is_cached_with_what_it_was_calibrated_on(made, real_images):
    import onnx

    from pneumocam.commands.quantize import quantize_model

    path = int8_path(Predictor.from_checkpoint("pneumocam-cxr").net)
    assert made["path"] == str(path) and not made["cached"]
    description = read_description(path)
    assert description["calibration"]["count"] == 20 and len(set(description["calibration"]["files"])) == 20
    assert not set(description["calibration"]["files"]) & {w["image"] for w in description["check"]["worst"]}
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["pneumocam"])["calibration"]["files"] == description["calibration"]["files"]
    before = path.stat().st_mtime_ns
    again = quantize_model("pneumocam-cxr", real_images, QuantizeConfig(count=20, check_count=13))
    assert again["cached"] and path.stat().st_mtime_ns == before  # made once, not at every start


def test_an_int8_backend_without_a_copy_says_how_to_make_it(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOCAM_CACHE", str(tmp_path))
    with pytest.raises(PneumocamError, match="run `pneumocam quantize MODEL IMAGES...` first"):
        Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime-int8")


def test_the_copy_belongs_to_one_set_of_weights(tiny_checkpoint):
    net = Predictor.from_checkpoint(tiny_checkpoint).net
    other = Predictor.from_checkpoint("pneumocam-cxr").net
    assert weights_fingerprint(net) == weights_fingerprint(Predictor.from_checkpoint(tiny_checkpoint).net)
    assert int8_path(net) != int8_path(other)
    with torch.no_grad():
        net.fc.bias += 1e-3
    assert weights_fingerprint(net) != weights_fingerprint(Predictor.from_checkpoint(tiny_checkpoint).net)


def test_too_few_calibration_images_is_a_clear_error(tiny_checkpoint, rsna_sample, tmp_path, monkeypatch):
    from pneumocam.commands.quantize import quantize_model

    monkeypatch.setenv("PNEUMOCAM_CACHE", str(tmp_path))
    few = sorted((rsna_sample / "stage_2_train_images").glob("*.dcm"))[:5]
    with pytest.raises(PneumocamError, match="5 readable calibration images .* at least 16"):
        quantize_model(tiny_checkpoint, few)
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.slow
def test_quantize_then_predict_int8_from_the_command_line(tiny_checkpoint, real_images, tmp_path):
    env = {**os.environ, "PNEUMOCAM_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "pneumocam.cli"]
    made = subprocess.run([*cli, "quantize", str(tiny_checkpoint), *map(str, real_images), "--count", "16",
                           "--check-count", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    assert "from 16 calibration images" in made.stdout and "calls changed" in made.stdout
    predicted = subprocess.run([*cli, "predict", str(tiny_checkpoint), str(real_images[0]), "--backend",
                                "onnxruntime-int8", "--format", "json"], capture_output=True, text=True, env=env,
                               timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 17

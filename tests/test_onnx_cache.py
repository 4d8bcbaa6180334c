"""The ONNX backends' cache: made on first use, read without torch afterwards, never stale."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import RSNA_SAMPLE, require
from pneumocam.deploy import Predictor, cache_folder, cache_key, load_cached

pytest.importorskip("onnxruntime", reason="the ONNX backends need pneumocam[fast]")

# a fresh interpreter: start from the cache, predict, say whether torch was imported
FRESH_START = """
import json, sys
from pneumocam.deploy.predictor import Predictor
predictor = Predictor.from_checkpoint(sys.argv[1], backend="onnxruntime")
predictions, _ = predictor.predict_files(sys.argv[2:])
print(json.dumps({"torch": "torch" in sys.modules, "logits": [p.logit for p in predictions],
                  "evidence": [float(p.evidence.mean()) for p in predictions]}))
"""


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOCAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _films(n: int = 3) -> list[str]:
    return [str(p) for p in sorted((require(RSNA_SAMPLE) / "stage_2_train_images").glob("*.dcm"))[:n]]


def test_the_first_start_caches_and_later_starts_predict_the_same_without_torch(tiny_checkpoint, cache):
    films = _films()
    eager, _ = Predictor.from_checkpoint(tiny_checkpoint).predict_files(films)
    assert load_cached(tiny_checkpoint) is None
    first, _ = Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime").predict_files(films)
    assert (cache_folder(tiny_checkpoint) / "model.onnx").is_file()
    fresh = subprocess.run([sys.executable, "-c", FRESH_START, str(tiny_checkpoint), *films], capture_output=True,
                           text=True, check=True, env={**os.environ, "PNEUMOCAM_CACHE": str(cache)})
    later = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert later["torch"] is False
    assert np.allclose(later["logits"], [p.logit for p in eager], atol=1e-4)
    assert np.allclose([p.logit for p in first], [p.logit for p in eager], atol=1e-4)
    assert np.allclose(later["evidence"], [float(p.evidence.mean()) for p in eager], atol=1e-4)


def test_a_cached_start_keeps_the_checkpoints_settings_and_loads_torch_only_for_gradients(tiny_checkpoint, cache):
    eager = Predictor.from_checkpoint(tiny_checkpoint)
    Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    cached = Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    assert cached._net is None and cached.backend == "onnxruntime"
    assert (cached.threshold, cached.contract, cached.normalization) == (eager.threshold, eager.contract,
                                                                         eager.normalization)
    assert np.allclose(cached.head_weight, eager.head_weight) and cached.head_bias == pytest.approx(eager.head_bias)
    image = [np.full((224, 224), 0.5, np.float32)]
    gradient = cached.predict_arrays(image, method="gradcam")[0]  # loads the network on first use
    assert cached._net is not None and gradient.cam.shape == (224, 224)
    assert np.allclose(gradient.cam, eager.predict_arrays(image, method="gradcam")[0].cam, atol=1e-5)


def test_a_changed_checkpoint_gets_an_entry_of_its_own(tiny_checkpoint, cache, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["pneumocam"]["threshold"] = 0.37
    changed = tmp_path / "changed.ckpt"
    torch.save(checkpoint, changed)
    assert cache_key(changed) != cache_key(tiny_checkpoint)
    Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    assert Predictor.from_checkpoint(changed, backend="onnxruntime").threshold == 0.37
    assert Predictor.from_checkpoint(changed, backend="onnxruntime").threshold == 0.37  # from its own entry


def test_an_unreadable_entry_is_remade_and_an_unwritable_cache_only_warns(tiny_checkpoint, cache, monkeypatch,
                                                                            caplog, tmp_path):
    Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    (cache_folder(tiny_checkpoint) / "model.json").write_text("{not json")
    again = Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    assert "remaking it" in caplog.text and load_cached(tiny_checkpoint) is not None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("PNEUMOCAM_CACHE", str(blocked))  # a file where the folder should be
    unwritable = Predictor.from_checkpoint(tiny_checkpoint, backend="onnxruntime")
    assert "could not cache the ONNX export" in caplog.text
    image = [np.full((224, 224), 0.3, np.float32)]
    assert unwritable.forward(image).logits == pytest.approx(again.forward(image).logits, abs=1e-5)


def test_a_missing_checkpoint_still_says_what_is_wrong(cache, tmp_path):
    from pneumocam.errors import PneumocamError

    with pytest.raises(PneumocamError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "nothing.ckpt", backend="onnxruntime")

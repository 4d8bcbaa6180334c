import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, require
from pneumocam.deploy import Predictor
from pneumocam.errors import PneumocamError
from pneumocam.model import BUNDLED_MODELS, PneumoniaNet, bundle, load_checkpoint, resolve_checkpoint


@pytest.mark.slow
def test_bundle_is_float16_loads_safely_and_predicts_like_its_source(tiny_checkpoint, tmp_path):
    out = bundle(tiny_checkpoint, tmp_path / "m.pt", {"recipe": "test"})
    raw = torch.load(out, weights_only=True)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert "optimizer_states" not in raw and raw["pneumocam"]["model_card"] == {"recipe": "test"}
    source = load_checkpoint(tiny_checkpoint)["pneumocam"]["data_dir"]
    assert source.startswith("/") and raw["pneumocam"]["data_dir"] == ".../" + source.rsplit("/", 1)[-1]
    images = [np.random.default_rng(i).random((224, 224), dtype=np.float32) for i in range(3)]
    full = Predictor.from_checkpoint(tiny_checkpoint).predict_arrays(images, cam=False)
    half = Predictor.from_checkpoint(out).predict_arrays(images, cam=False)
    assert [p.logit for p in half] == pytest.approx([p.logit for p in full], abs=0.05)
    assert next(Predictor.from_checkpoint(out).net.parameters()).dtype == torch.float32


def test_training_can_start_from_a_pneumocam_checkpoint(tiny_checkpoint):
    net = PneumoniaNet(str(tiny_checkpoint))
    state = load_checkpoint(tiny_checkpoint)["state_dict"]
    assert torch.equal(net.fc.weight, state["net.fc.weight"])
    assert torch.equal(net.conv1.weight, state["net.feature_map.0.weight"])


def test_unknown_name_and_a_file_of_that_name(tmp_path, monkeypatch):
    with pytest.raises(PneumocamError, match="checkpoint not found.*pneumocam-cxr"):
        load_checkpoint(tmp_path / "nope.ckpt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pneumocam-cxr").write_bytes(b"x")  # a local file of a bundled model's name wins
    assert resolve_checkpoint("pneumocam-cxr").resolve() == tmp_path / "pneumocam-cxr"


def test_bundled_model_loads_by_name_weights_only_and_predicts_a_real_xray(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr("socket.socket.connect", offline)
    checkpoint = load_checkpoint("pneumocam-cxr")  # torch.load(weights_only=True) inside
    card = checkpoint["pneumocam"]["model_card"]
    assert card["recipe"] and card["train_command"].startswith("pneumocam train")
    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    image = require(SHARED_DATA / "rsna_sample" / "stage_2_train_images")
    predictions, failures = predictor.predict_files(sorted(image.glob("*.dcm"))[:2])
    assert not failures and len(predictions) == 2
    assert all(0 <= p.probability <= 1 and p.cam.shape == (224, 224) for p in predictions)
    assert set(BUNDLED_MODELS) == {"pneumocam-cxr", "pneumocam-cxr@1"}


def test_both_versions_load_by_name_offline_and_version_2_has_a_threshold_and_calibration_per_view(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr("socket.socket.connect", offline)
    latest, first = load_checkpoint("pneumocam-cxr"), load_checkpoint("pneumocam-cxr@1")
    assert latest["pneumocam"]["model_card"]["version"] == 2 and "version" not in first["pneumocam"]["model_card"]
    assert set(latest["pneumocam"]["thresholds_by_view"]) == set(latest["pneumocam"]["calibration_by_view"]) == \
        {"AP", "PA"}
    assert "thresholds_by_view" not in first["pneumocam"] and "calibration_by_view" not in first["pneumocam"]
    assert first["pneumocam"]["calibration"]["temperature"] == pytest.approx(1.674, abs=1e-3)  # v1's, unchanged
    assert not torch.equal(latest["state_dict"]["net.fc.weight"], first["state_dict"]["net.fc.weight"])
    for checkpoint in (latest, first):
        assert all(v.dtype == torch.float16 for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_the_package_carries_at_most_50_mb_of_weights():
    from pneumocam.model import bundled_file

    folder = bundled_file("pneumocam-cxr.pt").parent
    assert sum(f.stat().st_size for f in folder.glob("*.pt")) <= 50 * 2**20


@pytest.mark.parametrize(("name", "page"),
                         [("pneumocam-cxr", "model_card.md"), ("pneumocam-cxr@1", "model_card_v1.md")])
def test_the_model_cards_in_docs_are_the_ones_shipped_with_the_weights(name, page):
    from pathlib import Path

    from pneumocam.model import model_card

    docs = Path(__file__).resolve().parents[1] / "docs" / page
    assert docs.read_text(encoding="utf-8") == model_card(name)

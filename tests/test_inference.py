import numpy as np
import pytest
import torch

from pneumocam.errors import PneumocamError
from pneumocam.inference import Predictor


def test_predictions_match_the_network_and_cam_identity(tiny_checkpoint, phantom_data):
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    files = sorted((phantom_data / "Processed").rglob("*.npy"))[:3]
    predictions, failures = predictor.predict_files(files)
    assert failures == [] and len(predictions) == 3
    bias = float(predictor.net.fc.bias.detach())
    for p in predictions:
        assert 0 <= p.probability <= 1 and p.predicted == int(p.probability >= 0.5)
        assert p.cam.shape == (224, 224) and p.cam.min() >= 0 and p.cam.max() <= 1
        assert p.cam_raw.shape == (7, 7)
        assert float(p.cam_raw.mean()) + bias == pytest.approx(p.logit, abs=1e-4)
        norm = predictor.normalization
        x = torch.from_numpy((np.load(p.source) - norm.mean) / norm.std)[None, None].float()
        with torch.no_grad():
            logit, _ = predictor.net(x)
        assert float(logit) == pytest.approx(p.logit, abs=1e-4)


def test_unreadable_files_are_reported_not_fatal(tiny_checkpoint, phantom_data, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = next((phantom_data / "Processed").rglob("*.npy"))
    predictions, failures = Predictor.from_checkpoint(tiny_checkpoint).predict_files([bad, good])
    assert len(predictions) == 1 and failures[0]["source"] == str(bad)


def test_bad_checkpoint_errors(tmp_path):
    with pytest.raises(PneumocamError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "none.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"garbage")
    with pytest.raises(PneumocamError, match="not a loadable checkpoint"):
        Predictor.from_checkpoint(junk)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(PneumocamError, match="not a pneumocam checkpoint"):
        Predictor.from_checkpoint(tmp_path / "foreign.ckpt")

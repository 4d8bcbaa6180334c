import numpy as np
import pytest


@pytest.mark.slow
def test_randomization_check_resetting_layer4_changes_the_cam_and_fails_a_model_left_unchanged(
        tiny_checkpoint, phantom_data, monkeypatch):
    import pneumocam.map_assessment as loc
    from pneumocam.config import LocalizeConfig
    from pneumocam.inference import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    images = [np.load(p) for p in sorted((phantom_data / "Processed").rglob("*.npy"))[:4]]
    randomized = loc.randomized_predictor(predictor, seed=0)
    before, after = predictor.forward(images)[1], randomized.forward(images)[1]
    assert not np.allclose(before, after)  # the real randomised network ran and its CAM differs
    assert loc.randomization_check(predictor, images, ["cam"], LocalizeConfig())["cam"]["passed"]
    # a "randomisation" that leaves the network as it was gives the same maps: correlation 1, failed
    monkeypatch.setattr(loc, "randomized_predictor", lambda predictor, seed: predictor)
    result = loc.randomization_check(predictor, images, ["cam", "gradcam"], LocalizeConfig())
    assert result["cam"]["mean_rank_correlation"] == pytest.approx(1.0) and result["cam"]["passed"] is False

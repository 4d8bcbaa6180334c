import numpy as np
import pytest


@pytest.mark.slow
def test_randomization_check_resetting_layer4_changes_the_cam_and_fails_a_model_left_unchanged(
        tiny_checkpoint, phantom_data, monkeypatch):
    import pneumocam.evaluation.map_assessment as loc
    from pneumocam.config import LocalizeConfig
    from pneumocam.deploy import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    images = [np.load(p) for p in sorted((phantom_data / "Processed").rglob("*.npy"))[:4]]
    randomized = loc.randomized_predictor(predictor, seed=0)
    before, after = predictor.forward(images).raw, randomized.forward(images).raw
    assert not np.allclose(before, after)  # the real randomised network ran and its CAM differs
    assert loc.randomization_check(predictor, images, ["cam"], LocalizeConfig())["cam"]["passed"]
    # a "randomisation" that leaves the network as it was gives the same maps: correlation 1, failed
    monkeypatch.setattr(loc, "randomized_predictor", lambda predictor, seed: predictor)
    result = loc.randomization_check(predictor, images, ["cam", "gradcam"], LocalizeConfig())
    assert result["cam"]["mean_rank_correlation"] == pytest.approx(1.0) and result["cam"]["passed"] is False


@pytest.mark.slow
def test_deletion_curves_follow_the_calibrated_probability_and_report_their_end_points(rsna_sample):
    """The bundled model is calibrated: the curves must start at the probability predict reports, not at the raw
    sigmoid, and the summary must say which and where the all-replaced images end."""
    from pneumocam.config import LocalizeConfig
    from pneumocam.deploy import Predictor
    from pneumocam.evaluation import faithfulness_summary, random_maps

    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    files = sorted((rsna_sample / "stage_2_train_images").glob("*.dcm"))[:3]
    predictions, _ = predictor.predict_files(files)
    images = [p.image for p in predictions]
    maps = {"cam": np.stack([p.cam for p in predictions]), "random": random_maps(3, 0)}
    views = [p.view for p in predictions]  # from the DICOM headers: each film gets its view's calibration
    assert set(views) <= set(predictor.calibrations_by_view) and views
    summary = faithfulness_summary(predictor, images, maps, LocalizeConfig(road=False), np.arange(3), views)
    calibrated = np.mean([p.probability for p in predictions])
    raw = np.mean(1 / (1 + np.exp(-np.array([p.logit for p in predictions]))))
    overall = np.mean(predictor.probabilities(np.array([p.logit for p in predictions])))
    # the three differ on these images, so the checks below can fail
    assert abs(calibrated - raw) > 0.01 and abs(calibrated - overall) > 0.005
    assert summary["original_probability"] == pytest.approx(calibrated, abs=1e-5)
    assert summary["maps"]["cam"]["deletion"]["curve"]["probability"][0] == pytest.approx(calibrated, abs=1e-5)
    assert summary["probability"].startswith(f"calibrated (temperature {predictor.calibration.temperature:.3f}")
    assert "each film's view" in summary["probability"]
    assert 0 <= summary["all_replaced_probability"] <= 1
    # without the views, the overall calibration, as predict gives a film of unknown view, and it says so
    unknown = faithfulness_summary(predictor, images, {"cam": maps["cam"]}, LocalizeConfig(road=False), np.arange(3))
    assert unknown["original_probability"] == pytest.approx(overall, abs=1e-5)
    assert "unknown view" in unknown["probability"]

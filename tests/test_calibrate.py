import json

import numpy as np
import pytest
import torch

from pneumocam.cli import main
from pneumocam.commands.calibrate import calibrate
from pneumocam.commands.evaluate import evaluate
from pneumocam.config import CalibrateConfig, EvalConfig
from pneumocam.deploy import Predictor
from pneumocam.errors import PneumocamError
from pneumocam.files import read_csv
from pneumocam.model import Calibration, sigmoid


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, phantom_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated")
    report = calibrate(tiny_checkpoint, phantom_data, out, CalibrateConfig(rule="youden", folds=2))
    return out, report


@pytest.mark.slow
def test_calibrate_writes_a_calibrated_copy_that_every_stage_uses(calibrated, phantom_data, tmp_path):
    out, report = calibrated
    for name in ("calibrated.ckpt", "calibration.pt", "calibration.json", "reliability.png", "reliability.csv"):
        assert (out / name).stat().st_size > 0
    checkpoint = torch.load(out / "calibrated.ckpt", weights_only=True)
    meta = checkpoint["pneumocam"]
    assert meta["threshold"] == report["threshold"] and "Youden" in meta["threshold_rule"]
    assert meta["calibrated_on"]["split"] == "val" and meta["ood"]["threshold"] > 0
    predictor = Predictor.from_checkpoint(out / "calibrated.ckpt")
    assert predictor.threshold == report["threshold"] and predictor.out_of_range is not None
    c = report["calibration"]
    metrics = evaluate(out / "calibrated.ckpt", phantom_data, tmp_path / "eval", EvalConfig(bootstrap=20, maps=False))
    assert metrics["threshold"] == report["threshold"] and metrics["threshold_rule"] == meta["threshold_rule"]
    assert metrics["calibration"]["calibrated"]
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    logits = np.array([float(r["logit"]) for r in rows])
    expected = sigmoid(logits / c["temperature"] + c["intercept"] + c["prevalence_shift"])
    assert np.allclose([float(r["probability"]) for r in rows], expected, atol=1e-12)
    assert "Calibrated checkpoint" in (tmp_path / "eval" / "report.html").read_text()
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["before"]["ece"] >= 0 and saved["ood"]["quantile"] == 0.99


@pytest.mark.slow
def test_predict_flags_out_of_range_inputs_with_a_calibrated_checkpoint(calibrated, phantom_data, tmp_path):
    out, _ = calibrated
    npy = sorted((phantom_data / "Processed" / "val").rglob("*.npy"))[0]
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).random((224, 224), dtype=np.float32))
    assert main(["predict", str(out / "calibrated.ckpt"), str(npy), str(noise), "--out", str(tmp_path / "p")]) == 0
    rows = {r["source"]: r for r in read_csv(tmp_path / "p" / "predictions.csv")}
    assert rows[str(noise)]["ood"] == "1" and "feature distance" in rows[str(noise)]["ood_reason"]
    assert rows[str(npy)]["ood"] in ("0", "1") and float(rows[str(npy)]["ood_distance"]) > 0


@pytest.mark.slow
def test_calibrate_refuses_the_test_split_and_the_cli_prints_its_summary(tiny_checkpoint, phantom_data, tmp_path,
                                                                         capsys):
    with pytest.raises(PneumocamError, match="test split must stay unseen"):
        calibrate(tiny_checkpoint, phantom_data, tmp_path, CalibrateConfig(split="test"))
    assert main(["calibrate", str(tiny_checkpoint), str(phantom_data), str(tmp_path / "cal"),
                 "--prevalence", "0.2", "--target-sensitivity", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "sensitivity >= 0.8" in out and "out-of-range" in out
    meta = torch.load(tmp_path / "cal" / "calibrated.ckpt", weights_only=True)["pneumocam"]
    assert meta["calibration"]["target_prevalence"] == 0.2


def test_the_bundled_models_ship_calibrated_with_their_rules():
    latest = Predictor.from_checkpoint("pneumocam-cxr")
    assert latest.calibration.temperature != 1.0 and latest.out_of_range is not None
    assert latest.metadata["threshold_rule"].startswith("the lowest threshold with specificity >= 0.85")
    assert "per view (AP, PA)" in latest.metadata["threshold_rule"]
    assert set(latest.thresholds_by_view) == {"AP", "PA"} and latest.threshold < 0.5
    first = Predictor.from_checkpoint("pneumocam-cxr@1")
    assert "Youden" in first.metadata["threshold_rule"] and first.threshold < 0.5 and not first.thresholds_by_view


def test_per_view_thresholds_follow_the_rule_within_each_view_and_skip_thin_views():
    from pneumocam.commands.calibrate import per_view_thresholds

    rng = np.random.default_rng(0)
    # AP films: scores high for both classes; PA films: scores low (the shortcut); LL: too few images
    labels = np.array([1] * 30 + [0] * 30 + [1] * 12 + [0] * 40 + [1, 0])
    probs = np.concatenate([rng.uniform(0.5, 1.0, 30), rng.uniform(0.3, 0.8, 30), rng.uniform(0.1, 0.4, 12),
                            rng.uniform(0.0, 0.25, 40), [0.5, 0.5]])
    views = ["AP"] * 60 + ["PA"] * 52 + ["LL"] * 2
    by_view = per_view_thresholds(probs, labels, views, CalibrateConfig(rule="sensitivity", target_sensitivity=0.9))
    assert set(by_view) == {"AP", "PA"}  # LL has one image of each class, fewer than --min-view-images
    for view, row in by_view.items():
        inside = np.array(views) == view
        assert row["sensitivity_in_sample"] >= 0.9
        assert row["sensitivity_in_sample"] == pytest.approx((probs[inside & (labels == 1)] >= row["threshold"]).mean())
    assert by_view["PA"]["threshold"] < by_view["AP"]["threshold"]


@pytest.mark.slow
def test_calibrate_per_view_stores_thresholds_that_predict_applies_by_view(tiny_checkpoint, phantom_data, tmp_path):
    report = calibrate(tiny_checkpoint, phantom_data, tmp_path / "cal",
                       CalibrateConfig(rule="youden", folds=2, per_view=True, min_view_images=1,
                                       ood_train_images=16))
    meta = torch.load(tmp_path / "cal" / "calibrated.ckpt", weights_only=True)["pneumocam"]
    assert meta["thresholds_by_view"] == {v: r["threshold"] for v, r in report["thresholds_by_view"].items()}
    assert set(meta["thresholds_by_view"]) <= {"AP", "PA"} and meta["thresholds_by_view"]
    assert "per view" in meta["threshold_rule"]
    # and a calibration for each of those views, measured cross-fitted per view and beside one calibration for all
    assert set(meta["calibration_by_view"]) == set(meta["thresholds_by_view"])
    assert report["after_cross_fitted"]["what"].endswith("a calibration per view")
    assert report["after_cross_fitted_one_calibration"]["ece"] is not None
    predictor = Predictor.from_checkpoint(tmp_path / "cal" / "calibrated.ckpt")
    view = next(iter(meta["thresholds_by_view"]))
    assert predictor.calibration_for(view) == Calibration.from_metadata(meta["calibration_by_view"][view])
    assert predictor.calibration_for("") == predictor.calibration == Calibration.from_metadata(meta["calibration"])
    # evaluate calls each film as predict would: its view's calibration against its view's threshold
    metrics = evaluate(tmp_path / "cal" / "calibrated.ckpt", phantom_data, tmp_path / "eval",
                       EvalConfig(split="val", bootstrap=0, maps=False, report=False))
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    manifest = {r["file"]: r for r in read_csv(phantom_data / "manifest.csv")}
    views = [manifest[r["file"]].get("view", "") for r in rows]
    probabilities = predictor.probabilities(np.array([float(r["logit"]) for r in rows]), views)
    called = probabilities >= np.array([predictor.operating_point(v)[0] for v in views])
    positives = np.array([int(r["label"]) for r in rows]) == 1
    at_views = metrics["per_view_operating_point"]
    assert at_views["all"]["sensitivity"] == pytest.approx(called[positives].mean())
    assert at_views["calibration_by_view"]["ece"] is not None
    assert predictor.operating_point(view) == (meta["thresholds_by_view"][view], f"view {view}")
    assert predictor.operating_point("") == (meta["threshold"], "overall (view unknown)")
    assert predictor.operating_point("LL") == (meta["threshold"], "overall (no threshold for view LL)")
    # an explicit threshold replaces every operating point
    assert Predictor.from_checkpoint(tmp_path / "cal" / "calibrated.ckpt", threshold=0.3).operating_point(view) == \
        (0.3, "overall")
    # calibrating again without --per-view drops the earlier per-view thresholds
    calibrate(tmp_path / "cal" / "calibrated.ckpt", phantom_data, tmp_path / "again",
              CalibrateConfig(rule="youden", folds=2, ood_train_images=16))
    again = torch.load(tmp_path / "again" / "calibrated.ckpt", weights_only=True)["pneumocam"]
    assert "thresholds_by_view" not in again and "calibration_by_view" not in again
    # a prevalence correction serves one calibration; with one per view the command says so instead of guessing
    with pytest.raises(PneumocamError, match="--no-per-view-calibration"):
        calibrate(tiny_checkpoint, phantom_data, tmp_path / "prevalence",
                  CalibrateConfig(per_view=True, min_view_images=1, prevalence=0.1, ood_train_images=16))

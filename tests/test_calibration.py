import numpy as np
import pytest

from pneumocam.evaluation import choose_threshold, expected_calibration_error, youden_threshold
from pneumocam.model import (
    Calibration,
    cross_fitted_probabilities,
    fit_calibration,
    fit_view_calibrations,
    logit,
    probabilities_by_view,
    sigmoid,
)


def _model_logits(n, prevalence, rng, temperature=2.5, intercept=-1.0):
    """Raw logits of an over-confident, shifted model: the true log-odds are z / T + b for a known T and b, at
    `prevalence` (drawn by class from the class-conditional logit distributions, so only the prior changes)."""
    true = rng.normal(0, 2, 20 * n) + logit(prevalence)  # log-odds at this prevalence
    labels = (rng.random(true.size) < sigmoid(true)).astype(int)
    raw = (true - intercept) * temperature
    return raw, labels


def test_the_fit_recovers_a_known_temperature_and_intercept():
    rng = np.random.default_rng(0)
    raw, labels = _model_logits(2000, 0.3, rng)
    fitted = fit_calibration(raw, labels)
    assert fitted.temperature == pytest.approx(2.5, rel=0.05)
    assert fitted.intercept == pytest.approx(-1.0 + 0, abs=0.1)
    alone = fit_calibration(raw, labels, intercept=False)
    assert alone.intercept == 0.0


def test_a_prevalence_correction_gives_the_frequencies_of_the_target_prevalence():
    rng = np.random.default_rng(1)
    raw, labels = _model_logits(2000, 0.5, rng)
    corrected = fit_calibration(raw, labels, target_prevalence=0.1)
    assert corrected.prevalence_shift == pytest.approx(logit(0.1) - logit(labels.mean()))
    # where pneumonia is rarer: the same images per class, resampled to 10% positives
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    rare = np.concatenate([rng.choice(pos, 1000), rng.choice(neg, 9000)])
    assert corrected.probabilities(raw[rare]).mean() == pytest.approx(0.1, abs=0.01)
    uncorrected = fit_calibration(raw, labels)
    assert uncorrected.probabilities(raw[rare]).mean() > 0.2
    with pytest.raises(ValueError, match="strictly between"):
        fit_calibration(raw, labels, target_prevalence=1.0)


def test_calibration_lowers_the_error_on_held_out_images():
    rng = np.random.default_rng(2)
    raw, labels = _model_logits(500, 0.25, rng)
    fit, held = slice(0, 5000), slice(5000, None)
    calibration = fit_calibration(raw[fit], labels[fit])
    before = expected_calibration_error(sigmoid(raw[held]), labels[held])
    after = expected_calibration_error(calibration.probabilities(raw[held]), labels[held])
    assert after < before / 3
    crossed = cross_fitted_probabilities(raw[:2000], labels[:2000], np.arange(2000), folds=4)
    assert expected_calibration_error(crossed, labels[:2000]) < before / 3


def _two_views(rng):
    """AP films at 50% pneumonia and PA films at 10%, from a network whose logit does not know the view (the
    same temperature and intercept for both): one calibration over-calls PA and under-calls AP."""
    ap, ap_labels = _model_logits(150, 0.5, rng)
    pa, pa_labels = _model_logits(150, 0.1, rng)
    pa = pa - 2.5 * (logit(0.1) - logit(0.5))  # the network sees no difference in prior between the views
    views = np.array(["AP"] * ap.size + ["PA"] * pa.size + ["LL"] * 4)
    return (np.concatenate([ap, pa, [0.0, 1.0, -1.0, 2.0]]), np.concatenate([ap_labels, pa_labels, [1, 0, 0, 1]]),
            views)


def test_a_calibration_per_view_gives_each_view_its_own_frequencies_and_skips_thin_views():
    raw, labels, views = _two_views(np.random.default_rng(4))
    by_view = fit_view_calibrations(raw, labels, views, min_images=10)
    assert set(by_view) == {"AP", "PA"}  # LL has 2 images of each class
    overall = fit_calibration(raw, labels)
    probs = probabilities_by_view(raw, views, overall, by_view)
    for view in ("AP", "PA"):
        inside = views == view
        assert probs[inside].mean() == pytest.approx(labels[inside].mean(), abs=0.01)
        assert np.allclose(probs[inside], by_view[view].probabilities(raw[inside]))
    assert abs(overall.probabilities(raw[views == "PA"]).mean() - labels[views == "PA"].mean()) > 0.1
    assert np.allclose(probs[views == "LL"], overall.probabilities(raw[views == "LL"]))  # the overall one


def test_cross_fitting_per_view_measures_the_view_calibration_honestly():
    raw, labels, views = _two_views(np.random.default_rng(5))
    groups = np.arange(raw.size)
    one = cross_fitted_probabilities(raw, labels, groups, folds=5)
    per_view = cross_fitted_probabilities(raw, labels, groups, folds=5, views=views, min_view_images=10)
    for view in ("AP", "PA"):  # pooled over both views the two errors partly cancel; within a view they do not
        inside = views == view
        assert expected_calibration_error(per_view[inside], labels[inside]) < 0.03
        assert expected_calibration_error(one[inside], labels[inside]) > 0.08
    # a view too thin in a fold's fitting images gets the overall calibration there, as calibrate would give it
    assert np.isfinite(per_view).all() and ((per_view > 0) & (per_view < 1)).all()


def test_thresholds_follow_their_stated_rule():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(0.35 * labels + rng.random(400) * 0.65, 0, 1)
    threshold, text = choose_threshold(probs, labels, "sensitivity", 0.9)
    assert np.mean(probs[labels == 1] >= threshold) >= 0.9 and "0.9" in text
    assert choose_threshold(probs, labels, "youden")[0] == youden_threshold(probs, labels)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(probs, labels, "f1")


def test_calibration_round_trips_through_metadata_and_defaults_to_the_identity():
    calibration = Calibration(1.7, -0.9, 0.2, 0.25, 0.3)
    assert Calibration.from_metadata(calibration.to_metadata()) == calibration
    z = np.array([-3.0, 0.0, 2.0])
    assert np.allclose(Calibration.from_metadata(None).probabilities(z), sigmoid(z))
    assert np.allclose(calibration.apply(z), z / 1.7 - 0.9 + 0.2)

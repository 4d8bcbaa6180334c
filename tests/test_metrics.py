import numpy as np
import pytest
from sklearn import metrics as skm

from pneumocam.evaluation import Bootstrap, bootstrap_ci, classification_metrics

PROBS = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1])
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def test_metrics_on_hand_made_example():
    m = classification_metrics(PROBS, LABELS, threshold=0.5)
    assert m["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(3 / 4)
    # 16 positive/negative pairs; positives 0.6 and 0.4 both rank below the 0.7 negative: 14 correct
    assert m["auroc"] == pytest.approx(14 / 16)
    assert m["brier"] == pytest.approx(np.mean((PROBS - LABELS) ** 2))
    assert m["n"] == 8 and m["n_positive"] == 4


@pytest.mark.parametrize("threshold", [0.05, 0.35, 0.5, 0.75, 0.95])
def test_rates_agree_with_sklearn_scorers(threshold):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    preds = (probs >= threshold).astype(int)
    m = classification_metrics(probs, labels, threshold)
    assert m["precision"] == pytest.approx(skm.precision_score(labels, preds, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, preds, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, preds, zero_division=0))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(labels, probs))


def test_one_class_gives_null_ranking_metrics_and_a_warning():
    m = classification_metrics(np.array([0.2, 0.7]), np.array([0, 0]))
    assert m["auroc"] is None and m["auprc"] is None and m["warnings"]
    assert m["precision"] == 0.0 and m["recall"] == 0.0


@pytest.mark.slow
def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)

    def sample(n):
        labels = np.repeat([0, 1], n // 2)
        return np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1), labels

    small, large = sample(60), sample(2000)
    ci_small = bootstrap_ci(*small, config=Bootstrap(300, 0))
    ci_large = bootstrap_ci(*large, config=Bootstrap(300, 0))
    point = classification_metrics(*small)
    for name in ("accuracy", "auroc", "f1", "brier"):
        low, high = ci_small[name]
        assert low <= point[name] <= high
        assert ci_large[name][1] - ci_large[name][0] < high - low
    assert bootstrap_ci(*small, config=Bootstrap(50, 7)) == bootstrap_ci(*small, config=Bootstrap(50, 7))


def test_invalid_inputs():
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.array([0.5]), np.array([2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics(np.array([1.5]), np.array([1]))


def test_target_sensitivity_threshold_reaches_the_target():
    from pneumocam.evaluation import threshold_for_sensitivity, threshold_metrics

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.25 * labels + rng.uniform(0, 0.75, 300), 0, 1)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        t = threshold_for_sensitivity(probs, labels, target)
        assert threshold_metrics(probs, labels, t)["recall"] >= target
        # and it is the highest such threshold: any higher score as threshold misses the target
        higher = probs[probs > t]
        if higher.size:
            assert threshold_metrics(probs, labels, higher.min())["recall"] < target


def test_target_specificity_threshold_reaches_the_target_and_is_the_lowest_that_does():
    from pneumocam.evaluation import threshold_for_specificity, threshold_metrics

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.25 * labels + rng.uniform(0, 0.75, 300), 0, 1)
    for target in (0.5, 0.8, 0.85, 0.95, 1.0):
        t = threshold_for_specificity(probs, labels, target)
        assert threshold_metrics(probs, labels, t)["specificity"] >= target
        lower = probs[probs < t]  # any lower score as threshold lets in too many false alarms
        if lower.size:
            assert threshold_metrics(probs, labels, lower.max())["specificity"] < target
    assert threshold_for_specificity(np.array([0.2, 0.8]), np.array([1, 1]), 0.9) is None  # no negatives


def test_youden_threshold_on_a_separable_example():
    from pneumocam.evaluation import youden_threshold

    assert youden_threshold(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1])) == 0.7
    assert youden_threshold(np.array([0.1, 0.2]), np.array([0, 0])) is None


def test_expected_calibration_error_exact():
    from pneumocam.evaluation import expected_calibration_error

    # bin (0.2,0.3]: confidence 0.25, accuracy 0/2; bin (0.7,0.8]: confidence 0.75, accuracy 2/2
    probs = np.array([0.25, 0.25, 0.75, 0.75])
    labels = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == pytest.approx(0.0)


def test_paired_auroc_difference():
    from pneumocam.evaluation import paired_auroc_difference

    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 100)
    good = np.clip(0.4 * labels + rng.uniform(0, 0.6, 200), 0, 1)
    weak = np.clip(0.1 * labels + rng.uniform(0, 0.9, 200), 0, 1)
    same = paired_auroc_difference(good, good, labels, Bootstrap(200, 0))
    assert same["auroc_difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    better = paired_auroc_difference(good, weak, labels, Bootstrap(200, 0))
    assert better["auroc_difference"] > 0 and better["ci95"][0] > 0 and better["p_value"] < 0.05


def test_operating_points_mark_unavailable_thresholds():
    from pneumocam.evaluation import operating_points

    points = operating_points(PROBS, LABELS, {"default": 0.5, "youden": None})
    assert points[0]["available"] and points[0]["confusion"]["tp"] == 3
    assert points[1] == {"name": "youden", "threshold": None, "available": False}


@pytest.mark.slow
def test_cluster_bootstrap_resamples_whole_patients_and_widens_the_ci_of_copies():
    from pneumocam.evaluation import bootstrap_mean_ci, resampler

    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 60), 5)  # 60 patients with 5 images each, one label per patient
    patients = np.repeat(np.arange(60), 5)
    probs = np.clip(labels * 0.3 + np.repeat(rng.random(60), 5) * 0.7, 0, 1)  # images of a patient agree
    draw, method = resampler(labels, patients)
    assert method.startswith("cluster bootstrap")
    idx = draw(np.random.default_rng(1))
    counts = np.bincount(patients[idx], minlength=60)
    assert all(c % 5 == 0 for c in counts)  # every patient comes with all five images or not at all
    assert labels[idx].sum() == labels.sum()  # stratified by patient label: prevalence kept
    by_patient = bootstrap_ci(probs, labels, config=Bootstrap(300, 0), groups=patients)
    by_image = bootstrap_ci(probs, labels, config=Bootstrap(300, 0))
    assert by_patient.pop("ci_method").startswith("cluster") and by_image.pop("ci_method").startswith("stratified")
    width = {name: ci["auroc"][1] - ci["auroc"][0] for name, ci in (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 1.5 * width["image"]  # 5 copies are not 5 times the evidence
    one_each = bootstrap_ci(probs[::5], labels[::5], config=Bootstrap(50, 3), groups=patients[::5])
    assert one_each == bootstrap_ci(probs[::5], labels[::5], config=Bootstrap(50, 3))  # no repeats: by image
    hits = bootstrap_mean_ci(labels, patients, Bootstrap(200, 0))
    assert hits["ci_method"].startswith("cluster") and hits["ci95"][0] < labels.mean() < hits["ci95"][1]


def test_paired_auroc_ci_resamples_patients_as_the_other_cis_do():
    """80 patients x 5 strongly correlated images: resampling images treats 400 images as independent; resampling
    patients sees 80. The paired difference's CI must widen as the unpaired AUROC CI does."""
    from pneumocam.evaluation import bootstrap_auroc_ci, paired_auroc_difference

    rng = np.random.default_rng(0)
    patient_labels = np.repeat([0, 1], 40)
    labels, groups = np.repeat(patient_labels, 5), np.repeat(np.arange(80), 5)
    shared_a, shared_b = rng.normal(0, 1, 80), rng.normal(0, 1, 80)
    probs_a = 1 / (1 + np.exp(-(1.2 * labels + np.repeat(shared_a, 5) + rng.normal(0, 0.2, 400))))
    probs_b = 1 / (1 + np.exp(-(0.6 * labels + np.repeat(shared_b, 5) + rng.normal(0, 0.2, 400))))

    def width(interval):
        return interval[1] - interval[0]

    boot = Bootstrap(400, 0)
    paired_images = paired_auroc_difference(probs_a, probs_b, labels, boot)
    paired_patients = paired_auroc_difference(probs_a, probs_b, labels, boot, groups)
    unpaired_ratio = width(bootstrap_auroc_ci(probs_a, labels, groups, boot)) / width(
        bootstrap_auroc_ci(probs_a, labels, None, boot))
    paired_ratio = width(paired_patients["ci95"]) / width(paired_images["ci95"])
    assert unpaired_ratio > 1.5 and paired_ratio > 1.5 and abs(paired_ratio - unpaired_ratio) < 0.6
    assert paired_patients["ci_method"].startswith("cluster bootstrap")
    assert paired_patients["auroc_difference"] == paired_images["auroc_difference"]


def test_one_binning_rule_for_the_ece_the_diagram_and_the_csv(tmp_path):
    import csv

    import matplotlib

    matplotlib.use("Agg")
    from pneumocam.commands.calibrate import write_reliability
    from pneumocam.evaluation import calibration_figure, expected_calibration_error, reliability_bins

    probs, labels = np.array([0.3, 0.3, 0.25, 0.25]), np.array([1, 1, 0, 0])
    bins = [row for row in reliability_bins(probs, labels) if row["n"]]
    assert [(row["bin_low"], row["n"], row["observed_frequency"]) for row in bins] == [(0.2, 2, 0.0), (0.3, 2, 1.0)]
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.7 + 2 * 0.25) / 4)
    write_reliability(tmp_path, probs, probs, labels)
    with open(tmp_path / "reliability.csv", newline="") as f:
        written = [row for row in csv.DictReader(f) if row["probabilities"] == "after" and row["n"] != "0"]
    assert [(float(r["bin_low"]), int(r["n"]), float(r["observed_frequency"])) for r in written] == \
        [(0.2, 2, 0.0), (0.3, 2, 1.0)]
    line = calibration_figure({"model": probs}, labels).axes[0].lines[1]
    assert list(line.get_xdata()) == [0.25, 0.3] and list(line.get_ydata()) == [0.0, 1.0]
    assert "ECE = 0.475" in line.get_label()
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # p = 1 in the last bin


def test_the_ece_is_torchmetrics_away_from_bin_edges():
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    from pneumocam.evaluation import expected_calibration_error

    rng = np.random.default_rng(3)
    probs = rng.uniform(0, 1, 500)
    labels = (rng.uniform(0, 1, 500) < probs ** 1.5).astype(int)
    expected = float(binary_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), n_bins=10))
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)

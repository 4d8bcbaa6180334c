import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from pneumocam.data import age_band, attribute_values
from pneumocam.evaluation import (
    Bootstrap,
    calibration_error,
    expected_calibration_error,
    fast_auroc,
    known_attributes,
    subgroup_table,
)


@pytest.mark.parametrize(("age", "band"), [("0", "0-17"), ("17", "0-17"), ("18", "18-39"), ("39", "18-39"),
                                           ("40", "40-59"), ("79", "60-79"), ("80", "80+"), ("104", "80+"), ("", "")])
def test_age_bands_follow_the_issue(age, band):
    assert age_band(age) == band


def test_fast_auroc_and_ece_equal_the_reference_implementations():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 150)
        probs = np.round(rng.random(150), 2)  # ties, and values on bin edges
        probs[:3] = [0.0, 1.0, 0.3]
        assert fast_auroc(probs, labels) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
        assert calibration_error(probs, labels) == pytest.approx(expected_calibration_error(probs, labels), abs=1e-9)
    assert fast_auroc(np.array([0.2, 0.4]), np.array([1, 1])) is None


def _cohort(n=300, seed=1):
    rng = np.random.default_rng(seed)
    rows = [{"sex": rng.choice(["M", "F", ""]), "age": str(rng.integers(5, 95)), "view": rng.choice(["AP", "PA"])}
            for _ in range(n)]
    labels = np.array([int(rng.random() < (0.5 if r["view"] == "AP" else 0.15)) for r in rows])
    probs = np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1)
    patients = [f"p{i // 2}" for i in range(n)]  # two images per patient
    return rows, labels, probs, patients


def test_every_group_matches_scikit_learn_and_small_groups_are_flagged():
    rows, labels, probs, patients = _cohort()
    values = attribute_values(rows)
    table = subgroup_table(probs, labels, patients, values, known_attributes(values), 0.5, 20, Bootstrap(50, 0))
    assert table["by"] == ["sex", "age_band", "view"] and table["n_unknown"]["sex"] > 0
    names = [g["name"] for g in table["groups"]]
    assert "view=AP" in names and "sex=F, view=PA" in names and "age_band=80+" in names
    assert not any("sex=," in n for n in names)  # unknown values are left out of the groups
    for group in table["groups"]:
        mask = np.ones(len(rows), bool)
        for attribute, value in group["attributes"].items():
            mask &= np.array(values[attribute]) == value
        y, p = labels[mask], probs[mask]
        assert group["n"] == mask.sum() and group["small"] == (mask.sum() < 20)
        tn, fp, fn, tp = confusion_matrix(y, p >= 0.5, labels=[0, 1]).ravel()
        if 0 < y.sum() < y.size:
            assert group["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        else:
            assert group["auroc"] is None
        if tp + fn:
            assert group["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-9)
            assert group["fnr"] == pytest.approx(fn / (tp + fn), abs=1e-9)
        assert group["prevalence"] == pytest.approx(y.mean(), abs=1e-9)
        assert group["difference"]["prevalence"] == pytest.approx(y.mean() - labels.mean(), abs=1e-9)
    ap = next(g for g in table["groups"] if g["name"] == "view=AP")
    low, high = ap["ci95"]["prevalence"]
    assert low < ap["prevalence"] < high and ap["difference_ci95"]["prevalence"][0] > 0  # AP is richer in pneumonia


def test_an_unknown_attribute_is_an_error():
    rows, labels, probs, patients = _cohort(40)
    with pytest.raises(ValueError, match="unknown subgroup attribute"):
        subgroup_table(probs, labels, patients, attribute_values(rows), ["race"], bootstrap=Bootstrap(5))


def test_calls_by_view_apply_each_images_threshold_and_count_hard_negatives():
    import numpy as np

    from pneumocam.evaluation import calls_by_view

    probs = np.array([0.9, 0.4, 0.3, 0.2, 0.25, 0.1])
    labels = np.array([1, 0, 1, 0, 0, 1])
    views = ["AP", "AP", "PA", "PA", "PA", ""]
    thresholds = np.array([0.5, 0.5, 0.22, 0.22, 0.22, 0.5])  # PA films at their own, lower threshold
    findings = ["opacity", "not-normal", "opacity", "normal", "not-normal", "opacity"]
    out = calls_by_view(probs, labels, thresholds, views, findings)
    assert out["by_view"]["PA"] == {"n": 3, "sensitivity": 1.0, "specificity": 0.5}
    assert out["by_view"]["AP"] == {"n": 2, "sensitivity": 1.0, "specificity": 1.0}
    assert out["by_view"]["unknown"]["sensitivity"] == 0.0
    assert out["all"]["sensitivity"] == 2 / 3 and out["not_normal_called"] == 0.5

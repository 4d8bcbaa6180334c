import numpy as np
import pytest

from pneumocam.evaluation import Bootstrap, header_baseline, within_view_auroc


def _rows(n, rng):
    rows = []
    for i in range(n):
        view = "AP" if rng.random() < 0.5 else "PA"
        label = int(rng.random() < (0.45 if view == "AP" else 0.1))
        rows.append({"file": f"f{i}", "label": label, "view": view, "sex": rng.choice(["M", "F"]),
                     "age": "" if i % 7 == 0 else str(rng.integers(18, 90))})
    return rows


def test_the_header_only_baseline_finds_the_view_shortcut():
    rng = np.random.default_rng(0)
    train, held = _rows(800, rng), _rows(300, rng)
    labels = np.array([r["label"] for r in held])
    view_only = np.array([0.45 if r["view"] == "AP" else 0.1 for r in held])  # a "model" that learned the view
    result = header_baseline(train, held, view_only, Bootstrap(100))
    assert result["available"] and result["fields_known_in_train"] == ["view", "sex", "age"]
    assert 0.65 < result["auroc"] < 0.8 and result["auroc_ci95"][0] < result["auroc"] < result["auroc_ci95"][1]
    assert abs(result["model_minus_header_auroc"]) < 0.05  # the view model is no better than the header
    within = within_view_auroc(view_only, labels, [r["view"] for r in held], Bootstrap(100))
    assert set(within) == {"AP", "PA"}
    assert all(v["auroc"] == pytest.approx(0.5) for v in within.values())  # inside a view it knows nothing


def test_without_header_fields_the_baseline_says_why():
    rows = [{"label": i % 2, "view": "", "sex": "", "age": ""} for i in range(10)]
    result = header_baseline(rows, rows, np.linspace(0, 1, 10))
    assert not result["available"] and "no view, sex or age" in result["reason"]

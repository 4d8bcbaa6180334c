import base64
import html

from pneumocam.evaluation import build_report, png_data_uri

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


def _metrics(**extra) -> dict:
    return {"n": 10, "n_positive": 4, "threshold": 0.5, "confusion": {"tp": 3, "fp": 1, "tn": 5, "fn": 1},
            "accuracy": 0.8, "auroc": 0.875, "ci95": {"auroc": [0.6, 1.0]}, "ece": 0.05,
            "warnings": ["val chose <the> checkpoint"], "operating_points": [
                {"name": "checkpoint threshold", "threshold": 0.5, "recall": 0.75, "specificity": 0.833,
                 "precision": 0.75, "npv": 0.833, "f1": 0.75, "confusion": {"tp": 3, "fp": 1, "tn": 5, "fn": 1}},
                {"name": "Youden", "available": False}], **extra}


def test_the_report_is_one_self_contained_page_with_every_part():
    page = build_report(_metrics(), {"ROC curve": PNG}, {"true positives": [("case <1>", PNG)], "misses": []},
                        {"checkpoint": "run/best.ckpt", "versions": {"torch": "2.14.1"}})
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.replace("https://", "")  # nothing fetched
    assert page.count(png_data_uri(PNG)) == 2  # the plot and the gallery image, inline
    assert html.escape("val chose <the> checkpoint") in page and "<the>" not in page
    assert "0.875" in page and "0.600 – 1.000" in page  # AUROC and its CI
    assert "TP 3, FP 1, TN 5, FN 1" in page and "not available" in page
    assert "case &lt;1&gt;" in page and "<p>none</p>" in page
    assert "&quot;torch&quot;: &quot;2.14.1&quot;" in page  # provenance dicts in the details block


def test_an_uncalibrated_checkpoint_says_how_to_calibrate():
    calibration = {"calibrated": False, "raw": {"ece": 0.12, "brier": 0.2}}
    page = build_report(_metrics(calibration=calibration), {}, {}, {})
    assert "not calibrated: ECE 0.120" in page and "pneumocam calibrate" in page

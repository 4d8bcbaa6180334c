"""A model judged: classification metrics with bootstrap CIs, threshold rules, subgroups, the shortcut check,
plots, the HTML report, and the assessment of maps (which runs the Predictor).
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "ComputedMaps": "map_assessment", "MapAssessment": "map_assessment",
    "RANDOMIZATION_MAX_CORRELATION": "map_assessment", "assess_maps": "map_assessment", "box_prior": "map_assessment",
    "compute_maps": "map_assessment", "faithfulness_summary": "map_assessment", "random_maps": "map_assessment",
    "randomization_check": "map_assessment", "randomized_predictor": "map_assessment",
    "Bootstrap": "metrics", "CI_METRICS": "metrics", "RANK_METRICS": "metrics", "RATE_METRICS": "metrics",
    "bin_index": "metrics", "bootstrap_auroc_ci": "metrics", "bootstrap_ci": "metrics", "bootstrap_mean_ci": "metrics",
    "calibration_scores": "metrics", "choose_threshold": "metrics", "classification_metrics": "metrics",
    "expected_calibration_error": "metrics", "fast_auroc": "metrics", "operating_points": "metrics",
    "paired_auroc_difference": "metrics", "ranking_metrics": "metrics", "reliability_bins": "metrics",
    "resampler": "metrics", "threshold_for_sensitivity": "metrics", "threshold_for_specificity": "metrics",
    "threshold_metrics": "metrics", "youden_threshold": "metrics",
    "MARKERS": "plots", "calibration_figure": "plots", "confusion_figure": "plots", "faithfulness_figure": "plots",
    "forest_figure": "plots", "pr_figure": "plots", "roc_figure": "plots",
    "STYLE": "report", "TABLE_METRICS": "report", "build_report": "report", "png_data_uri": "report",
    "HEADER_FIELDS": "shortcut", "header_baseline": "shortcut", "header_matrix": "shortcut",
    "header_model": "shortcut", "within_view_auroc": "shortcut",
    "SplitPredictions": "split_predictions", "predict_split": "split_predictions",
    "Group": "subgroups", "METRICS": "subgroups", "calibration_error": "subgroups", "calls_by_view": "subgroups",
    "define_groups": "subgroups", "group_metrics": "subgroups", "known_attributes": "subgroups",
    "subgroup_rows": "subgroups", "subgroup_table": "subgroups",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)

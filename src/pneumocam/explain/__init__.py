"""Maps and what they are worth: the exact CAM and its arithmetic, the library methods (Score-CAM, ...),
overlays on an absolute scale, localisation against boxes, faithfulness curves, the CheXlocalize export.
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "class_activation_map": "cam", "grad_cam": "cam", "grad_cam_plus_plus": "cam", "normalize_maps": "cam",
    "upsample": "cam", "upsample_and_normalize": "cam",
    "cam_cells": "cam_grid", "normalize_cells": "cam_grid", "pooled": "cam_grid", "resize_matrix": "cam_grid",
    "upsample_and_normalize_cells": "cam_grid", "upsample_cells": "cam_grid",
    "TASK": "chexlocalize", "box_polygon": "chexlocalize", "export_chexlocalize": "chexlocalize",
    "image_id": "chexlocalize",
    "BLUR_SIGMA": "faithfulness", "Curves": "faithfulness", "ROAD_NOISE": "faithfulness",
    "ROAD_PERCENTAGES": "faithfulness", "STEPS": "faithfulness", "Score": "faithfulness", "TARGETS": "faithfulness",
    "linear_impute": "faithfulness", "multiscale_impute": "faithfulness", "perturbation_curves": "faithfulness",
    "replacement_images": "faithfulness", "road_curves": "faithfulness", "salience_order": "faithfulness",
    "target_scores": "faithfulness",
    "LIBRARY_METHODS": "library_cams", "LogitOnly": "library_cams", "library_saliency": "library_cams",
    "pneumonia_targets": "library_cams",
    "IOBB_LEVELS": "localization", "THRESHOLDS": "localization", "centre_prior": "localization",
    "chexlocalize_iou": "localization", "distance_to_boxes": "localization", "energy_in_boxes": "localization",
    "iobb": "localization", "iou": "localization", "otsu_threshold": "localization", "peak": "localization",
    "per_image_values": "localization", "pixel_auprc": "localization", "pointing_hit": "localization",
    "rank_correlation": "localization", "score_image": "localization", "score_images": "localization",
    "score_maps": "localization", "summarize": "localization",
    "EVIDENCE_COLORMAP": "overlay", "EVIDENCE_SPAN": "overlay", "METHOD_NAMES": "overlay", "RELATIVE_LABEL": "overlay",
    "ShownMap": "overlay", "SideBySideJob": "overlay", "add_colour_bar": "overlay",
    "colour_bar_description": "overlay", "colour_bar_strip": "overlay", "layer_png": "overlay",
    "overlay_cam": "overlay", "overlay_evidence": "overlay", "overlay_grid": "overlay", "overlay_layer": "overlay",
    "overlay_map": "overlay", "save_side_by_side": "overlay", "side_by_side": "overlay", "to_png": "overlay",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)

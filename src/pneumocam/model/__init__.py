"""The network and what travels with it: the ResNet18 body, PneumoniaNet (logit and feature map), checkpoints
loaded without running code, the bundled models and their cards, and the calibration and out-of-range detector
a calibrated checkpoint carries.
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "Calibration": "calibration", "apply_by_view": "calibration", "cross_fitted_probabilities": "calibration",
    "fit_calibration": "calibration", "fit_view_calibrations": "calibration", "logit": "calibration",
    "probabilities_by_view": "calibration", "sigmoid": "calibration",
    "describe": "cards", "model_card": "cards",
    "BUNDLED_MODELS": "checkpoints", "BundledModel": "checkpoints", "WEIGHTS_PACKAGE": "checkpoints",
    "bundle": "checkpoints", "bundled_file": "checkpoints", "checkpoint_label": "checkpoints",
    "is_pneumocam_checkpoint": "checkpoints", "load_checkpoint": "checkpoints", "network_state": "checkpoints",
    "resolve_checkpoint": "checkpoints",
    "FEATURE_CHANNELS": "network", "PneumoniaNet": "network", "PretrainedWeightsError": "network",
    "adapt_input_conv": "network", "load_pretrained_backbone": "network",
    "OutOfRange": "ood", "fit_out_of_range": "ood",
    "BLOCKS": "resnet", "BasicBlock": "resnet", "resnet18_trunk": "resnet",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)

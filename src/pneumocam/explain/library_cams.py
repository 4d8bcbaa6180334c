"""Further CAM methods from the pytorch-grad-cam library (optional extra `pneumocam[cam-extra]`).

The library hooks a target layer and expects a model that returns class scores, so PneumoniaNet is
wrapped to return its single logit, the target layer is the last block of layer4 (whose output is
the feature map), and the target is the library's BinaryClassifierOutputTarget(1): the pneumonia
logit itself, so the maps show positive evidence for pneumonia.
These methods are slower than CAM: ScoreCAM runs one extra forward pass per feature channel.
"""

from __future__ import annotations

import torch
from torch import nn

from pneumocam.errors import PneumocamError, missing_extra

# the -lib entries are the library's versions of methods pneumocam computes itself, kept to check one against the other
LIBRARY_METHODS = {"scorecam": "ScoreCAM", "eigencam": "EigenCAM", "layercam": "LayerCAM", "gradcam-lib": "GradCAM",
                   "gradcam++-lib": "GradCAMPlusPlus"}


class LogitOnly(nn.Module):
    """PneumoniaNet -> a model returning (B, 1) logits, as pytorch-grad-cam expects."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def pneumonia_targets(n: int) -> list:
    """The library's own single-logit target, for class 1 (pneumonia): the logit itself, unsigned."""
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    return [BinaryClassifierOutputTarget(1) for _ in range(n)]


def _import_library():
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise missing_extra("this CAM method", "grad-cam", "cam-extra") from exc
    return pytorch_grad_cam


def library_saliency(net: nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    """x: normalised (B, 1, H, W) -> maps (B, H, W) in [0, 1] from pytorch-grad-cam's `method`."""
    if method not in LIBRARY_METHODS:
        raise PneumocamError(f"unknown library CAM method {method!r}; choose from {sorted(LIBRARY_METHODS)}")
    library = _import_library()
    cam_class = getattr(library, LIBRARY_METHODS[method])
    model = LogitOnly(net).eval()
    target_layer = net.feature_map[-1][-1]  # layer4's last BasicBlock: its output is the feature map
    with cam_class(model=model, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=x, targets=pneumonia_targets(len(x)))
    return torch.from_numpy(maps).float()

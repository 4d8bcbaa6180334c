"""PneumoniaNet: a 1-channel ResNet18 that returns the pneumonia logit and its last feature map.

Returning the (B, 512, 7, 7) feature map from the same forward pass is what makes CAM free: it is a
weighted sum of that map with the fc weights, no hooks and no second pass (Zhou et al., CVPR 2016).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pneumocam.errors import PneumocamError
from pneumocam.model.checkpoints import is_pneumocam_checkpoint, load_checkpoint, network_state
from pneumocam.model.resnet import resnet18_trunk

FEATURE_CHANNELS = 512


class PretrainedWeightsError(PneumocamError):
    """ImageNet weights could not be obtained; the message names the alternatives."""


def adapt_input_conv(weight: torch.Tensor, in_channels: int = 1) -> torch.Tensor:
    """Turn pretrained RGB conv kernels (O, 3, k, k) into `in_channels` kernels (O, 1, k, k).

    Summing over the colour channels gives a gray image (R = G = B = x) exactly the response the RGB
    kernels gave, so the pretrained first layer keeps its meaning (timm's `adapt_input_conv`).
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a (O, I, k, k) conv weight, got shape {tuple(weight.shape)}")
    if weight.shape[1] == in_channels:
        return weight.clone()
    if in_channels != 1:
        raise ValueError(f"only 1-channel adaptation is supported, asked for {in_channels}")
    return weight.sum(dim=1, keepdim=True)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet18_Weights

    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # urllib/SSL/hash errors all mean "could not get the weights"
        raise PretrainedWeightsError(
            "could not download torchvision's ImageNet weights for ResNet18 "
            f"({type(exc).__name__}: {exc}). This machine may be offline. Alternatives: pass a local "
            "torchvision resnet18 state-dict file (--pretrained PATH), or train from scratch (--pretrained none)."
        ) from exc


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: weights file not found (use --pretrained none to train from scratch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"{path}: not a loadable torchvision state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_pretrained_backbone(pretrained: str) -> tuple[nn.Module, torch.Tensor]:
    """torchvision resnet18 with pretrained weights (fc excluded) and its conv1 adapted to 1 channel."""
    state = _imagenet_state_dict() if pretrained == "imagenet" else _state_dict_from_file(Path(pretrained))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" not in state:
        raise PretrainedWeightsError(f"{pretrained}: no conv1.weight, not a torchvision resnet18 state dict")
    conv1_weight = adapt_input_conv(state.pop("conv1.weight"))
    from torchvision.models import resnet18

    backbone = resnet18(weights=None)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "conv1."))]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{pretrained}: not a torchvision resnet18 state dict "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return backbone, conv1_weight


def _trunk_of(backbone: nn.Module) -> list[nn.Module]:
    return [backbone.bn1, backbone.relu, backbone.maxpool, backbone.layer1, backbone.layer2, backbone.layer3,
            backbone.layer4]


class PneumoniaNet(nn.Module):
    """ResNet18 with a 1-channel conv1 and a 1-output fc.

    forward(x: (B, 1, H, W), normalised) -> (logit (B, 1), feature_map (B, 512, H/32, W/32)).

    pretrained: "none" (random init), "imagenet" (torchvision weights API, needs network), a path to
    a torchvision resnet18 state dict (conv1 then is the sum of the RGB kernels), or a model pneumocam
    trained itself (a .ckpt or a bundled model's name), whose every layer, fc included, is taken over.
    """

    def __init__(self, pretrained: str = "none", weights_follow: bool = False):
        """weights_follow: the caller loads every weight next (a Predictor), so the layers are built without
        torchvision (pneumocam.model.resnet) and their initial values do not matter."""
        super().__init__()
        conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        own = is_pneumocam_checkpoint(pretrained)
        if weights_follow:
            trunk = resnet18_trunk()
        elif pretrained == "none" or own:  # torchvision's initialisation, which seeded training runs reproduce
            from torchvision.models import resnet18

            trunk = _trunk_of(resnet18(weights=None))
        else:
            backbone, conv1_weight = load_pretrained_backbone(pretrained)
            with torch.no_grad():
                conv1.weight.copy_(conv1_weight)
            trunk = _trunk_of(backbone)
        self.feature_map = nn.Sequential(conv1, *trunk)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_CHANNELS, 1)
        if own:
            try:
                self.load_state_dict(network_state(load_checkpoint(pretrained)))
            except RuntimeError as exc:
                raise PretrainedWeightsError(f"{pretrained}: weights do not match PneumoniaNet ({exc})") from exc

    @property
    def conv1(self) -> nn.Conv2d:
        return self.feature_map[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.feature_map(x)  # (B, 512, 7, 7) at 224 px
        pooled = torch.flatten(self.pool(features), 1)  # (B, 512)
        logit = self.fc(pooled)  # (B, 1)
        return logit, features

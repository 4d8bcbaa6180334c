"""Class Activation Maps as pure functions of tensors (no hooks: the model returns its features).

CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016): for a head
that is a global average pool followed by one linear layer,

    M(i, j) = sum_k w_k A_k(i, j)        and        logit = mean_ij M(i, j) + b,

so the raw map explains the pneumonia logit exactly. Sign convention: positive values push towards
pneumonia. The raw map keeps its sign and units: `upsample` keeps them (overlays draw it on an absolute
scale, see overlay.py); `upsample_and_normalize` gives the min-max normalised map that the localisation
scores and the relative overlay use.
"""

from __future__ import annotations

import torch

from pneumocam.explain.cam_grid import resize_matrix


def class_activation_map(features: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """Raw CAM: features (B, C, h, w), fc_weight (C,) or (1, C) -> (B, h, w), same units as the logit.

    Written as the reshape + weighted sum of the method: A -> (B, C, h*w), M = w^T A -> (B, h*w).
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    weight = fc_weight.reshape(-1)
    if weight.numel() != features.shape[1]:
        raise ValueError(f"fc weight has {weight.numel()} entries but features have {features.shape[1]} channels")
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)  # (B, 512, 49)
    cam = torch.einsum("c,bcn->bn", weight.to(features.dtype), flat)  # (B, 49)
    return cam.reshape(batch, height, width)


def grad_cam(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) for the single pneumonia logit, without hooks.

    features: (B, C, h, w) feature map that `logits` (B,) or (B, 1) was computed from (in the graph).
    alpha_k = mean_ij d logit / d A_k(i, j);  map = ReLU(sum_k alpha_k A_k)  -> (B, h, w).
    For a GAP + linear head alpha_k = w_k / (h w), so Grad-CAM = ReLU(CAM) / (h w) exactly.
    """
    grads = _logit_gradients(features, logits)
    alpha = grads.mean(dim=(2, 3))  # (B, C)
    return torch.relu(torch.einsum("bc,bchw->bhw", alpha, features.detach()))


def grad_cam_plus_plus(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018) for the single logit; same inputs as grad_cam.

    With S = exp(logit) the higher derivatives reduce to powers of the first one:
    a_k(i,j) = g^2 / (2 g^2 + sum_ab A_k(a,b) g^3), w_k = sum_ij a_k(i,j) ReLU(g),
    map = ReLU(sum_k w_k A_k)  -> (B, h, w).
    """
    grads = _logit_gradients(features, logits)
    acts = features.detach()
    g2, g3 = grads**2, grads**3
    denominator = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3))  # (B, C)
    return torch.relu(torch.einsum("bc,bchw->bhw", weights, acts))


def _logit_gradients(features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if not features.requires_grad:
        raise ValueError("features must be part of the autograd graph (run the forward pass with grad enabled)")
    # each logit depends only on its own image, so the gradient of the sum is the per-image gradient
    (grads,) = torch.autograd.grad(logits.reshape(-1).sum(), features, retain_graph=True)
    return grads  # (B, C, h, w)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max each map of (B, h, w) to [0, 1]. A constant map becomes all zeros (no NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def upsample_and_normalize(maps: torch.Tensor, size: tuple[int, int] = (224, 224),
                           alignment: str = "receptive-field") -> torch.Tensor:
    """(B, h, w) raw maps -> (B, H, W) in [0, 1]: min-max normalise, then bilinear resize (SPEC order).

    alignment says where each cell of the small map sits in the image (s = H / h, 32 for ResNet18 at 224):
    - "receptive-field" (default): cell p at pixel p * s, the centre of its receptive field. In a
      torchvision ResNet every stride-2 layer (7x7 conv pad 3, 3x3 max-pool pad 1, 3x3 convs pad 1)
      maps output index i to input index 2i, so last-stage cell p is centred on input pixel 32 p (see
      docs/explanations.md).
      Beyond the last cell's centre the map keeps the edge value.
    - "block-centre": cell p at pixel (p + 0.5) s, the middle of its s x s block; what cv2.resize and
      F.interpolate(align_corners=False) do, hence most CAM code and pytorch-grad-cam. Scored against real
      RSNA boxes it localises worse than "receptive-field" (docs/explanations.md has the measurement).
    Bilinear interpolation stays inside the input range, so the clamp only removes rounding error.
    """
    return upsample(normalize_maps(maps), size, alignment).clamp_(0.0, 1.0)


def upsample(maps: torch.Tensor, size: tuple[int, int] = (224, 224),
             alignment: str = "receptive-field") -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W) by bilinear interpolation, values and units kept; cells placed by `alignment`
    (see upsample_and_normalize), with cam_grid's resize matrices, as inference places them."""
    rows, columns = (torch.tensor(resize_matrix(cells, pixels, alignment), device=maps.device, dtype=maps.dtype)
                     for cells, pixels in zip(maps.shape[-2:], size, strict=True))
    return rows @ maps @ columns.T

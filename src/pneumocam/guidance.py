"""Box guidance: an optional training loss that tells the CAM *where*, from the radiologists' boxes.

With labels alone (weak supervision) a GAP classifier is free to spread its evidence over the whole
affected lung, and CAM then peaks anywhere on that plateau. Where the training set has boxes (RSNA
does for every positive), this loss asks the map's mass to lie inside them, in the spirit of the
box-supervised localisation of Li et al., "Thoracic Disease Identification and Localization with
Limited Supervision" (CVPR 2018).

It is a softmax over the 7x7 CAM cells, so adding a constant to every cell (which is what moves the
image logit, since logit = mean(CAM) + b) leaves it unchanged: the classification loss decides
*whether*, this loss only decides *where*, and the model stays a plain GAP + linear head whose CAM
explains its logit exactly. Images without boxes (negatives, positives from a box-less source) add nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pneumocam.cam import ALIGNMENTS


def cell_coverage(masks: torch.Tensor, cells: tuple[int, int], alignment: str = "receptive-field") -> torch.Tensor:
    """(B, 1, H, W) box masks (bool, or float in [0, 1]) -> (B, h, w): each CAM cell's share inside a box.

    A cell's area is the s x s square (s = H / h) the alignment centres it on (see
    cam.upsample_and_normalize): around pixel p s for "receptive-field", (p + 0.5) s for "block-centre".
    """
    height, width = masks.shape[-2:]
    if height % cells[0] or width % cells[1] or height // cells[0] != width // cells[1]:
        raise ValueError(f"a {height}x{width} mask does not split into {cells[0]}x{cells[1]} square cells")
    stride = height // cells[0]
    masks = masks.float()
    if alignment == "receptive-field":  # cell p spans pixels [p s - s/2, p s + s/2)
        half = stride // 2
        masks = F.pad(masks, (half, 0, half, 0))[..., :height, :width]
    elif alignment != "block-centre":
        raise ValueError(f"unknown alignment {alignment!r}; choose from {ALIGNMENTS}")
    return F.avg_pool2d(masks, stride)[:, 0]


def box_guidance_loss(cams: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """-log(share of the CAM's softmax mass inside the boxes), averaged over the images that have boxes.

    cams: (B, h, w) raw CAMs (logit units); coverage: (B, h, w) from cell_coverage. A cell half inside a
    box counts half. Returns a scalar that is 0 (and still in the graph) when no image has a box.
    """
    flat_coverage = coverage.flatten(1).float()
    boxed = (flat_coverage.sum(dim=1) > 0).float()  # a mask, not an index: no wait for the device
    probabilities = torch.softmax(cams.flatten(1).float(), dim=1)
    inside = (probabilities * flat_coverage).sum(dim=1)
    per_image = -torch.log(inside.clamp_min(1e-12)) * boxed
    return per_image.sum() / boxed.sum().clamp_min(1.0)

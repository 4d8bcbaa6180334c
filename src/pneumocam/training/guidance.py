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

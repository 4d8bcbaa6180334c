"""The course's augmentation as one batched resampling on the device (for the GPU speed path).

torchvision's per-image transforms on CPU workers deliver far fewer images than a GPU consumes.
This draws, per image, the same random parameters as
RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.9, 1.1)) followed by
RandomResizedCrop(224, scale=(0.35, 1), ratio=(3/4, 4/3)) ("original"; "shift" is the affine alone, with
10% translation), folds both into one 2x3 sampling matrix,
and resamples the whole batch with `affine_grid` + `grid_sample` (bilinear, black outside).
"shift-intensity" first varies each image's exposure (`jitter_intensity`): portable AP and upright PA films
differ in contrast and brightness, a cue the label must not be learnt from.

Input and output: (B, 1, H, W) images in [0, 1] (before normalisation, so "black" is 0 as in the
CPU pipeline), on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineCropRanges:
    degrees: float = 5.0
    translate: float = 0.05  # fraction of the image size
    scale: tuple[float, float] = (0.9, 1.1)
    crop_scale: tuple[float, float] = (0.35, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


# datasets.geometric_transform's recipes, drawn the same way: "shift" is the affine alone (a crop of the whole frame)
AUGMENT_RANGES = {
    "original": AffineCropRanges(),
    "shift": AffineCropRanges(translate=0.1, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)),
}


@dataclass(frozen=True)
class IntensityRanges:
    gamma: tuple[float, float] = (0.7, 1.4)  # x ** gamma: the film's exposure curve
    contrast: tuple[float, float] = (0.8, 1.2)  # about the image's mean
    brightness: tuple[float, float] = (-0.1, 0.1)  # added, in units of the [0, 1] range


def varies_intensity(augment: str) -> bool:
    """Whether the augmentation `augment` (an --augment choice) jitters intensity before its geometry."""
    return augment.endswith("-intensity")


def geometry_of(augment: str) -> str:
    """The geometric recipe of an --augment choice: "shift-intensity" moves images as "shift" does."""
    return augment.removesuffix("-intensity")


def jitter_intensity(images: torch.Tensor, generator: torch.Generator | None = None,
                     ranges: IntensityRanges = IntensityRanges()) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> the same, each image with its own gamma, contrast and brightness, clipped to
    [0, 1]. Applied before the geometry, so the area the affine brings in stays black."""
    u = torch.rand(images.shape[0], 3, generator=generator).to(images.device, images.dtype)

    def drawn(column: int, bounds: tuple[float, float]) -> torch.Tensor:
        return (bounds[0] + u[:, column] * (bounds[1] - bounds[0]))[:, None, None, None]

    gamma = torch.exp(drawn(0, (math.log(ranges.gamma[0]), math.log(ranges.gamma[1]))))  # log-uniform
    out = images.clamp(0, 1) ** gamma
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (out - mean) * drawn(1, ranges.contrast) + drawn(2, ranges.brightness)).clamp(0, 1)


def jitter_one(image: torch.Tensor) -> torch.Tensor:
    """`jitter_intensity` for one (1, H, W) image, drawn from torch's global generator (the CPU workers')."""
    return jitter_intensity(image[None])[0]


def sample_matrices(batch: int, generator: torch.Generator, ranges: AffineCropRanges = AffineCropRanges(),
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2, 3) matrices mapping output coordinates in [-1, 1] to input coordinates (affine_grid's theta)."""
    u = torch.rand(batch, 8, generator=generator).double()
    angle = torch.deg2rad((2 * u[:, 0] - 1) * ranges.degrees)
    shift = (2 * u[:, 1:3] - 1) * ranges.translate * 2  # a fraction of the size is twice that in [-1, 1] units
    zoom = ranges.scale[0] + u[:, 3] * (ranges.scale[1] - ranges.scale[0])
    area = ranges.crop_scale[0] + u[:, 4] * (ranges.crop_scale[1] - ranges.crop_scale[0])
    low, high = math.log(ranges.crop_ratio[0]), math.log(ranges.crop_ratio[1])
    ratio = torch.exp(low + u[:, 5] * (high - low))
    crop_w = torch.sqrt(area * ratio).clamp(max=1.0)  # width and height as fractions of the image
    crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
    # crop centre: uniform over positions that keep the crop inside the (affine-transformed) frame
    centre_x = (2 * u[:, 6] - 1) * (1 - crop_w)
    centre_y = (2 * u[:, 7] - 1) * (1 - crop_h)
    # output -> crop frame: q = c + diag(w, h) p; crop frame -> input: x = R(-angle) (q - t) / zoom
    cos, sin = torch.cos(angle), torch.sin(angle)
    rows = [torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)]
    inverse_rotation = torch.stack(rows, -2) / zoom[:, None, None]
    crop = torch.zeros(batch, 2, 2, dtype=torch.float64)
    crop[:, 0, 0], crop[:, 1, 1] = crop_w, crop_h
    linear = inverse_rotation @ crop
    offset = inverse_rotation @ (torch.stack([centre_x, centre_y], -1) - shift)[..., None]
    return torch.cat([linear, offset], dim=-1).float().to(device)


def augment_batch(images: torch.Tensor, generator: torch.Generator,
                  ranges: AffineCropRanges = AffineCropRanges()) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> the same shape, each image with its own random affine + resized crop."""
    theta = sample_matrices(images.shape[0], generator, ranges, images.device).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

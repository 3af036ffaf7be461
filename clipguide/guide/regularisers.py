"""Regularisers for guided images: functions of images (B, 3, H, W) in [0, 1] returning (B,)."""
from __future__ import annotations

import torch


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (smoothness)."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))


def range_penalty(images: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Mean squared excursion outside [low, high] (for parameterizations that can leave it)."""
    return ((images - images.clamp(low, high)) ** 2).mean(dim=(1, 2, 3))


def saturation(images: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel spread of the channels (penalise to keep colours from oversaturating)."""
    return (images.max(dim=1).values - images.min(dim=1).values).mean(dim=(1, 2))


def l2_to(images: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference to a reference image, only where `mask` (B|1, 1, H, W) is 1 when given:
    keeps the unedited part of an image in place."""
    d = (images - reference.to(images)) ** 2
    if mask is not None:
        m = mask.to(images)
        return (d * m).sum(dim=(1, 2, 3)) / (m.expand_as(d).sum(dim=(1, 2, 3)).clamp(min=1))
    return d.mean(dim=(1, 2, 3))


REGULARISERS = {"tv": total_variation, "range": range_penalty, "saturation": saturation}

"""Adversarial examples for robust training: projected gradient ascent in an L2 ball of pixels.

A guide whose image features move only when the picture really changes has pixel gradients that
look like the thing a prompt names; a guide that any faint pattern can fool steers pictures into
such patterns. Training on the worst pictures within a small ball of each image buys the first
kind. A pure function of the images and an objective, so the trainer can use it with any loss."""
from __future__ import annotations

from typing import Callable

import torch


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:                # (B, ...) -> (B, 1, 1, 1)
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))


def l2_attack(images: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], eps: float, steps: int,
              start: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The images moved, within L2 distance `eps` of themselves and inside [0, 1], to raise
    `objective(x)` (a scalar, e.g. a summed per-sample loss): `steps` normalised gradient steps of
    2.5 eps / steps from `start` (a random direction, scaled to eps / 2). `mask` (B, 1, 1, 1) of
    0/1 leaves the samples where it is 0 untouched. Returns detached images (B, C, H, W)."""
    mask = torch.ones(images.shape[0], *([1] * (images.ndim - 1)), dtype=images.dtype, device=images.device) \
        if mask is None else mask.to(images)

    def project(delta: torch.Tensor) -> torch.Tensor:
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
        return ((images + delta).clamp(0, 1) - images) * mask

    delta = project(start.to(images) / _per_sample_norm(start) * (eps * 0.5))
    step_size = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(images + delta), delta)
        delta = project(delta.detach() + step_size * grad / _per_sample_norm(grad))
    return (images + delta).detach()

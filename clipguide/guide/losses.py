"""Distances between embeddings, the loss forms of guidance. Pure functions: no models, no devices.

All take features of shape (..., E) (normalised or not: they normalise) and return (...)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between directions, 2 * arcsin(|x - y| / 2)^2 (in [0, pi^2/2])."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity (in [0, 2])."""
    return 1 - F.cosine_similarity(x, y, dim=-1)


def directional_distance(image: torch.Tensor, source_image: torch.Tensor, text: torch.Tensor,
                         source_text: torch.Tensor) -> torch.Tensor:
    """1 - cos(image - source_image, text - source_text): the edit in image space should point the
    way the text moved (source text -> target text)."""
    di = F.normalize(image, dim=-1) - F.normalize(source_image, dim=-1)
    dt = F.normalize(text, dim=-1) - F.normalize(source_text, dim=-1)
    return 1 - F.cosine_similarity(di, dt, dim=-1)


DISTANCES = {"spherical": spherical_distance, "cosine": cosine_distance}

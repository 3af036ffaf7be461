"""Differentiable augmentations for guidance: cutouts with flips, jitter, rotation, perspective and
noise, all cutouts of a step sampled in one `grid_sample` call.

Random parameters are drawn apart from applying them (`sample` then `apply`), from an explicit
`torch.Generator`, so a run can be replayed; `forward` does both."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


@dataclass
class CutoutParams:
    """Sampled parameters of B x n cutouts: homographies from output to input coordinates
    (normalised, align_corners=False) and additive noise."""

    homography: torch.Tensor          # (B, n, 3, 3)
    noise: torch.Tensor | None        # (B * n, 3, S, S) or None
    size: int


class Cutouts(nn.Module):
    """n square views of each image, resampled to `size` x `size`.

    - `overview` of the n views show the whole image (centre square of the shorter side, or the
      whole image squeezed when `overview_squeeze`), the rest are inner cuts whose side is a fraction
      of the shorter side drawn as `min_size + (1 - min_size) * u ** size_power` (a larger power
      favours small cuts), placed uniformly.
    - every view may be flipped (`flip` chance), shifted by up to `jitter` of its side, rotated by up
      to `rotate` degrees, distorted in perspective by up to `perspective`, and receive Gaussian
      noise of standard deviation up to `noise`.
    - `supersample` k > 1 renders each view at k times the size and averages k x k blocks: cheap
      antialiasing when views are much larger than `size`; `"auto"` picks 2 when the image side is
      over 1.5 x size, else 1.
    """

    def __init__(self, size: int = 224, n: int = 16, overview: int = 2, min_size: float = 0.25,
                 size_power: float = 1.0, flip: float = 0.5, jitter: float = 0.05, rotate: float = 0.0,
                 perspective: float = 0.0, noise: float = 0.0, padding: str = "reflection",
                 supersample: int | str = "auto", overview_squeeze: bool = False):
        super().__init__()
        if n < 1 or size < 1:
            raise InputError(f"Cutouts needs n >= 1 and size >= 1, got n={n}, size={size}")
        if not 0 <= overview <= n:
            raise InputError(f"overview={overview} must lie in [0, n={n}]")
        if not 0 < min_size <= 1:
            raise InputError(f"min_size={min_size} must lie in (0, 1]")
        if padding not in ("reflection", "border", "zeros"):
            raise InputError(f"padding {padding!r} must be reflection, border or zeros")
        self.size, self.n, self.overview = int(size), int(n), int(overview)
        self.min_size, self.size_power = float(min_size), float(size_power)
        self.flip, self.jitter, self.rotate = float(flip), float(jitter), float(rotate)
        self.perspective, self.noise, self.padding = float(perspective), float(noise), padding
        self.supersample = supersample
        self.overview_squeeze = overview_squeeze
        self._base_grids: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (f"size={self.size}, n={self.n}, overview={self.overview}, min_size={self.min_size}, "
                f"flip={self.flip}, jitter={self.jitter}, rotate={self.rotate}, "
                f"perspective={self.perspective}, noise={self.noise}")

    def _rand(self, shape, generator, device) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> CutoutParams:
        """Draw parameters for `batch` images of height x width."""
        B, n = batch, self.n
        dev = torch.device(device)
        rand = lambda *shape: self._rand(shape, generator, "cpu")           # noqa: E731  CPU draws: same on any device
        short = min(height, width)
        # side of each view as a fraction of the shorter side; overview views cover it all
        frac = self.min_size + (1 - self.min_size) * rand(B, n) ** self.size_power
        frac[:, :self.overview] = 1.0
        side_x = frac * short / width                                       # half-extent in normalised x units
        side_y = frac * short / height
        # centres: uniform where the view fits, centred for overview views
        cx = (rand(B, n) * 2 - 1) * (1 - side_x)
        cy = (rand(B, n) * 2 - 1) * (1 - side_y)
        cx[:, :self.overview] = 0
        cy[:, :self.overview] = 0
        if self.overview_squeeze:
            side_x[:, :self.overview] = 1.0
            side_y[:, :self.overview] = 1.0
        cx = cx + (rand(B, n) * 2 - 1) * self.jitter * side_x * 2
        cy = cy + (rand(B, n) * 2 - 1) * self.jitter * side_y * 2
        angle = (rand(B, n) * 2 - 1) * math.radians(self.rotate)
        sign = torch.where(rand(B, n) < self.flip, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        H = torch.zeros(B, n, 3, 3)
        # output (u, v) -> input: scale, flip horizontally, rotate, translate
        H[..., 0, 0] = side_x * cos * sign
        H[..., 0, 1] = -side_x * sin
        H[..., 1, 0] = side_y * sin * sign
        H[..., 1, 1] = side_y * cos
        H[..., 0, 2] = cx
        H[..., 1, 2] = cy
        H[..., 2, 2] = 1.0
        if self.perspective > 0:
            H[..., 2, 0] = (rand(B, n) * 2 - 1) * self.perspective
            H[..., 2, 1] = (rand(B, n) * 2 - 1) * self.perspective
        noise = None
        if self.noise > 0:
            g = generator
            scale = rand(B * n, 1, 1, 1) * self.noise
            noise = torch.randn(B * n, 3, self.size, self.size, generator=g) * scale
            noise = noise.to(dev)
        return CutoutParams(H.to(dev), noise, self.size)

    def _grid(self, params: CutoutParams, factor: int, device, dtype) -> torch.Tensor:
        """Sampling grid (B, n * S', S', 2) for all views, S' = size * factor."""
        S = params.size * factor
        key = (S, str(device), dtype)
        base = self._base_grids.get(key)
        if base is None:                # the pixel-centre grid is fixed per size: built once, not every step
            lin = (torch.arange(S, device=device, dtype=dtype) * 2 + 1) / S - 1    # pixel centres in [-1, 1]
            v, u = torch.meshgrid(lin, lin, indexing="ij")
            base = torch.stack([u, v, torch.ones_like(u)], dim=-1).view(1, 1, S * S, 3)   # (1, 1, S*S, 3)
            self._base_grids[key] = base
        pts = base @ params.homography.to(dtype).transpose(-1, -2)                     # (B, n, S*S, 3)
        xy = pts[..., :2] / pts[..., 2:].clamp(min=1e-6)
        B, n = params.homography.shape[:2]
        return xy.view(B, n * S, S, 2)

    def apply(self, images: torch.Tensor, params: CutoutParams) -> torch.Tensor:
        """(B, 3, H, W) -> (B * n, 3, size, size), differentiable with respect to `images`."""
        B, C, H, W = images.shape
        if params.homography.shape[0] != B:
            raise InputError(f"parameters were sampled for {params.homography.shape[0]} images, got {B}")
        factor = self.supersample
        if factor == "auto":
            factor = 2 if max(H, W) > 1.5 * params.size else 1
        grid = self._grid(params, int(factor), images.device, images.dtype)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)
        S = params.size * int(factor)
        n = params.homography.shape[1]
        out = out.view(B, C, n, S, S).transpose(1, 2).reshape(B * n, C, S, S)
        if factor > 1:
            out = F.avg_pool2d(out, int(factor))
        if params.noise is not None:
            out = out + params.noise.to(out.dtype)
        return out

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B, _, H, W = images.shape
        return self.apply(images, self.sample(B, H, W, generator, images.device))

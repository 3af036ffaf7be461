"""Image parameterizations that need no trained generator: raw pixels, a Fourier spectrum with
decorrelated colour, and a global colour grade of a given image (edits of light and colour). Each
is a Module whose parameters are the latent and whose forward() returns images (B, 3, H, W) in
[0, 1]: the interface `steer` and the generator adapters share."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from ..generators.base import ClampWithGrad, Generator
from ..preprocess import check_images, resize_center_crop

# Square root of the colour covariance of natural images (a common fact of feature visualisation):
# optimising in these decorrelated axes balances the colour channels' learning rates.
COLOUR_SQRT_COV = torch.tensor([[0.26, 0.09, 0.02],
                                [0.27, 0.00, -0.05],
                                [0.27, -0.09, 0.03]])
_COLOUR_NORM = COLOUR_SQRT_COV.norm(dim=0).max()


def _logit(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def _init_image(init: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    x = check_images(init)
    if x.shape[-2:] != size:
        x = resize_center_crop(x, min(size)) if size[0] == size[1] else torch.nn.functional.interpolate(
            x, size=size, mode="bicubic", align_corners=False, antialias=True)
    if x.shape[0] == 1 and batch > 1:
        x = x.expand(batch, -1, -1, -1)
    if x.shape[0] != batch:
        raise InputError(f"init has {x.shape[0]} images for a batch of {batch}")
    return x.clamp(0, 1)


class PixelImage(Generator):
    """Pixels through a sigmoid (always in [0, 1]), from noise or an init image."""

    family = "pixels"

    def __init__(self, size: int | tuple[int, int] = 64, batch: int = 1, init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, noise: float = 0.5):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        if init is not None:
            start = _logit(_init_image(init, batch, (h, w)))
        else:
            start = torch.randn(batch, 3, h, w, generator=generator) * noise
        self.latent = nn.Parameter(start.contiguous())
        self.register_buffer("start", self.latent.detach().clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.latent)


class FourierImage(Generator):
    """A spectrum whose frequencies are scaled by 1 / f^decay (so low frequencies move first), in
    decorrelated colour space, through a sigmoid. Smooth, natural-looking images from few steps."""

    family = "fourier"

    def __init__(self, size: int | tuple[int, int] = 64, batch: int = 1, decay: float = 1.0,
                 generator: torch.Generator | None = None, std: float = 0.01, init: torch.Tensor | None = None):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        self.size = (h, w)
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / max(h, w))
        self.register_buffer("scale", (1.0 / freq ** decay) / math.sqrt(h * w), persistent=False)
        spectrum = torch.randn(batch, 3, h, w // 2 + 1, 2, generator=generator) * std
        self.spectrum = nn.Parameter(spectrum)
        if init is not None:
            self._fit(init, batch)
        self.register_buffer("start", self.spectrum.detach().clone(), persistent=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:        # decorrelated -> RGB logits
        m = (COLOUR_SQRT_COV / _COLOUR_NORM).to(x)
        return torch.einsum("ij,bjhw->bihw", m, x)

    def _fit(self, init: torch.Tensor, batch: int) -> None:
        """Set the spectrum so that forward() returns `init` (inverse of every step)."""
        target = _logit(_init_image(init, batch, self.size))
        m = (COLOUR_SQRT_COV / _COLOUR_NORM)
        decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), target)
        spec = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        with torch.no_grad():
            self.spectrum.copy_(torch.view_as_real(spec))

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=self.size, norm="ortho")
        return torch.sigmoid(self._colour(x))


class GradedImage(Generator):
    """An image recoloured as a whole: per image, a 3 x 3 colour matrix and an offset are the only
    parameters (12 numbers), so steering can change light and colour everywhere ("at night", "in
    the snow", or an object's colour under a mask) but never draws texture or moves a shape. It
    needs the image it recolours (`init`); `generator` is unused (the start is the image itself)."""

    family = "grade"
    from_image = True

    def __init__(self, size: int | tuple[int, int] = 64, batch: int = 1, init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if init is None:
            raise InputError("a colour grade recolours an image: give the image (init=...; on the command line, "
                             "clipguide edit --image IN.png --generator grade)")
        h, w = (size, size) if isinstance(size, int) else size
        self.register_buffer("base", _init_image(init, batch, (h, w)).contiguous(), persistent=False)
        self.latent = nn.Parameter(torch.zeros(batch, 3, 4))          # matrix - identity | offset
        self.register_buffer("start", self.latent.detach().clone(), persistent=False)
        self.register_buffer("eye", torch.eye(3), persistent=False)

    def forward(self) -> torch.Tensor:
        g = self.latent
        matrix = self.eye + g[..., :3]
        out = torch.einsum("bij,bjhw->bihw", matrix, self.base) + g[..., 3, None, None]
        return ClampWithGrad.apply(out, 0.0, 1.0)


PARAMETERIZATIONS = {"pixels": PixelImage, "fourier": FourierImage, "grade": GradedImage}

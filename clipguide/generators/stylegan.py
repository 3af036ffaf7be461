"""StyleGAN2 as a generator: the network in the layout of rosinality stylegan2-pytorch checkpoints, its
loader and the project's own safetensors format, GAN inversion, and the latent adapter `steer` drives.

Reading order: upfirdn2d (resampling in plain torch ops) -> layers (equalised learning rate,
modulated convolution, noise, to-RGB) -> the config -> the generator (mapping z -> w, synthesis
w+ -> image) -> reading and writing checkpoints -> inversion -> the adapter.

The state dict keys, buffer shapes and arithmetic follow the public checkpoint layout exactly, so a
``.pt`` written by that trainer (``{"g", "d", "g_ema", "g_optim", "d_optim", "args", ...}``), or by
its converter (``{"g_ema", "latent_avg"}``), loads without conversion::

    net = load_stylegan("550000.pt")                   # the EMA generator, frozen later by the adapter
    gen = StyleGANLatent(net, batch=4, space="w+", truncation=0.7, generator=torch.Generator().manual_seed(0))
    images = gen()                                     # (4, 3, S, S) in [0, 1], differentiable w.r.t. the latent
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from ..typedconfig import check_fields, read_json
from .base import Generator, check_init, freeze, to_unit

__all__ = ["StyleGAN2Config", "StyleGAN2Generator", "StyleGANLatent", "infer_config", "invert", "load_stylegan",
           "save_stylegan", "upfirdn2d", "FORMAT_TAG"]

FORMAT_TAG = "clipguide.stylegan2"
NoiseSpec = Union[str, Sequence[torch.Tensor]]      # "const" | "random" | "zero" | one tensor per layer


# ---------------------------------------------------------------------------------------------------
# resampling: upsample by zero insertion, pad (or crop), FIR filter, downsample
# ---------------------------------------------------------------------------------------------------
def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0)) -> torch.Tensor:
    """Resample every channel of `x` (B, C, H, W) with the 2-D FIR `kernel` (kh, kw).

    Steps: insert `up - 1` zeros after every sample, pad by `pad` = (p0, p1) on both axes or
    (x0, x1, y0, y1) (negative values crop), convolve with `kernel` (a true convolution, so the
    kernel is flipped for conv2d), keep every `down`-th sample. Output height:
    (H * up + y0 + y1 - kh) // down + 1."""
    px0, px1, py0, py1 = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))                 # a zero after each sample
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (px0, px1, py0, py1))
    # one depthwise convolution over the channels: ~20x faster (forward and backward) on CPU than
    # folding the channels into the batch of a single-channel convolution
    weight = kernel.flip(0, 1).to(x).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D kernel (k, k) from 1-D taps, normalised to sum to 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[:, None] * k[None, :]
    return k / k.sum()


class Blur(nn.Module):
    """FIR filter with fixed padding; `gain` = up-factor squared after a stride-2 transposed conv."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * gain)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 (or `factor`) upsampling by zero insertion and the FIR filter; output is exactly factor * H."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor ** 2)
        extra = len(taps) - factor                     # filter taps beyond the zero-inserted grid
        self.pad = ((extra + 1) // 2 + factor - 1, extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# ---------------------------------------------------------------------------------------------------
# layers (equalised learning rate: weights stored at unit variance, scaled by 1/sqrt(fan_in) at use)
# ---------------------------------------------------------------------------------------------------
def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """Add a per-channel bias, leaky ReLU, then gain sqrt(2) (keeps activations at unit variance)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.reshape(shape), slope) * math.sqrt(2)


class PixelNorm(nn.Module):
    """Scale each vector to unit root-mean-square over the channel axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling; `lr_mul` slows the layer (the mapping net uses 0.01)
    by storing weight / lr_mul and bias / lr_mul and multiplying back at use."""

    def __init__(self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in, generator=generator) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(d_in)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return bias_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv(nn.Module):
    """Convolution whose input channels are scaled per sample by an affine map of the style, then
    (optionally) demodulated: each output filter rescaled to unit L2 norm. `upsample` makes it a
    stride-2 transposed convolution followed by the blur filter (output exactly 2H)."""

    def __init__(self, c_in: int, c_out: int, k: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, taps: Sequence[float] = (1, 3, 3, 1),
                 generator: torch.Generator | None = None):
        super().__init__()
        self.c_in, self.c_out, self.k = c_in, c_out, k
        self.demodulate, self.upsample = demodulate, upsample
        self.eps = 1e-8
        self.scale = 1 / math.sqrt(c_in * k * k)
        self.padding = k // 2
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, k, k, generator=generator))
        if upsample:
            # the transposed conv gives 2H + k - 2 samples; this padding trims the blurred result to 2H
            extra = (len(taps) - 2) - (k - 1)
            self.blur = Blur(taps, pad=((extra + 1) // 2 + 1, extra // 2 + 1), gain=4)
        self.modulation = EqualLinear(style_dim, c_in, bias_init=1.0, generator=generator)

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """(B, style_dim) -> per-sample filters (B, c_out, c_in, k, k)."""
        s = self.modulation(style)                                          # (B, c_in)
        weight = self.scale * self.weight * s[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + self.eps)
        return weight

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weight = self.modulated_weight(style)                               # (B, O, I, k, k)
        x = x.reshape(1, b * self.c_in, h, w)                               # one group per sample
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * self.c_in, self.c_out, self.k, self.k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)         # (1, B*O, 2H+k-2, 2W+k-2)
            return self.blur(out.reshape(b, self.c_out, *out.shape[-2:]))
        out = F.conv2d(x, weight.reshape(b * self.c_out, self.c_in, self.k, self.k), padding=self.padding, groups=b)
        return out.reshape(b, self.c_out, *out.shape[-2:])


class NoiseInjection(nn.Module):
    """Adds noise (B|1, 1, H, W) scaled by a learned scalar (zero at initialisation)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class BiasActivation(nn.Module):
    """The per-channel bias and leaky ReLU that follow each styled convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_leaky_relu(x, self.bias)


class ConstantInput(nn.Module):
    """The learned 4x4 tensor synthesis starts from."""

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4, generator=generator))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise -> bias + leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool = False,
                 taps: Sequence[float] = (1, 3, 3, 1), generator: torch.Generator | None = None):
        super().__init__()
        self.conv = ModulatedConv(c_in, c_out, 3, style_dim, upsample=upsample, taps=taps, generator=generator)
        self.noise = NoiseInjection()
        self.activate = BiasActivation(c_out)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, plus the upsampled RGB of the previous resolution."""

    def __init__(self, c_in: int, style_dim: int, upsample: bool = True, taps: Sequence[float] = (1, 3, 3, 1),
                 generator: torch.Generator | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(taps)
        self.conv = ModulatedConv(c_in, 3, 1, style_dim, demodulate=False, generator=generator)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


# ---------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator. Channel widths: `channel_max` up to 32 px, then
    2**14 * channel_multiplier / resolution (256 * m at 64 px, halving at each step), capped at
    `channel_max`; the defaults are the published FFHQ/LSUN models. Tiny test nets lower channel_max."""

    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_max: int = 512
    lr_mlp: float = 0.01
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)

    def __post_init__(self):
        if self.size < 4 or self.size & (self.size - 1):
            raise ConfigError(f"StyleGAN2 size must be a power of two >= 4, got {self.size}")
        for name in ("style_dim", "n_mlp", "channel_multiplier", "channel_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"StyleGAN2 {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr_mlp > 0 or len(self.blur_kernel) < 1:
            raise ConfigError("StyleGAN2 lr_mlp must be > 0 and blur_kernel non-empty")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of w vectors synthesis reads (two per resolution from 8 px, two at 4 px)."""
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        """Number of noise inputs (one per styled convolution)."""
        return (self.log_size - 2) * 2 + 1

    def channels(self, res: int) -> int:
        return min(self.channel_max, 2 ** 14 * self.channel_multiplier // res)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "StyleGAN2 config") -> StyleGAN2Config:
        return cls(**check_fields(cls, dict(data), where))

    @classmethod
    def from_json(cls, text: str, where: str = "StyleGAN2 config") -> StyleGAN2Config:
        return cls.from_dict(read_json(text, where), where)


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def infer_config(state_dict: Mapping[str, torch.Tensor], channel_multiplier: int = 2) -> StyleGAN2Config:
    """The architecture of a generator state dict, from its tensor shapes. `channel_multiplier` is
    used only when the shapes do not decide it (every width capped, as at 32 px and below)."""
    sd = state_dict
    for key in ("style.1.weight", "input.input", "to_rgb1.conv.weight"):
        if key not in sd:
            raise CheckpointError(f"not a StyleGAN2 generator state dict: no {key!r}. {_looks_like(sd)}")
    mlp = _indices(sd, r"style\.(\d+)\.weight")
    n_rgb = len(_indices(sd, r"to_rgbs\.(\d+)\.conv\.weight"))
    n_noise = len(_indices(sd, r"noises\.noise_(\d+)"))
    log_size = n_rgb + 2
    if n_noise and n_noise != (log_size - 2) * 2 + 1:
        raise CheckpointError(f"inconsistent StyleGAN2 state dict: {n_rgb} to_rgbs layers but {n_noise} noise buffers")
    channel_max = sd["input.input"].shape[1]
    for i in range(n_rgb):                                   # first width below the cap fixes the multiplier
        res, width = 2 ** (i + 3), sd[f"to_rgbs.{i}.conv.weight"].shape[2]
        if width < channel_max:
            channel_multiplier = max(1, round(width * res / 2 ** 14))
            break
    taps: tuple[float, ...] = (1, 3, 3, 1)
    if "convs.0.conv.blur.kernel" in sd:                     # 2-D buffer k k^T * 4 / sum^2: row sums give the taps
        rows = sd["convs.0.conv.blur.kernel"].float().sum(dim=1)
        rows = rows / rows[rows.abs() > 1e-12].abs().min()
        taps = tuple(round(float(t), 4) for t in rows)
    return StyleGAN2Config(size=2 ** log_size, style_dim=sd["style.1.weight"].shape[1], n_mlp=len(mlp),
                           channel_multiplier=int(channel_multiplier), channel_max=int(channel_max),
                           blur_kernel=taps)


# ---------------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------------
class StyleGAN2Generator(nn.Module):
    """Mapping network z (B, D) -> w (B, D) and synthesis w+ (B, n_latent, D) -> image (B, 3, S, S),
    roughly in [-1, 1]. State dict keys are those of rosinality stylegan2-pytorch checkpoints."""

    def __init__(self, config: StyleGAN2Config, generator: torch.Generator | None = None):
        super().__init__()
        c, g = config, generator
        self.config = c
        self.size, self.style_dim, self.n_latent, self.num_layers = c.size, c.style_dim, c.n_latent, c.num_layers
        taps = c.blur_kernel
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(c.style_dim, c.style_dim, lr_mul=c.lr_mlp, activate=True, generator=g) for _ in range(c.n_mlp)])
        width = c.channels(4)
        self.input = ConstantInput(width, generator=g)
        self.conv1 = StyledConv(width, width, c.style_dim, taps=taps, generator=g)
        self.to_rgb1 = ToRGB(width, c.style_dim, upsample=False, generator=g)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()                                            # fixed noise, one per layer
        for i in range(c.num_layers):
            res = 2 ** ((i + 5) // 2)                                        # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res, generator=g))
        for log_res in range(3, c.log_size + 1):
            out = c.channels(2 ** log_res)
            self.convs.append(StyledConv(width, out, c.style_dim, upsample=True, taps=taps, generator=g))
            self.convs.append(StyledConv(out, out, c.style_dim, taps=taps, generator=g))
            self.to_rgbs.append(ToRGB(out, c.style_dim, taps=taps, generator=g))
            width = out
        # average w for truncation: from the checkpoint, or computed on first use (not in the state dict)
        self.register_buffer("latent_avg", None, persistent=False)

    # --- mapping -------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> w (B, D)."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Average of w over `n` random z: (1, D)."""
        z = torch.randn(n, self.style_dim, generator=generator).to(self.input.input)
        return self.mapping(z).mean(dim=0, keepdim=True)

    def average_latent(self) -> torch.Tensor:
        """The w truncation pulls toward (1, D): the checkpoint's latent_avg, else mean_latent()
        from a fixed seed, computed once and kept."""
        if self.latent_avg is None:
            self.latent_avg = self.mean_latent(4096, torch.Generator().manual_seed(0))
        return self.latent_avg

    def truncate(self, w: torch.Tensor, truncation: float, truncation_latent: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Move w toward the average latent: avg + truncation * (w - avg)."""
        if truncation == 1:
            return w
        avg = self.average_latent() if truncation_latent is None else truncation_latent
        return avg + truncation * (w - avg)

    # --- synthesis -----------------------------------------------------------------------------
    def noise_inputs(self, batch: int, noise: NoiseSpec = "const",
                     generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One noise tensor per layer: the fixed buffers ("const"), zeros, fresh draws ("random",
        (B, 1, r, r) each, from `generator`), or a given list."""
        fixed = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if isinstance(noise, str):
            if noise == "const":
                return fixed
            if noise == "zero":
                return [torch.zeros_like(n) for n in fixed]
            if noise == "random":
                return [torch.randn(batch, 1, *n.shape[-2:], generator=generator).to(n) for n in fixed]
            raise InputError(f"noise must be 'const', 'random', 'zero' or a list of tensors, got {noise!r}")
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise InputError(f"noise list has {len(noise)} tensors; this generator has {self.num_layers} layers")
        return noise

    def synthesis(self, w_plus: torch.Tensor, noise: NoiseSpec = "const",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """w+ (B, n_latent, D) -> image (B, 3, S, S), roughly in [-1, 1]."""
        if w_plus.dim() != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise InputError(f"w+ must be (B, {self.n_latent}, {self.style_dim}), got {tuple(w_plus.shape)}")
        noises = self.noise_inputs(w_plus.shape[0], noise, generator)
        x = self.input(w_plus.shape[0])                                       # (B, C, 4, 4)
        x = self.conv1(x, w_plus[:, 0], noises[0])
        skip = self.to_rgb1(x, w_plus[:, 1])                                  # (B, 3, 4, 4)
        for j, to_rgb in enumerate(self.to_rgbs):                             # each doubles the resolution
            i = 2 * j + 1
            x = self.convs[2 * j](x, w_plus[:, i], noises[i])
            x = self.convs[2 * j + 1](x, w_plus[:, i + 1], noises[i + 1])
            skip = to_rgb(x, w_plus[:, i + 2], skip)
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                noise: NoiseSpec = "const", generator: torch.Generator | None = None) -> torch.Tensor:
        """z (B, D) -> image (B, 3, S, S): mapping, truncation, the same w at every layer, synthesis."""
        w = self.truncate(self.mapping(z), truncation, truncation_latent)
        return self.synthesis(w[:, None].expand(-1, self.n_latent, -1), noise=noise, generator=generator)


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------
_FAMILIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("encoder.conv_in.weight", "quantize.embedding.weight", "decoder.conv_out.weight"),
     "this looks like a VQGAN checkpoint (taming-transformers layout): use load_vqgan"),
    (("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection", "logit_scale"),
     "this looks like a CLIP checkpoint: load it with clipguide.load"),
    (("text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight"),
     "this looks like a Hugging Face CLIP checkpoint: load it with clipguide.load"),
    (("conv_in.weight", "time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight"),
     "this looks like a diffusers UNet: use the diffusion adapter with its pipeline directory"),
    (("final_linear.0.weight", "final_conv.0.weight", "convs.0.0.weight"),
     "this looks like a StyleGAN2 discriminator: pass the checkpoint that holds the generator ('g_ema')"),
    (("mapping.fc0.weight", "synthesis.b4.const", "synthesis.input.weight"),
     "this looks like an NVIDIA stylegan2-ada / stylegan3 generator: convert it to the rosinality layout first"),
)


def _looks_like(keys) -> str:
    """A sentence naming the checkpoint family these keys belong to, when recognisable."""
    keys = set(keys)
    for markers, text in _FAMILIES:
        if any(m in keys for m in markers):
            return text[0].upper() + text[1:] + "."
    shown = ", ".join(sorted(keys)[:5]) or "none"
    return f"Its keys (e.g. {shown}) match no known family; expected rosinality stylegan2-pytorch generator keys."


def _allow_namespace():
    """Context in which weights-only unpickling also accepts argparse.Namespace (the trainer's args)."""
    return torch.serialization.safe_globals([argparse.Namespace])


def _read_torch_file(path: Path, map_location) -> Any:
    """torch.load with weights_only=True plus argparse.Namespace; refuses every other global."""
    from ..formats.readers import _unsafe_globals

    is_zip = zipfile.is_zipfile(path)
    try:
        with _allow_namespace():
            return torch.load(path, map_location=map_location, weights_only=True, mmap=is_zip)
    except Exception as exc:
        unsafe = [g for g in _unsafe_globals(path, is_zip) if g != "argparse.Namespace"]
        if unsafe or "GLOBAL" in str(exc):
            raise CheckpointError(
                f"Refusing to load '{path}': it contains objects clipguide will not unpickle "
                f"({', '.join(unsafe[:5]) or 'outside the weights-only allowlist'}). Nothing from the file was "
                "executed. If you trust it, load it once with torch.load(weights_only=False) in a trusted "
                "environment and save {'g_ema': state_dict} again.") from None
        raise CheckpointError(f"Cannot read torch.save file '{path}' ({type(exc).__name__}: {exc}). "
                              "If it is damaged or truncated, download it again.") from None


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _pick_state_dict(obj: Any, key: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The generator's state dict and the extras (latent_avg, args) of a loaded torch.save object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a StyleGAN2 checkpoint dict.")
    extras = {"latent_avg": obj.get("latent_avg"), "args": obj.get("args")}
    if _is_tensor_mapping(obj.get(key)):
        return dict(obj[key]), extras
    if key == "g_ema" and _is_tensor_mapping(obj.get("g")):
        warnings.warn(f"'{path}' has no 'g_ema' (the averaged generator); using 'g', which usually gives "
                      "noisier images", stacklevel=3)
        return dict(obj["g"]), extras
    rest = {k: v for k, v in obj.items() if k not in ("latent_avg", "args")}
    if _is_tensor_mapping(rest):                                        # a bare state dict
        return dict(rest), extras
    nested = {k: v for k, v in obj.items() if _is_tensor_mapping(v)}
    shown = ", ".join(f"{k!r}" + (" (state dict)" if k in nested else "") for k in list(obj)[:8])
    inner = {name for v in nested.values() for name in v} or set(map(str, obj))
    raise CheckpointError(f"'{path}' has no generator state dict under {key!r} (its entries: {shown}). "
                          f"{_looks_like(inner)}")


def _check_keys(net: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = {k: v.shape for k, v in net.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(s)})" for k, s in expected.items()
             if k in sd and sd[k].shape != s]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(wrong)} of the wrong shape (e.g. {'; '.join(wrong[:2])})" if wrong else ""]
        raise CheckpointError(f"'{path}' does not match a StyleGAN2 generator ({net.config.size} px): keys "
                              + ", ".join(p for p in parts if p) + f". {_looks_like(sd.keys())}")


def load_stylegan(path: str | os.PathLike, key: str = "g_ema", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> StyleGAN2Generator:
    """A generator from a rosinality stylegan2-pytorch ``.pt`` checkpoint (the ``key`` entry, "g_ema"
    by default, falling back to "g" with a warning, or a bare state dict), or from a file written by
    :func:`save_stylegan`. Read safely (weights only; the trainer's argparse.Namespace is the one
    object allowed besides tensors). The checkpoint's "latent_avg" is kept for truncation."""
    from ..formats.readers import read_checkpoint, sniff_format

    path = Path(path)
    if path.is_dir() and (path / "model_index.json").is_file():
        raise CheckpointError(f"'{path}' is a diffusers pipeline directory, not a StyleGAN2 checkpoint: use the "
                              "diffusion adapter for it.")
    kind = sniff_format(path)
    args, latent_avg, config = None, None, None
    if kind == "torch":
        sd, extras = _pick_state_dict(_read_torch_file(path, "cpu"), key, path)
        latent_avg, args = extras["latent_avg"], extras["args"]
    elif kind == "torchscript":
        raise CheckpointError(f"'{path}' is a TorchScript archive; StyleGAN2 checkpoints are torch.save dicts "
                              "with a 'g_ema' state dict, or clipguide safetensors files.")
    else:
        raw = read_checkpoint(path)
        sd = dict(raw.tensors)
        latent_avg = sd.pop("latent_avg", None)
        if raw.metadata.get("format") == FORMAT_TAG:
            config = StyleGAN2Config.from_json(raw.metadata.get("config", ""), where=f"{path} config")
    if config is None:
        multiplier = getattr(args, "channel_multiplier", 2) if isinstance(args, argparse.Namespace) else 2
        try:
            config = infer_config(sd, channel_multiplier=int(multiplier))
        except CheckpointError as e:
            raise CheckpointError(f"'{path}': {e}") from None
    net = StyleGAN2Generator(config).to(dtype)
    _check_keys(net, sd, path)
    net.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()})
    if isinstance(latent_avg, torch.Tensor):
        net.latent_avg = latent_avg.detach().to(dtype).reshape(1, config.style_dim)
    net.source = str(path)
    return net.to(device)


def save_stylegan(net: StyleGAN2Generator, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Write `net` as a clipguide safetensors file (atomic): the weights in the rosinality key layout
    (cast to `dtype`, e.g. torch.float16, if given), "latent_avg" when known, and the config and library
    version in the metadata."""
    from ..formats.writer import write_safetensors

    state = dict(net.state_dict())
    if net.latent_avg is not None:
        state["latent_avg"] = net.latent_avg
    return write_safetensors(path, state, format_tag=FORMAT_TAG, config_json=net.config.to_json(), dtype=dtype,
                             metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# inversion: the latent whose image is closest to a given one
# ---------------------------------------------------------------------------------------------------
def _expand(w: torch.Tensor, n_latent: int) -> torch.Tensor:
    """W (B, D) -> W+ (B, n_latent, D); W+ passes through."""
    return w[:, None].expand(-1, n_latent, -1) if w.dim() == 2 else w


def invert(net: StyleGAN2Generator, images: torch.Tensor, steps: int = 200, space: str = "w+", lr: float = 0.1,
           generator: torch.Generator | None = None, noise: NoiseSpec = "const", progress: bool = True) -> torch.Tensor:
    """Latents (B, D) for space "w" or (B, n_latent, D) for "w+" whose images match `images`
    (B, 3, H, W) in [0, 1] in pixel MSE (on the clamped [0, 1] image, as the adapter shows it).
    Adam from the average latent with a short warm-up and cosine decay of the learning rate; noise
    as in synthesis ("random" is drawn once from `generator` and held fixed). Each image is fitted
    independently of the others; the best latent seen for each is returned."""
    if space not in ("w", "w+"):
        raise InputError(f"space must be 'w' or 'w+', got {space!r}")
    if steps < 1:
        raise InputError(f"invert steps must be >= 1, got {steps}")
    from tqdm.auto import tqdm

    param = next(net.parameters())
    target = check_init(images, size=(net.size, net.size)).to(param)                  # (B, 3, S, S) in [0, 1]
    b = target.shape[0]
    avg = net.average_latent().detach().to(param)                                      # (1, D)
    start = avg.expand(b, -1) if space == "w" else avg[:, None].expand(b, net.n_latent, -1)
    w = start.clone().requires_grad_(True)
    noises = net.noise_inputs(b, noise, generator)
    opt = torch.optim.Adam([w], lr=lr)
    warmup = max(1, steps // 20)

    def errors(latent: torch.Tensor) -> torch.Tensor:                                  # (B,) pixel MSE
        image = to_unit(net.synthesis(_expand(latent, net.n_latent), noise=noises))
        return (image - target).square().flatten(1).mean(1)

    best, best_err = w.detach().clone(), torch.full((b,), float("inf"), device=target.device)
    for step in tqdm(range(steps + 1), desc="invert", unit="step", disable=not progress, leave=False):
        err = errors(w)
        with torch.no_grad():
            better = err < best_err
            best[better], best_err[better] = w.detach()[better], err.detach()[better]
        if step == steps:                               # the last pass only scores the final latent
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        err.sum().backward()                            # a sum keeps each image's gradient its own
        opt.step()
    return best


# ---------------------------------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------------------------------
class StyleGANLatent(Generator):
    """A StyleGAN2 latent to steer: W (B, D), one style for every layer, stays close to the learned
    image distribution; W+ (B, n_latent, D), one per layer, reaches further. Starts from truncated
    mapping of seeded z, or from the inversion of `init` images. The network is frozen; noise is
    fixed (the network's own buffers by default), so the same latent always gives the same image."""

    family = "stylegan"

    def __init__(self, net: StyleGAN2Generator | str | os.PathLike, batch: int = 1, space: str = "w+",
                 init: torch.Tensor | None = None, truncation: float = 0.7, generator: torch.Generator | None = None,
                 noise: str = "const", invert_steps: int = 200, invert_lr: float = 0.1, progress: bool = True):
        super().__init__()
        if space not in ("w", "w+"):
            raise InputError(f"space must be 'w' or 'w+', got {space!r}")
        if noise not in ("const", "zero", "random"):
            raise InputError(f"noise must be 'const', 'zero' or 'random', got {noise!r}")
        if not isinstance(net, nn.Module):
            net = load_stylegan(net)
        self.net = freeze(net)
        self.space, self.truncation = space, truncation
        self.noise_mode = noise
        # "random" noise is drawn once here, so forward() stays deterministic
        for i, n in enumerate(net.noise_inputs(batch, noise, generator)):
            self.register_buffer(f"noise_{i}", n, persistent=False)
        self.from_image = init is not None
        if init is not None:
            images = check_init(init, size=(net.size, net.size), batch=batch)
            start = invert(net, images, steps=invert_steps, space=space, lr=invert_lr, noise=self.noise_inputs(),
                           progress=progress)
        else:
            with torch.no_grad():
                start = self.propose(batch, generator)                # (B, D) in W, (B, n_latent, D) in W+
        self.latent = nn.Parameter(start.detach().clone())
        self.register_buffer("start", start.detach().clone(), persistent=False)

    def noise_inputs(self) -> list[torch.Tensor]:
        return [getattr(self, f"noise_{i}") for i in range(self.net.num_layers)]

    def propose(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n random starts (the seeded start is one of them): truncated mappings of z drawn from
        `generator`, expanded to W+ in that space."""
        param = next(self.net.parameters())
        z = torch.randn(n, self.net.style_dim, generator=generator).to(param)
        w = self.net.truncate(self.net.mapping(z), self.truncation)                   # (n, D)
        return _expand(w, self.net.n_latent).clone() if self.space == "w+" else w

    def decode(self, latent: torch.Tensor, index: int = 0) -> torch.Tensor:
        # the noise is one tensor for the batch (const, zero) or one per picture (random)
        noise = [x[index if x.shape[0] > 1 else 0][None].expand(latent.shape[0], *x.shape[1:])
                 for x in self.noise_inputs()]
        return to_unit(self.net.synthesis(_expand(latent, self.net.n_latent), noise=noise))

    def w_plus(self) -> torch.Tensor:
        """The latent as W+ (B, n_latent, D)."""
        return _expand(self.latent, self.net.n_latent)

    def forward(self) -> torch.Tensor:
        return to_unit(self.net.synthesis(self.w_plus(), noise=self.noise_inputs()))     # (B, 3, S, S) in [0, 1]

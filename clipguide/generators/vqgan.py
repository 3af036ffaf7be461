"""VQGAN: a convolutional autoencoder with a codebook, whose decoder turns a grid of code vectors
into an image, and its generator adapter for guidance.

The network keeps the state-dict layout of taming-transformers checkpoints (``encoder.down.0.block.0
.conv1.weight``, ``quantize.embedding.weight``, ...) and their numerics, so those checkpoints load
as they are, with the YAML that ships beside them or with the architecture read from tensor shapes.
The project's own format is safetensors with the config as JSON in the metadata (:func:`save_vqgan`).

Guidance steers the continuous latent ``z`` (B, embed_dim, H/f, W/f); every forward pass snaps it
to its nearest code vectors with a straight-through gradient and decodes the result:

    latent --nearest code (straight through)--> z_q --post_quant_conv, decoder--> image [-1, 1]
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from ..formats.readers import RawCheckpoint, read_checkpoint
from ..models.layers import attention
from ..typedconfig import check_fields, read_json
from .base import Generator, check_init, freeze, from_unit, to_unit

__all__ = ["DDConfig", "VQGANConfig", "VQGAN", "VQGANLatent", "load_vqgan", "save_vqgan", "infer_config"]

FORMAT_TAG = "clipguide.vqgan"
QUANTIZERS = ("vq", "gumbel")
# taming-transformers model classes this file builds, and the quantizer each one uses
TAMING_TARGETS = {"taming.models.vqgan.VQModel": "vq", "taming.models.vqgan.GumbelVQ": "gumbel"}
# model.params entries that concern training only (losses, schedules, logging, index remapping)
_TRAINING_PARAMS = {
    "vq": {"lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "remap",
           "sane_index_shape"},
    "gumbel": {"lossconfig", "ckpt_path", "ignore_keys", "image_key", "colorize_nlabels", "monitor", "remap",
               "temperature_scheduler_config", "kl_weight"},
}
# ddconfig entries taming accepts that this file implements at one value only
_FIXED_DD = {"resamp_with_conv": True, "give_pre_end": False, "tanh_out": False}
# ddconfig entries taming requires (the others have defaults there)
_REQUIRED_DD = ("ch", "out_ch", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")
NOMINAL_RESOLUTION = 256          # stands in for `resolution` when the architecture is read from tensors


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
@dataclass
class DDConfig:
    """Encoder/decoder shape, the ``ddconfig`` of a taming YAML. `resolution` only decides where the
    attention blocks go (at the levels whose side, counted from `resolution`, is in
    `attn_resolutions`); the network itself runs at any size that is a multiple of 2^(levels-1)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, data: Any, where: str = "ddconfig") -> "DDConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        attn = data.pop("attn_resolutions", cls.attn_resolutions)     # may be empty, which check_fields refuses
        if not isinstance(attn, (list, tuple)) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                          for r in attn):
            raise ConfigError(f"{where}: attn_resolutions must be a list of integers, got {attn!r}")
        return cls(attn_resolutions=tuple(attn), **check_fields(cls, data, where))

    @property
    def widths(self) -> list[int]:
        return [self.ch * m for m in self.ch_mult]

    def attends(self, level: int) -> bool:
        """Whether the blocks of `level` (0 = full resolution) are followed by attention."""
        return self.resolution // 2 ** level in self.attn_resolutions

    def validate(self, where: str = "ddconfig") -> None:
        for name in ("ch", "num_res_blocks", "resolution", "z_channels", "in_channels", "out_ch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(f"{where}.ch_mult must be a non-empty list of positive integers, got {self.ch_mult}")
        if any(w % 32 for w in self.widths):
            raise ConfigError(f"{where}: every level width ch * ch_mult {self.widths} must be a multiple of 32 "
                              "(the group norms have 32 groups)")
        if self.double_z:
            raise ConfigError(f"{where}.double_z is true, which describes a KL autoencoder; a VQGAN has "
                              "double_z: false")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class VQGANConfig:
    """A VQGAN: the ``model.params`` of a taming YAML plus which quantizer it uses ("vq": nearest code
    vector, taming's VQModel; "gumbel": code logits, taming's GumbelVQ)."""

    embed_dim: int = 256
    n_embed: int = 1024
    ddconfig: DDConfig = field(default_factory=DDConfig)
    quantizer: str = "vq"

    @property
    def factor(self) -> int:
        """How many pixels one latent position covers along each side."""
        return 2 ** (len(self.ddconfig.ch_mult) - 1)

    def validate(self) -> "VQGANConfig":
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"quantizer {self.quantizer!r} is not one of {QUANTIZERS}")
        if self.embed_dim < 1 or self.n_embed < 1:
            raise ConfigError(f"embed_dim and n_embed must be positive, got {self.embed_dim} and {self.n_embed}")
        self.ddconfig.validate()
        if self.quantizer == "gumbel" and self.embed_dim != self.ddconfig.z_channels:
            raise ConfigError(f"a GumbelVQ needs embed_dim == ddconfig.z_channels (its code logits read the "
                              f"quant_conv output), got {self.embed_dim} and {self.ddconfig.z_channels}")
        return self

    # --- the project's JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "VQGAN config") -> "VQGANConfig":
        fields = check_fields(cls, data, where)
        fields["ddconfig"] = DDConfig.from_dict(fields.get("ddconfig", {}), f"{where}.ddconfig")
        return cls(**fields).validate()

    @classmethod
    def from_json(cls, text: str, where: str = "VQGAN config") -> "VQGANConfig":
        return cls.from_dict(read_json(text, where), where)

    # --- taming-transformers YAML ---------------------------------------------------------------
    @classmethod
    def from_yaml(cls, source: str | os.PathLike | Mapping) -> "VQGANConfig":
        """The config of a taming-transformers YAML, given as a path, as text, or already parsed.

        Reads ``model.target`` (VQModel or GumbelVQ) and ``model.params``; training-only entries
        (lossconfig, data, lightning, ...) are ignored; unknown entries are a ConfigError."""
        data, where = _read_yaml(source)
        return cls.from_taming(data, where)

    @classmethod
    def from_taming(cls, data: Any, where: str = "taming config") -> "VQGANConfig":
        model = data.get("model", data) if isinstance(data, Mapping) else data
        if not isinstance(model, Mapping) or "target" not in model or "params" not in model:
            raise ConfigError(f"{where}: expected a taming-transformers config, `model: {{target: ..., params: "
                              f"{{...}}}}`; got {_preview(data)}")
        target = model["target"]
        if target not in TAMING_TARGETS:
            raise ConfigError(f"{where}: model target {target!r} is not supported; VQGAN configs use "
                              f"{' or '.join(TAMING_TARGETS)}")
        quantizer = TAMING_TARGETS[target]
        params = model["params"]
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}: model.params must be a mapping, got {type(params).__name__}")
        known = {"ddconfig", "n_embed", "embed_dim"} | _TRAINING_PARAMS[quantizer]
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown model.params key(s) {unknown} for {target}; known keys are "
                              f"{sorted(known)}")
        missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in params]
        if missing:
            raise ConfigError(f"{where}: model.params lacks {missing}")
        dd = params["ddconfig"]
        if not isinstance(dd, Mapping):
            raise ConfigError(f"{where}: model.params.ddconfig must be a mapping, got {type(dd).__name__}")
        dd = dict(dd)
        for name, value in _FIXED_DD.items():
            if name in dd and dd.pop(name) != value:
                raise ConfigError(f"{where}: ddconfig.{name} must be {value} for this VQGAN implementation")
        missing = [k for k in _REQUIRED_DD if k not in dd]
        if missing:
            raise ConfigError(f"{where}: ddconfig lacks {missing}")
        dd.setdefault("double_z", True)        # taming's default, which a VQGAN must override
        fields = check_fields(cls, {"embed_dim": params["embed_dim"], "n_embed": params["n_embed"]}, where)
        config = cls(ddconfig=DDConfig.from_dict(dd, f"{where}: ddconfig"), quantizer=quantizer, **fields)
        try:
            return config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _read_yaml(source: str | os.PathLike | Mapping) -> tuple[Any, str]:
    """Parsed YAML and a name for messages, from a path, YAML text or an already parsed mapping."""
    if isinstance(source, Mapping):
        return source, "taming config"
    text, where = str(source), "taming config"
    is_path = isinstance(source, os.PathLike) or ("\n" not in text and (
        text.strip().lower().endswith((".yaml", ".yml")) or Path(text).is_file()))
    if is_path:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"no config file at '{path}'; pass the YAML that came with the checkpoint")
        text, where = path.read_text(encoding="utf-8"), f"'{path}'"
    try:
        import yaml
    except ImportError:                  # JSON is YAML too; anything else needs the parser
        try:
            return json.loads(text), where
        except json.JSONDecodeError:
            raise ConfigError("reading a taming YAML config needs PyYAML: pip install pyyaml") from None
    try:
        return yaml.safe_load(text), where
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None


def _preview(data: Any) -> str:
    if isinstance(data, Mapping):
        return f"a mapping with keys {sorted(map(str, data))[:8]}"
    return f"a {type(data).__name__}"


# ---------------------------------------------------------------------------------------------------
# the network: parts, then the whole
# ---------------------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm, swish, 3x3 conv, twice, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention between all positions of a feature map, 1x1 convolutions for the
    queries, keys, values and output, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, C, H, W)
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = attention(q, k, v)                                        # (B, 1, HW, C)
        return x + self.proj_out(out.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after one row and column of zeros on the bottom and right: H -> H/2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: H -> 2H."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution, each optionally followed by attention, then a resampler
    (registered as `downsample` or `upsample`, the name in the checkpoint) unless it is the last."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, attend: bool, dropout: float,
                 resample: str | None):
        super().__init__()
        widths = [in_channels] + [out_channels] * depth
        self.block = nn.ModuleList(ResnetBlock(a, b, dropout) for a, b in zip(widths, widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(depth) if attend)
        self.resample = resample
        if resample == "downsample":
            self.downsample = Downsample(out_channels)
        elif resample == "upsample":
            self.upsample = Upsample(out_channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return getattr(self, self.resample)(h) if self.resample else h


class Middle(nn.Module):
    """Block, attention, block at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> features (B, z_channels, H/f, W/f)."""

    def __init__(self, c: DDConfig):
        super().__init__()
        widths = c.widths
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        ins = [c.ch] + widths[:-1]
        last = len(widths) - 1
        self.down = nn.ModuleList(
            Level(ins[i], widths[i], c.num_res_blocks, c.attends(i), c.dropout, "downsample" if i < last else None)
            for i in range(len(widths)))
        self.mid = Middle(widths[-1], c.dropout)
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)                                             # (B, ch, H, W)
        for level in self.down:
            h = level(h)                                                # halves H, W except at the last level
        h = self.mid(h)                                                 # (B, ch * ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))                  # (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f). Levels are numbered as in the
    encoder (`up.0` is the full resolution) and run from the last to the first; each has one block
    more than its encoder level."""

    def __init__(self, c: DDConfig):
        super().__init__()
        widths = c.widths
        ins = widths[1:] + [widths[-1]]                 # level i is entered from level i + 1 (the middle for the last)
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = Middle(widths[-1], c.dropout)
        self.up = nn.ModuleList(
            Level(ins[i], widths[i], c.num_res_blocks + 1, c.attends(i), c.dropout, "upsample" if i > 0 else None)
            for i in range(len(widths)))
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))                                   # (B, ch * ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)                                                # doubles H, W except at level 0
        return self.conv_out(F.silu(self.norm_out(h)))                  # (B, out_ch, h*f, w*f)


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) latents -> (B, h, w) indices of their nearest rows of `codebook` (n_embed, D)."""
    B, D, h, w = z.shape
    # in fp32 whatever the autocast: |z|^2 + |e|^2 - 2 z.e cancels, and bf16 would pick wrong codes
    with torch.autocast(z.device.type, enabled=False):
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, D)            # (B*h*w, D)
        e = codebook.detach().float()
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()       # (B*h*w, n_embed)
    return dist.argmin(dim=1).reshape(B, h, w)


def lookup_codes(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, h, w) code indices -> (B, D, h, w) their rows of `codebook` (n_embed, D)."""
    return codebook[codes].permute(0, 3, 1, 2).contiguous()


class Codebook(nn.Module):
    """What both quantizers share: `n_embed` code vectors, nearest-vector search and lookup."""

    @property
    def codebook(self) -> torch.Tensor:                                 # (n_embed, embed_dim)
        raise NotImplementedError

    def nearest(self, z: torch.Tensor) -> torch.Tensor:                 # (B, D, h, w) -> codes (B, h, w)
        return nearest_codes(z, self.codebook)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:              # (B, h, w) -> (B, D, h, w)
        return lookup_codes(codes, self.codebook)


class VectorQuantizer(Codebook):
    """A VQModel's codebook: a latent snaps to its nearest code vector (euclidean)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight


class GumbelQuantizer(Codebook):
    """A GumbelVQ's codebook: the encoder scores every code (`proj`, a 1x1 conv to logits) and the most
    likely code's vector is the latent. Steering then snaps to the nearest vector, as with a VQModel."""

    def __init__(self, in_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def most_likely(self, h: torch.Tensor) -> torch.Tensor:             # (B, C, h, w) -> codes (B, h, w)
        return self.proj(h).argmax(dim=1)


class VQGAN(nn.Module):
    """Encoder, codebook and decoder with taming-transformers state-dict names. Images are in [-1, 1]."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config.validate()
        dd = config.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        self.quant_conv = nn.Conv2d(dd.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd.z_channels, 1)
        if config.quantizer == "gumbel":
            self.quantize: Codebook = GumbelQuantizer(dd.z_channels, config.n_embed, config.embed_dim)
        else:
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def codebook(self) -> torch.Tensor:                                 # (n_embed, embed_dim)
        return self.quantize.codebook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> continuous latent (B, embed_dim, H/f, W/f), before
        quantization. A GumbelVQ's latent is the vector of each position's most likely code."""
        h = self.quant_conv(self.encoder(x))                            # (B, embed_dim, H/f, W/f)
        if isinstance(self.quantize, GumbelQuantizer):
            return self.quantize.lookup(self.quantize.most_likely(h))
        return h

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code vector at every position: (B, D, h, w) -> (B, h, w)."""
        return self.quantize.nearest(z)

    def quantize_st(self, z: torch.Tensor) -> torch.Tensor:
        """Each position of `z` replaced by its nearest code vector; the gradient passes straight
        through to `z` as if the replacement were the identity."""
        z_q = self.quantize.lookup(self.quantize.nearest(z))
        return z + (z_q - z).detach()

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, embed_dim, h, w) -> images (B, out_ch, h*f, w*f), about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of images in [-1, 1] through the codebook."""
        return self.decode(self.quantize_st(self.encode(x)))


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------
# modules of training frameworks whose objects (callbacks, hyper-parameter containers) Lightning
# checkpoints carry beside the weights; see _read
_TRAINER_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")


class _Inert:
    """Stands in for a training-framework object while a checkpoint is read: it keeps the arguments
    and state it is given and runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _read(path: Path) -> RawCheckpoint:
    """read_checkpoint; and when the weights-only reader refuses a Lightning checkpoint only because it
    holds trainer objects (Lightning 1.x keys its ``callbacks`` entry by callback class), a second
    weights-only read in which those names, and only those, resolve to inert stand-ins."""
    try:
        return read_checkpoint(path)
    except CheckpointError:
        names = _trainer_globals(path)
        if not names:
            raise
    stand_ins = [(type(name.rpartition(".")[2], (_Inert,), {}), name) for name in names]
    with torch.serialization.safe_globals(stand_ins):
        return read_checkpoint(path)


def _trainer_globals(path: Path) -> list[str]:
    """The globals a torch.save file references beyond tensors, if all belong to training frameworks."""
    if not path.is_file():
        return []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:                    # not a zip torch.save file, or damaged: keep the first error
        return []
    return names if names and all(n.startswith(_TRAINER_MODULES) for n in names) else []


def layout_hint(keys) -> str:
    """A sentence naming the kind of model a set of state-dict keys belongs to, when it is not a
    VQGAN in taming layout but something recognisable; '' otherwise."""
    keys = list(keys)

    def any_starts(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    def any_contains(*parts: str) -> bool:
        return any(p in k for k in keys for p in parts)

    if any_starts("g_ema.", "style.", "mapping.", "synthesis.") or "latent_avg" in keys or any_contains("to_rgb"):
        return "this looks like a StyleGAN2 checkpoint; load it with load_stylegan"
    if any_contains("down_blocks.", "up_blocks.", "mid_block."):
        return ("this looks like a diffusers model (its keys use down_blocks./up_blocks.); load_vqgan reads "
                "taming-transformers checkpoints and the project's own VQGAN files")
    if any_starts("visual.", "text_model.", "vision_model.") or "token_embedding.weight" in keys \
            or "logit_scale" in keys:
        return "this looks like a CLIP checkpoint; load it with clipguide.load"
    if any_starts("first_stage_model."):
        return ("this looks like a taming transformer or latent-diffusion checkpoint whose autoencoder sits "
                "under first_stage_model.*; save those keys without the prefix and load that file")
    if any_starts("model.diffusion_model.", "input_blocks.", "output_blocks."):
        return "this looks like a diffusion model (a UNet), not a VQGAN"
    if any_starts("encoder.down.") and not any_starts("quantize."):
        return "this looks like a KL autoencoder (latent-diffusion / Stable Diffusion VAE): it has no codebook"
    return ""


def infer_config(tensors: Mapping[str, torch.Tensor]) -> VQGANConfig:
    """The architecture of a taming-layout VQGAN state dict, from its tensor shapes. The resolution
    is not stored in the weights: a nominal one (256) places the attention blocks where they are."""
    gumbel = "quantize.embed.weight" in tensors
    needed = ["encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight", "quant_conv.weight",
              "quantize.embed.weight" if gumbel else "quantize.embedding.weight"]
    if not all(k in tensors for k in needed):
        raise CheckpointError("not a taming-transformers VQGAN state dict")
    levels = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    depth = len({m.group(1) for k in tensors if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))) or depth == 0:
        raise CheckpointError("the encoder levels (encoder.down.N.block.M) are incomplete")
    ch, in_channels = tensors["encoder.conv_in.weight"].shape[:2]
    widths = [tensors[f"encoder.down.{i}.block.{depth - 1}.conv2.weight"].shape[0] for i in levels]
    if any(w % ch for w in widths):
        raise CheckpointError(f"level widths {widths} are not multiples of ch={ch}")
    attn = tuple(NOMINAL_RESOLUTION // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in tensors)
    dd = DDConfig(ch=int(ch), ch_mult=tuple(w // ch for w in widths), num_res_blocks=depth, attn_resolutions=attn,
                  resolution=NOMINAL_RESOLUTION, z_channels=int(tensors["encoder.conv_out.weight"].shape[0]),
                  in_channels=int(in_channels), out_ch=int(tensors["decoder.conv_out.weight"].shape[0]))
    codebook = tensors[needed[-1]]
    return VQGANConfig(embed_dim=int(codebook.shape[1]), n_embed=int(codebook.shape[0]), ddconfig=dd,
                       quantizer="gumbel" if gumbel else "vq")


def load_vqgan(ckpt_path: str | os.PathLike, config_path: str | os.PathLike | Mapping | VQGANConfig | None = None,
               *, device: str | torch.device = "cpu") -> VQGAN:
    """A VQGAN from a taming-transformers checkpoint (a Lightning ``.ckpt``, a plain state dict, or
    safetensors) or from a file written by :func:`save_vqgan`; returned in eval mode.

    `config_path` is the taming YAML that came with the checkpoint (a path, its text, or a parsed
    mapping) or a :class:`VQGANConfig`. Without it the architecture is read from the project file's
    metadata or from the tensor shapes. Discriminator and perceptual-loss weights (``loss.*``) are
    dropped; any other missing or unexpected key is a CheckpointError."""
    path = Path(ckpt_path)
    _refuse_diffusers_dir(path)
    raw = _read(path)
    tensors = {k: v for k, v in raw.tensors.items() if not k.startswith("loss.") and k != "colorize"}
    if isinstance(config_path, VQGANConfig):
        config, source = config_path.validate(), "the given config"
    elif config_path is not None:
        config, source = VQGANConfig.from_yaml(config_path), "the YAML"
    elif raw.metadata.get("format") == FORMAT_TAG:
        if "config" not in raw.metadata:
            raise CheckpointError(f"'{path}' is a clipguide VQGAN file without its config in the metadata; "
                                  "save it again with save_vqgan")
        config, source = VQGANConfig.from_json(raw.metadata["config"], where=f"'{path}' config"), "its metadata"
    else:
        try:
            config, source = infer_config(tensors), "its tensor shapes"
        except CheckpointError as exc:
            hint = layout_hint(tensors)
            raise CheckpointError(
                f"'{path}' is not a VQGAN checkpoint in taming-transformers layout: "
                f"{hint or str(exc) + ' (keys such as ' + ', '.join(sorted(tensors)[:4]) + ')'}. "
                "A VQGAN file has keys encoder.conv_in.weight, decoder.conv_out.weight, quant_conv.weight and "
                "quantize.embedding.weight; if this is one, pass the YAML that came with it as config_path."
            ) from None
    net = VQGAN(config)
    _check_keys(path, net, tensors, source)
    net.load_state_dict(tensors)
    return net.to(device).eval()


def _refuse_diffusers_dir(path: Path) -> None:
    if path.is_dir() and any((path / n).is_file() for n in ("diffusion_pytorch_model.safetensors",
                                                            "diffusion_pytorch_model.bin")):
        raise CheckpointError(f"'{path}' is a diffusers model directory; load_vqgan reads taming-transformers "
                              "checkpoints (.ckpt with its YAML) and files written by save_vqgan")


def _check_keys(path: Path, net: VQGAN, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming missing, unexpected and mis-shaped tensors, and what the file looks like."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        hint = layout_hint(tensors) or _quantizer_hint(net, tensors)
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:4])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})" if unexpected else ""]
        raise CheckpointError(
            f"'{path}' does not match the VQGAN described by {source}: "
            f"{' and '.join(p for p in parts if p)} keys. "
            + (f"{hint[0].upper()}{hint[1:]}." if hint else
               "Check that the YAML is the one that came with this checkpoint.")
        )
    wrong = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in expected.items() if tensors[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"'{path}' does not match the VQGAN described by {source}: {len(wrong)} tensors have other shapes "
            f"(e.g. {k} is {got} in the file, {want} in the model). Check that the YAML is the one that came "
            "with this checkpoint."
        )


def _quantizer_hint(net: VQGAN, tensors: Mapping[str, torch.Tensor]) -> str:
    if net.config.quantizer == "vq" and "quantize.embed.weight" in tensors:
        return "this looks like a GumbelVQ checkpoint; its YAML target is taming.models.vqgan.GumbelVQ"
    if net.config.quantizer == "gumbel" and "quantize.embedding.weight" in tensors:
        return "this looks like a VQModel checkpoint; its YAML target is taming.models.vqgan.VQModel"
    return ""


def save_vqgan(net: VQGAN, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write `net` as a clipguide safetensors file (atomically): the weights, optionally cast (e.g.
    torch.float16), with the config and library version in the metadata. :func:`load_vqgan` reads it."""
    from ..formats.writer import write_safetensors

    return write_safetensors(path, net.state_dict(), format_tag=FORMAT_TAG, config_json=net.config.to_json(),
                             dtype=dtype, metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# the generator adapter
# ---------------------------------------------------------------------------------------------------
class VQGANLatent(Generator):
    """A VQGAN's continuous latent as the thing guidance moves: forward() snaps it to the codebook
    (straight through) and decodes it to images in [0, 1].

    The latent starts as random code vectors drawn with `generator`, or as the encoding of `init`
    (images in [0, 1], resized to `size`). `size` must be a multiple of the network's factor f."""

    family = "vqgan"

    def __init__(self, net: VQGAN, size: int | tuple[int, int] = 64, batch: int = 1,
                 init: torch.Tensor | None = None, generator: torch.Generator | None = None):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = net.factor
        if h % f or w % f or h < f or w < f:
            raise InputError(f"size {(h, w)} must be a multiple of the VQGAN's factor {f}")
        self.net = freeze(net)
        self.size = (h, w)
        self.from_image = init is not None
        codebook = net.codebook
        with torch.no_grad():
            if init is not None:
                x = check_init(init, (h, w), batch).to(codebook)
                start = net.encode(from_unit(x))                        # (B, embed_dim, h/f, w/f)
            else:
                start = self.propose(batch, generator)                  # (B, embed_dim, h/f, w/f)
        self.latent = nn.Parameter(start.clone())
        self.register_buffer("start", start.clone(), persistent=False)

    @property
    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim) the network's code vectors (a token prior checks it samples these)."""
        return self.net.codebook

    def codes(self) -> torch.Tensor:
        """(B, h/f, w/f) indices of the code vectors the current latent decodes."""
        return self.net.codes(self.latent)

    def propose(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n random starts (the seeded start is one of them): grids of code vectors drawn from `generator`."""
        f, codebook = self.net.factor, self.net.codebook
        device = generator.device if generator is not None else "cpu"
        codes = torch.randint(len(codebook), (n, self.size[0] // f, self.size[1] // f), generator=generator,
                              device=device)
        return self.net.quantize.lookup(codes.to(codebook.device))

    def decode(self, latent: torch.Tensor, index: int = 0) -> torch.Tensor:
        return to_unit(self.net.decode(self.net.quantize_st(latent)))

    def forward(self) -> torch.Tensor:                                  # (B, 3, H, W) in [0, 1]
        return self.decode(self.latent)


# ---------------------------------------------------------------------------------------------------
# the diffusers layout (a latent diffusion pipeline's `vae`)
# ---------------------------------------------------------------------------------------------------
def _resnet_keys(src: str, dst: str) -> dict[str, str]:
    names = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
    return {f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")}


def _attention_keys(src: str, dst: str) -> dict[str, str]:
    names = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    return {f"{src}.{a}.{p}": f"{dst}.{b}.{p}" for a, b in names.items() for p in ("weight", "bias")}


def diffusers_key_map(net: VQGAN) -> dict[str, str]:
    """Each state-dict key of `net` (taming names) -> its name in a diffusers VQModel."""
    dd = net.config.ddconfig
    n = len(dd.ch_mult)
    out = {f"{a}.{p}": f"{b}.{p}" for a, b in (("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv"))
           for p in ("weight", "bias")}
    out["quantize.embedding.weight"] = "quantize.embedding.weight"
    for part, levels, blocks, resample in (("encoder", "down", dd.num_res_blocks, "downsample"),
                                           ("decoder", "up", dd.num_res_blocks + 1, "upsample")):
        for a, b in (("conv_in", "conv_in"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")):
            out.update({f"{part}.{a}.{p}": f"{part}.{b}.{p}" for p in ("weight", "bias")})
        out.update(_resnet_keys(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0"))
        out.update(_attention_keys(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0"))
        out.update(_resnet_keys(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1"))
        for i in range(n):
            j = i if part == "encoder" else n - 1 - i               # diffusers runs the decoder's levels in order
            dst = f"{part}.{levels}_blocks.{j}"
            for k in range(blocks):
                out.update(_resnet_keys(f"{part}.{levels}.{i}.block.{k}", f"{dst}.resnets.{k}"))
                if dd.attends(i):
                    out.update(_attention_keys(f"{part}.{levels}.{i}.attn.{k}", f"{dst}.attentions.{k}"))
            out.update({f"{part}.{levels}.{i}.{resample}.conv.{p}": f"{dst}.{resample}rs.0.conv.{p}"
                        for p in ("weight", "bias")})
    return out


def to_diffusers(net: VQGAN, scaling_factor: float = 1.0):
    """The same network as a diffusers ``VQModel`` (what a latent diffusion pipeline keeps as its
    `vae`): equal encodings and decodings. `scaling_factor` is recorded in its config (the
    diffusion side multiplies latents by it). A Gumbel VQGAN, or a first level wider than `ch`
    (ch_mult[0] != 1), has no VQModel equivalent and is refused."""
    from .diffusion import _diffusers

    cfg, dd = net.config, net.config.ddconfig
    if cfg.quantizer != "vq":
        raise InputError(f"a {cfg.quantizer} VQGAN has no diffusers VQModel equivalent (VQModel quantizes by "
                         "nearest code vector)")
    if dd.ch_mult[0] != 1:
        raise InputError(f"ch_mult {list(dd.ch_mult)} starts above 1, which a diffusers VQModel cannot express "
                         "(its first level keeps the input convolution's width)")
    levels = range(len(dd.ch_mult))
    model = _diffusers().VQModel(
        in_channels=dd.in_channels, out_channels=dd.out_ch, latent_channels=dd.z_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if dd.attends(i) else "DownEncoderBlock2D" for i in levels),
        up_block_types=tuple("AttnUpDecoderBlock2D" if dd.attends(i) else "UpDecoderBlock2D" for i in reversed(levels)),
        block_out_channels=tuple(dd.widths), layers_per_block=dd.num_res_blocks, act_fn="silu",
        sample_size=dd.resolution, num_vq_embeddings=cfg.n_embed, norm_num_groups=32, vq_embed_dim=cfg.embed_dim,
        scaling_factor=float(scaling_factor))
    names = diffusers_key_map(net)
    target = model.state_dict()
    state = {}
    for key, value in net.state_dict().items():
        name = names[key]
        state[name] = value.reshape(target[name].shape)             # attention: 1x1 convolutions -> linear layers
    missing = sorted(set(target) - set(state))
    if missing:
        raise AssertionError(f"VQModel keys without a source: {missing[:5]}")
    model.load_state_dict(state)
    return model.to(net.codebook.dtype).eval()

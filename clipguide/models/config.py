"""Typed configuration of a CLIP model, read from JSON.

Unknown keys are an error, never silently ignored; every field has a type that is checked."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..typedconfig import check_fields as _check_fields
from ..typedconfig import read_json

ACTIVATIONS = ("gelu", "quick_gelu")
STEMS = ("patch", "conv", "deep")
POOLS = ("cls", "mean")


@dataclass
class VisionConfig:
    """Image tower. `layers` an int selects a ViT; a 4-tuple selects the modified ResNet."""

    image_size: int = 224
    layers: int | tuple[int, ...] = 12
    width: int = 768
    patch_size: int | None = 32          # ViT only
    stem: str = "patch"                  # ViT only: "patch" (one strided conv, CLIP's), "conv" (3x3 convs) or "deep" (two per halving)
    stem_mult: int = 1                   # ViT conv stems: the stem's convolutions are this many times wider (up to width)
    pool: str = "cls"                    # ViT only: "cls" (CLIP's class token) or "mean" (average of the patch tokens)
    head_width: int = 64                 # heads = width // head_width (ResNet: width * 32 // head_width)
    mlp_ratio: float = 4.0
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def heads(self) -> int:
        return (self.width * 32 if self.is_resnet else self.width) // self.head_width

    def validate(self) -> None:
        if self.is_resnet:
            if len(self.layers) != 4:
                raise ConfigError(f"vision.layers: a ResNet needs 4 stage depths, got {self.layers}")
            if self.image_size % 32:
                raise ConfigError(f"vision.image_size {self.image_size} must be a multiple of 32 for a ResNet")
        else:
            if self.pool not in POOLS:
                raise ConfigError(f"vision.pool {self.pool!r} is not one of {POOLS}")
            if self.stem not in STEMS:
                raise ConfigError(f"vision.stem {self.stem!r} is not one of {STEMS}")
            if self.stem != "patch" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
                raise ConfigError(f"vision.stem {self.stem!r} needs a power-of-two patch_size, got {self.patch_size}")
            if isinstance(self.stem_mult, bool) or not isinstance(self.stem_mult, int) or self.stem_mult < 1:
                raise ConfigError(f"vision.stem_mult must be an int >= 1, got {self.stem_mult!r}")
            if self.stem == "patch" and self.stem_mult != 1:
                raise ConfigError("vision.stem_mult widens a convolutional stem: set vision.stem to 'conv' or 'deep'")
            if not self.patch_size or self.image_size % self.patch_size:
                raise ConfigError(
                    f"vision.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
            if self.width % self.head_width:
                raise ConfigError(f"vision.width {self.width} must be a multiple of head_width {self.head_width}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("vision.mean and vision.std need three values, std > 0")


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def validate(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"text.width {self.width} must be a multiple of text.heads {self.heads}")


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    init_logit_scale: float = 2.6592600345611572   # log(1 / 0.07)

    def validate(self) -> "CLIPConfig":
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        self.vision.validate()
        self.text.validate()
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "CLIPConfig":
        raw = _check_fields(cls, data, where)
        vision = raw.pop("vision", {})
        text = raw.pop("text", {})
        if isinstance(vision, VisionConfig):
            vision = dataclasses.asdict(vision)
        if isinstance(text, TextConfig):
            text = dataclasses.asdict(text)
        v = VisionConfig(**_check_fields(VisionConfig, vision, f"{where}.vision"))
        t = TextConfig(**_check_fields(TextConfig, text, f"{where}.text"))
        return cls(vision=v, text=t, **raw).validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for sub in ("vision",):
            for k, v in list(d[sub].items()):
                if isinstance(v, tuple):
                    d[sub][k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> "CLIPConfig":
        return cls.from_dict(read_json(text, where), where)

    @classmethod
    def from_file(cls, path: str | Path) -> "CLIPConfig":
        path = Path(path)
        return cls.from_json(path.read_text(), where=str(path))

    def replace(self, **changes: Any) -> "CLIPConfig":
        d = self.to_dict()
        for k, v in changes.items():
            target = d
            *parents, leaf = k.split(".")
            for p in parents:
                if p not in target or not isinstance(target[p], dict):
                    raise ConfigError(f"cannot set {k!r}: {p!r} is not a section")
                target = target[p]
            target[leaf] = v
        return CLIPConfig.from_dict(d)

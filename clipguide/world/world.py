"""The captioned world: a deterministic, indexable stream of (image, caption, attributes).

    world = World(WorldConfig(seed=0, split="train"))
    s = world.sample(123)                     # Sample(image (3,64,64) float, caption, attrs)
    batch = world.render_batch(range(256))    # uint8 (256, 64, 64, 3)

Sample i depends only on (seed, split, kinds, i), so data-loader workers can index it freely."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..typedconfig import reject_unknown_keys
from .attributes import ground_truth
from .captions import canonical_caption, caption, detailed_caption
from .raster import to_uint8
from .render import check_size, render, render_array
from .rng import Rng
from .sampling import SAMPLERS, SPLITS, TwinOptions, twin
from .spec import SceneSpec
from .vocab import KINDS

DEFAULT_KINDS: dict[str, float] = {"object": 0.35, "count": 0.2, "relation": 0.2, "scene": 0.25}
_SPEC_STREAM, _CAPTION_STREAM, _TWIN_STREAM, _NEGATIVE_STREAM, _WORDS_STREAM = 0, 1, 2, 3, 4
_REDRAWS = 16                     # tries at words that tell two pictures apart


@dataclass(frozen=True)
class WorldConfig:
    """Settings of a World.

    seed: base seed. size: default image side in pixels. split: 'train' (never shows a held-out
    composition), 'eval' (only held-out compositions) or 'all'. kinds: relative weight of each
    sample kind. length: nominal dataset length for `len()`. texture_prob / plain_prob: chance of
    a textured / plain palette-coloured background (otherwise the neutral one). jitter: scale of
    per-sample colour jitter (0 turns it off). twins: chance that an odd-indexed sample is a minimal
    edit of the sample before it (another colour, shape, count or condition; the relation
    reversed), so that consecutive samples in a batch are each other's hard negatives. backdrops:
    chance that a training scene shows its object alone on a plain stage, captioned without a
    condition (so objects are learnt by their form, apart from the conditions they appear in).
    relight: chance that a training scene's object gets a random light of its own (colour cast,
    ambient light, haze; the caption is unchanged), so that objects are read by their form under
    lightings they were not seen in. empty: chance that a training scene not on a backdrop is the
    landscape alone (sky and ground under its condition, captioned 'a night scene', 'an empty
    landscape in winter'), so that conditions are learnt apart from the objects seen in them. The
    twin of an empty landscape is an object under the same condition. alike: chance that an
    object's twin with another shape takes the shape most like its own (a hexagon for a circle,
    by the overlap of their masks) rather than any other shape: the hardest negatives. moved: chance
    that an object's twin keeps its colour and shape and takes another position or size instead, so
    that place and size are told apart too. alike_scenes: chance that a scene's twin with another
    object takes one of its family (a house or a church for a gothic church; SCENE_FAMILY).
    twin_words: chance that both captions of a twin pair are worded so that each is false of the
    other picture (a moved twin's caption names the place or size that changed, a scene twin's the
    condition); otherwise they may read the same ('a red circle' for both places) and the pair
    teaches the model to ignore what changed."""

    seed: int = 0
    size: int = 64
    split: str = "train"
    kinds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KINDS))
    length: int = 1_000_000
    texture_prob: float = 0.15
    plain_prob: float = 0.35
    jitter: float = 1.0
    twins: float = 0.0
    backdrops: float = 0.25
    relight: float = 0.0
    empty: float = 0.0
    alike: float = 0.0
    moved: float = 0.0
    alike_scenes: float = 0.0
    twin_words: float = 0.0

    def __post_init__(self) -> None:
        for name in ("seed", "size", "length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"WorldConfig.{name} must be an int, got {v!r}")
        try:
            check_size(self.size)
        except InputError as e:
            raise ConfigError(f"WorldConfig.size: {e}") from None
        if self.length < 1:
            raise ConfigError(f"WorldConfig.length must be >= 1, got {self.length}")
        if self.split not in SPLITS:
            raise ConfigError(f"WorldConfig.split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.kinds, Mapping) or not self.kinds:
            raise ConfigError(f"WorldConfig.kinds must be a non-empty mapping, got {self.kinds!r}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"WorldConfig.kinds has unknown kind(s) {unknown}; known: {KINDS}")
        for k, w in self.kinds.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or math.isnan(w):
                raise ConfigError(f"WorldConfig.kinds[{k!r}] must be a number >= 0, got {w!r}")
        if sum(self.kinds.values()) <= 0:
            raise ConfigError("WorldConfig.kinds: at least one kind needs a positive weight")
        for name in ("texture_prob", "plain_prob", "jitter", "twins", "backdrops", "relight", "empty", "alike",
                     "moved", "alike_scenes", "twin_words"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"WorldConfig.{name} must be a number in [0, 1], got {v!r}")
        if self.texture_prob + self.plain_prob > 1.0:
            raise ConfigError("WorldConfig: texture_prob + plain_prob must be <= 1")
        # Freeze the weights in canonical kind order so equal configs sample identically.
        object.__setattr__(self, "kinds", {k: float(self.kinds[k]) for k in KINDS if k in self.kinds})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorldConfig:
        """Build from a plain mapping; unknown keys raise ConfigError."""
        reject_unknown_keys(cls, data, "WorldConfig")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (round-trips through from_dict)."""
        d = dataclasses.asdict(self)
        d["kinds"] = dict(self.kinds)
        return d


@dataclass(frozen=True)
class Sample:
    """One sample: image (float (3, H, W) in [0, 1] or uint8 (H, W, 3)), caption and attributes
    (ground truth plus 'template', 'canonical' and 'index')."""

    image: torch.Tensor
    caption: str
    attrs: dict[str, Any]


class World:
    """An indexable, endless captioned dataset of rendered images."""

    def __init__(self, config: WorldConfig | Mapping[str, Any] | None = None, **overrides: Any):
        if config is None:
            config = WorldConfig.from_dict(overrides)
        elif isinstance(config, WorldConfig):
            if overrides:
                config = WorldConfig.from_dict(config.to_dict() | overrides)
        else:
            config = WorldConfig.from_dict(dict(config) | overrides)
        self.config = config
        self._kinds = tuple(k for k, w in config.kinds.items() if w > 0)
        self._weights = tuple(config.kinds[k] for k in self._kinds)

    def __repr__(self) -> str:
        return f"World({self.config!r})"

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def _check_index(self, index: object) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"sample index must be an int >= 0, got {index!r}")
        return int(index)

    def spec(self, index: int) -> SceneSpec:
        """Render parameters of sample `index`."""
        i = self._check_index(index)
        cfg = self.config
        rng = self._twin_rng(i)
        if rng is not None:                 # a minimal edit of sample i - 1: a hard negative beside it
            return twin(rng, self.spec(i - 1), cfg.split, cfg.jitter,
                        TwinOptions(cfg.alike, cfg.moved, cfg.alike_scenes))
        rng = Rng(cfg.seed, i, _SPEC_STREAM)
        kind = rng.weighted(self._kinds, self._weights)
        if kind == "scene":
            return SAMPLERS[kind](rng, cfg.split, cfg.texture_prob, cfg.plain_prob, cfg.jitter, cfg.backdrops,
                                   cfg.relight, cfg.empty)
        return SAMPLERS[kind](rng, cfg.split, cfg.texture_prob, cfg.plain_prob, cfg.jitter)

    def _twin_rng(self, i: int) -> Rng | None:
        """The random stream of sample `i`'s edit when it is the twin of sample i - 1, else None."""
        cfg = self.config
        if cfg.twins <= 0 or i % 2 == 0:
            return None
        rng = Rng(cfg.seed, i, _TWIN_STREAM)
        return rng if rng.chance(cfg.twins) else None

    def _partner(self, i: int) -> int | None:
        """The other sample of `i`'s twin pair (its twin, or the sample it is a twin of), if any."""
        odd = i if i % 2 == 1 else i + 1
        if self._twin_rng(odd) is None:
            return None
        return i + 1 if i % 2 == 0 else i - 1

    def _caption(self, i: int, gt: dict[str, Any]) -> tuple[str, int]:
        """The caption of sample `i` and its template id. With `twin_words`, a twin pair's captions are
        redrawn (up to _REDRAWS times) until the words would be false of the other picture."""
        cfg = self.config
        text, template = caption(gt, Rng(cfg.seed, i, _CAPTION_STREAM))
        j = self._partner(i) if cfg.twin_words > 0 else None
        if j is None or not Rng(cfg.seed, min(i, j), _WORDS_STREAM).chance(cfg.twin_words):
            return text, template
        other = ground_truth(self.spec(j))
        if other == gt:                      # an edit that found no option leaves the twin unchanged
            return text, template
        for attempt in range(_REDRAWS):
            keys = (cfg.seed, i, _CAPTION_STREAM) + ((attempt,) if attempt else ())
            text, template = caption(gt, Rng(*keys))
            if text != caption(other, Rng(*keys))[0]:
                break
        return text, template

    def attrs(self, index: int) -> dict[str, Any]:
        """Ground-truth attributes of sample `index` plus its caption template id, canonical and
        detailed captions."""
        return self._attrs(index, self.spec(index))[1]

    def _attrs(self, index: int, spec: SceneSpec) -> tuple[str, dict[str, Any]]:
        i = self._check_index(index)
        gt = ground_truth(spec)
        text, template = self._caption(i, gt)
        gt |= {"template": template, "canonical": canonical_caption(gt),
               "detailed": detailed_caption(gt), "index": i}
        return text, gt

    def caption(self, index: int) -> str:
        """Caption of sample `index`."""
        return self._attrs(index, self.spec(index))[0]

    def negative_caption(self, index: int) -> str:
        """A caption of sample `index` with one attribute wrong (another colour, shape, count or
        condition; the relation reversed), worded with the same template: a hard negative text."""
        i = self._check_index(index)
        spec = self.spec(i)
        text = self.caption(i)
        for attempt in range(_REDRAWS):  # the edit must show in the words (a scene caption may omit the condition)
            wrong = twin(Rng(self.config.seed, i, _NEGATIVE_STREAM, attempt), spec, self.config.split,
                         self.config.jitter, TwinOptions(alike=self.config.alike))
            negative = caption(ground_truth(wrong), Rng(self.config.seed, i, _CAPTION_STREAM))[0]
            if negative != text:
                return negative
        return "an empty picture"

    def negative_captions(self, indices: Iterable[int]) -> list[str]:
        return [self.negative_caption(i) for i in indices]

    def captions(self, indices: Iterable[int]) -> list[str]:
        """Captions of several samples."""
        return [self.caption(i) for i in indices]

    def canonical_caption(self, index: int) -> str:
        """Canonical class caption of sample `index` ('a red circle', 'three blue stars', ...)."""
        return canonical_caption(ground_truth(self.spec(index)))

    def image(self, index: int, size: int | None = None, fmt: str = "float") -> torch.Tensor:
        """Image of sample `index`: 'float' (3, H, W) in [0, 1] or 'uint8' (H, W, 3)."""
        size = self.config.size if size is None else size
        return render(self.spec(index), size, fmt)  # type: ignore[return-value]

    def sample(self, index: int, size: int | None = None, fmt: str = "float") -> Sample:
        """Image, caption and attributes of sample `index`."""
        spec = self.spec(index)
        text, attrs = self._attrs(index, spec)
        img = render(spec, self.config.size if size is None else size, fmt)
        return Sample(img, text, attrs)  # type: ignore[arg-type]

    def render_batch(self, indices: Sequence[int] | Iterable[int], size: int | None = None,
                     fmt: str = "uint8") -> torch.Tensor:
        """Images of several samples: 'uint8' -> (N, H, W, 3), 'float' -> (N, 3, H, W) in [0, 1].
        Pixels equal those of `sample(i)` exactly."""
        return self._batch(indices, size, fmt, with_captions=False)[0]

    def batch(self, indices: Sequence[int] | Iterable[int], size: int | None = None,
              fmt: str = "uint8") -> tuple[torch.Tensor, list[str]]:
        """Images (as in render_batch) and captions of several samples."""
        return self._batch(indices, size, fmt, with_captions=True)

    def _batch(self, indices: Iterable[int], size: int | None, fmt: str,
               with_captions: bool) -> tuple[torch.Tensor, list[str]]:
        idx = [self._check_index(i) for i in indices]
        s = check_size(self.config.size if size is None else size)
        if fmt not in ("uint8", "float"):
            raise InputError(f"fmt must be 'uint8' or 'float', got {fmt!r}")
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        texts = []
        for k, i in enumerate(idx):
            spec = self.spec(i)
            out[k] = to_uint8(render_array(spec, s))
            if with_captions:
                texts.append(self._attrs(i, spec)[0])
        t = torch.from_numpy(out)
        if fmt == "float":
            t = t.permute(0, 3, 1, 2).float().div_(255.0)
        return t, texts

"""Render parameters of one sample: plain frozen dataclasses in normalised coordinates, so the
same description renders identically at any size."""
from __future__ import annotations

from dataclasses import dataclass

from .vocab import RGB


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """One basic shape: named colour and shape, centre (cx, cy), radius r, and the drawn RGB
    (the named colour with per-sample jitter)."""

    colour: str
    shape: str
    cx: float
    cy: float
    r: float
    rgb: RGB


@dataclass(frozen=True, slots=True)
class BackgroundSpec:
    """Background of a shapes image. kind: 'neutral', 'plain' (a palette colour named by
    `colour`), 'gradient' (rgb to rgb2 along `angle`) or 'stripes' (rgb and rgb2, `period`)."""

    kind: str
    rgb: RGB
    colour: str | None = None
    rgb2: RGB = (0.0, 0.0, 0.0)
    angle: float = 0.0
    period: float = 0.1


@dataclass(frozen=True, slots=True)
class LandscapeSpec:
    """A scene: one object in a landscape under a condition. x is the object's centre, horizon the
    height of the ground line, scale its size factor, and key seeds the small details (wall
    colours, stars, snowflakes). With `backdrop` (two RGB tones) the object stands on a plain
    two-tone stage instead, under no condition (`condition` is then 'plain'). An empty `obj` is the
    landscape alone (training only: it teaches the conditions apart from objects). With `relight` the
    object's surfaces get a random light of their own (colour cast, ambient light, haze), drawn from
    `key`: a training-time variation that teaches objects by their form under any lighting."""

    obj: str
    condition: str
    x: float
    horizon: float
    scale: float
    key: int
    backdrop: tuple[RGB, RGB] | None = None
    relight: bool = False


@dataclass(frozen=True, slots=True)
class SceneSpec:
    """Everything needed to render and describe one sample.

    kind: 'object', 'count', 'relation' or 'scene'. Shapes images have a background and shapes
    (for 'relation' the first shape is related to the second); scenes have a landscape."""

    kind: str
    shapes: tuple[ShapeSpec, ...] = ()
    background: BackgroundSpec | None = None
    landscape: LandscapeSpec | None = None

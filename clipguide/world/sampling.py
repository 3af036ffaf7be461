"""Random SceneSpecs of each sample kind, for a split ('train', 'eval' or 'all').

'train' never produces a held-out composition; 'eval' produces only the held-out compositions of
its kind (built from training colour-shape pairs, so one thing is new at a time); 'all' produces
everything."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

from ..errors import ConfigError
from .heldout import (EVAL_COLOUR_SHAPE, EVAL_SCENES, HELDOUT_COUNT_SHAPE, HELDOUT_RELATION_COLOURS,
                      TRAIN_COLOUR_SHAPE, TRAIN_SCENES)
from .rng import Rng
from .scenes import DEFAULT_HORIZON, HORIZON_RANGE
from .shapes import REACH, shape_overlap
from .spec import BackgroundSpec, LandscapeSpec, SceneSpec, ShapeSpec
from .vocab import (COLOURS, CONDITIONS, COUNTS, MIN_CONTRAST, NEUTRAL_BACKGROUND, PALETTE, POSITIONS, RGB,
                    RELATIONS, SCENE_CLASSES, SCENE_FAMILY, SCENE_OBJECTS, SHAPES, SIZE_RADIUS, SIZES, TEXTURE_TONES,
                    colour_distance, position_of, size_of_radius)

SPLITS = ("train", "eval", "all")
MARGIN = 0.05            # empty border around shapes, as a fraction of the image side
PLAIN_CONTRAST = 0.45    # a plain background colour is at least this far from every shape colour
TEXTURE_CONTRAST = 0.4   # same for each tone of a textured background
ALIKE_MARGIN = 0.05     # an 'alike' shape twin overlaps its shape within this of the closest shape
JITTER_MARGIN = 0.1      # a jittered colour stays this much closer to its own palette colour

ALL_COLOUR_SHAPE = tuple(itertools.product(COLOURS, SHAPES))
_TRAIN_PAIRS = frozenset(TRAIN_COLOUR_SHAPE)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")


@functools.cache
def colour_shape_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """The colour-shape pairs a single-object sample of this split may show."""
    _check_split(split)
    return {"train": TRAIN_COLOUR_SHAPE, "eval": EVAL_COLOUR_SHAPE, "all": ALL_COLOUR_SHAPE}[split]


@functools.cache
def count_shape_pairs(split: str) -> tuple[tuple[int, str], ...]:
    """The (count, shape) pairs a counting sample of this split may show."""
    _check_split(split)
    pairs = tuple(itertools.product(COUNTS, SHAPES))
    if split == "train":
        return tuple(p for p in pairs if p not in HELDOUT_COUNT_SHAPE)
    if split == "eval":
        return tuple(p for p in pairs if p in HELDOUT_COUNT_SHAPE)
    return pairs


@functools.cache
def relation_colour_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """The ordered (first, second) colour pairs a relation sample of this split may show."""
    _check_split(split)
    pairs = tuple((a, b) for a in COLOURS for b in COLOURS if a != b)
    if split == "train":
        return tuple(p for p in pairs if frozenset(p) not in HELDOUT_RELATION_COLOURS)
    if split == "eval":
        return tuple(p for p in pairs if frozenset(p) in HELDOUT_RELATION_COLOURS)
    return pairs


@functools.cache
def scene_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """The (scene object, condition) pairs a scene sample of this split may show."""
    _check_split(split)
    return {"train": TRAIN_SCENES, "eval": EVAL_SCENES, "all": SCENE_CLASSES}[split]


@functools.cache
def _shapes_for(colour: str, split: str) -> tuple[str, ...]:
    """Shapes that may be drawn in `colour` inside counting and relation samples: training pairs
    only, except for split 'all'."""
    if split == "all":
        return SHAPES
    return tuple(s for s in SHAPES if (colour, s) in _TRAIN_PAIRS)


# ---- colours and backgrounds --------------------------------------------------------------------

def jitter_colour(rng: Rng, name: str, amount: float = 1.0) -> RGB:
    """The palette colour with a small random change of brightness and tint that never brings it
    near another palette colour."""
    base = PALETTE[name]
    if amount <= 0:
        return base
    for _ in range(6):
        b = 1.0 + amount * rng.uniform(-0.12, 0.08)
        rgb = tuple(min(max(c * b + amount * rng.uniform(-0.05, 0.05), 0.0), 1.0) for c in base)
        own = colour_distance(rgb, base)
        if all(own + JITTER_MARGIN < colour_distance(rgb, PALETTE[o]) for o in COLOURS if o != name):
            return rgb  # type: ignore[return-value]
    return base


def _contrast_ok(tone: RGB, colours: list[RGB], need: float) -> bool:
    return all(colour_distance(tone, c) >= need for c in colours)


def _segment_distance(p: RGB, a: RGB, b: RGB) -> float:
    """RGB distance from p to the nearest blend of a and b."""
    e = [y - x for x, y in zip(a, b)]
    ee = sum(v * v for v in e) or 1e-9
    t = min(max(sum((q - x) * v for q, x, v in zip(p, a, e)) / ee, 0.0), 1.0)
    return colour_distance(p, tuple(x + t * v for x, v in zip(a, e)))  # type: ignore[arg-type]


def _stripe_partner(tone: RGB) -> RGB:
    """The second stripe colour: a darker shade of a light tone, a lighter one of a dark tone."""
    if sum(tone) / 3 > 0.5:
        return (0.8 * tone[0], 0.8 * tone[1], 0.8 * tone[2])
    return (tone[0] + 0.16, tone[1] + 0.16, tone[2] + 0.16)


def sample_background(rng: Rng, shape_rgbs: list[RGB], texture_prob: float,
                      plain_prob: float, amount: float = 1.0) -> BackgroundSpec:
    """A background that contrasts with every shape colour: the neutral tone, a plain palette
    colour, a gradient or stripes."""
    u = rng.random()
    if u < texture_prob:
        tones = [t for t in TEXTURE_TONES if _contrast_ok(t, shape_rgbs, TEXTURE_CONTRAST)]
        if rng.chance(0.5):
            # Gradient: every colour along the blend must contrast with the shapes.
            pairs = [(a, b) for a in tones for b in tones
                     if colour_distance(a, b) >= 0.25
                     and all(_segment_distance(c, a, b) >= TEXTURE_CONTRAST for c in shape_rgbs)]
            if pairs:
                a, b = rng.choice(pairs)
                return BackgroundSpec("gradient", a, rgb2=b, angle=rng.angle())
        else:
            stripes = [(t, _stripe_partner(t)) for t in tones]
            stripes = [(a, b) for a, b in stripes if _contrast_ok(b, shape_rgbs, TEXTURE_CONTRAST)]
            if stripes:
                a, b = rng.choice(stripes)
                angle = rng.choice([0.0, math.pi / 2, math.pi / 4, 3 * math.pi / 4])
                return BackgroundSpec("stripes", a, rgb2=b, angle=angle,
                                      period=rng.uniform(0.08, 0.14))
    elif u < texture_prob + plain_prob:
        names = [n for n in COLOURS if _contrast_ok(PALETTE[n], shape_rgbs, PLAIN_CONTRAST)]
        if names:
            name = rng.choice(names)
            f = 1.0 + amount * rng.uniform(-0.04, 0.04)
            rgb = tuple(min(max(c * f, 0.0), 1.0) for c in PALETTE[name])
            return BackgroundSpec("plain", rgb, colour=name)  # type: ignore[arg-type]
    if _contrast_ok(NEUTRAL_BACKGROUND, shape_rgbs, MIN_CONTRAST):
        return BackgroundSpec("neutral", NEUTRAL_BACKGROUND)
    # Neutral is too close to a shape: use the plain palette colour farthest from all shapes.
    name = max(COLOURS, key=lambda n: min(colour_distance(PALETTE[n], c) for c in shape_rgbs))
    return BackgroundSpec("plain", PALETTE[name], colour=name)


# ---- placement ----------------------------------------------------------------------------------

def place(rng: Rng, position: str, r: float) -> tuple[float, float]:
    """A centre for a shape of radius r clearly inside the named region."""
    lo, hi = r + MARGIN, 1.0 - r - MARGIN
    along = 0.5 + rng.uniform(-0.06, 0.06)
    if position == "center":
        return 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    off = rng.uniform(0.24, 0.32)
    if position == "left":
        return max(off, lo), along
    if position == "right":
        return min(1.0 - off, hi), along
    if position == "top":
        return along, max(off, lo)
    if position == "bottom":
        return along, min(1.0 - off, hi)
    raise ValueError(position)


def scatter_shapes(rng: Rng, n: int, radius: tuple[float, float], reach: float = 1.0,
                   gap: float = 0.065, tries: int = 300) -> list[tuple[float, float, float]] | None:
    """n (cx, cy, r) spots whose shapes (each inside a circle of radius reach * r) keep `gap`
    apart, or None if they did not fit."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(tries):
        r = rng.uniform(*radius)
        cx = rng.uniform(r + MARGIN, 1 - r - MARGIN)
        cy = rng.uniform(r + MARGIN, 1 - r - MARGIN)
        if all(math.hypot(cx - x, cy - y) >= reach * (r + q) + gap for x, y, q in placed):
            placed.append((cx, cy, r))
            if len(placed) == n:
                return placed
    return None


# ---- samplers -----------------------------------------------------------------------------------

def sample_object(rng: Rng, split: str, texture_prob: float, plain_prob: float,
                  jitter: float) -> SceneSpec:
    """One shape with a colour, size and position."""
    colour, shape = rng.choice(colour_shape_pairs(split))
    size = rng.choice(SIZES)
    position = rng.choice(POSITIONS)
    r = rng.uniform(*SIZE_RADIUS[size])
    cx, cy = place(rng, position, r)
    rgb = jitter_colour(rng, colour, jitter)
    bg = sample_background(rng, [rgb], texture_prob, plain_prob, jitter)
    return SceneSpec("object", (ShapeSpec(colour, shape, cx, cy, r, rgb),), background=bg)


def sample_count(rng: Rng, split: str, texture_prob: float, plain_prob: float,
                 jitter: float) -> SceneSpec:
    """One to four shapes of the same colour and shape, apart from each other."""
    count, shape = rng.choice(count_shape_pairs(split))
    colour = rng.choice([c for c in COLOURS if shape in _shapes_for(c, split)])
    size = "small" if count >= 3 and rng.chance(0.5) else rng.choice(("small", "medium"))
    spots = scatter_shapes(rng, count, SIZE_RADIUS[size], REACH[shape])
    if spots is None:
        size = "small"
        spots = scatter_shapes(rng, count, SIZE_RADIUS[size], REACH[shape], tries=2000)
        assert spots is not None, "four small shapes always fit"
    rgbs = [jitter_colour(rng, colour, jitter) for _ in spots]
    bg = sample_background(rng, rgbs, texture_prob, plain_prob, jitter)
    shapes = tuple(ShapeSpec(colour, shape, cx, cy, r, rgb) for (cx, cy, r), rgb in zip(spots, rgbs))
    return SceneSpec("count", shapes, background=bg)


def sample_relation(rng: Rng, split: str, texture_prob: float, plain_prob: float,
                    jitter: float) -> SceneSpec:
    """Two shapes of different colours, the first left of / right of / above / below the second,
    far apart along one axis and nearly aligned along the other."""
    ca, cb = rng.choice(relation_colour_pairs(split))
    sa, sb = rng.choice(_shapes_for(ca, split)), rng.choice(_shapes_for(cb, split))
    relation = rng.choice(RELATIONS)
    ra, rb = rng.uniform(0.09, 0.15), rng.uniform(0.09, 0.15)
    near = rng.uniform(0.17, 0.3)                      # distance of each centre from the middle
    a_main = 0.5 - near if relation in ("left of", "above") else 0.5 + near
    b_main = 1.0 - a_main + rng.uniform(-0.03, 0.03)
    a_main = min(max(a_main, ra + MARGIN), 1 - ra - MARGIN)
    b_main = min(max(b_main, rb + MARGIN), 1 - rb - MARGIN)
    cross = 0.5 + rng.uniform(-0.12, 0.12)
    a_cross, b_cross = cross + rng.uniform(-0.04, 0.04), cross + rng.uniform(-0.04, 0.04)
    if relation in ("left of", "right of"):
        (ax, ay), (bx, by) = (a_main, a_cross), (b_main, b_cross)
    else:
        (ax, ay), (bx, by) = (a_cross, a_main), (b_cross, b_main)
    rgb_a, rgb_b = jitter_colour(rng, ca, jitter), jitter_colour(rng, cb, jitter)
    bg = sample_background(rng, [rgb_a, rgb_b], texture_prob, plain_prob, jitter)
    return SceneSpec("relation", (ShapeSpec(ca, sa, ax, ay, ra, rgb_a),
                                  ShapeSpec(cb, sb, bx, by, rb, rgb_b)), background=bg)


# Plain two-tone stages for scene objects shown alone (light, mid and dark tones).
BACKDROP_TONES: tuple[RGB, ...] = (
    (0.92, 0.91, 0.88), (0.80, 0.84, 0.90), (0.88, 0.82, 0.74), (0.70, 0.70, 0.72),
    (0.55, 0.60, 0.58), (0.45, 0.40, 0.50), (0.30, 0.28, 0.26), (0.14, 0.16, 0.22),
    (0.22, 0.12, 0.16), (0.10, 0.10, 0.10))


def sample_backdrop_scene(rng: Rng) -> SceneSpec:
    """A scene object alone on a plain two-tone stage, under no condition: teaches what each
    object looks like apart from the landscapes it is usually seen in."""
    obj = rng.choice(SCENE_OBJECTS)
    top = rng.choice(BACKDROP_TONES)
    bottom = rng.choice([t for t in BACKDROP_TONES if t != top])
    return _place_landscape(rng, obj, "plain", backdrop=(top, bottom))


def _place_landscape(rng: Rng, obj: str, condition: str,
                     backdrop: tuple[RGB, RGB] | None = None) -> SceneSpec:
    """A scene of `obj`: its place, horizon, scale and detail seed drawn from `rng`."""
    lo, hi = HORIZON_RANGE.get(obj, DEFAULT_HORIZON)
    spread = 0.2 if obj in ("sun", "moon") else 0.07
    land = LandscapeSpec(obj, condition, x=0.5 + rng.uniform(-spread, spread), horizon=rng.uniform(lo, hi),
                         scale=rng.uniform(0.9, 1.08), key=rng.key(), backdrop=backdrop)
    return SceneSpec("scene", landscape=land)


def sample_scene(rng: Rng, split: str, texture_prob: float, plain_prob: float,
                 jitter: float, backdrops: float = 0.0, relight: float = 0.0, empty: float = 0.0) -> SceneSpec:
    """A landscape with one scene object under one condition. Never in the 'eval' split: with
    chance `backdrops` the object alone on a plain stage, with chance `empty` the landscape alone,
    and with chance `relight` the object under a random light of its own."""
    if backdrops > 0 and split != "eval" and rng.chance(backdrops):
        spec = sample_backdrop_scene(rng)
    elif empty > 0 and split != "eval" and rng.chance(empty):
        spec = _place_landscape(rng, "", rng.choice(CONDITIONS))
    else:
        obj, condition = rng.choice(scene_pairs(split))
        spec = _place_landscape(rng, obj, condition)
    if relight > 0 and split != "eval" and rng.chance(relight):
        spec = dataclasses.replace(spec, landscape=dataclasses.replace(spec.landscape, relight=True))
    return spec


SAMPLERS = {
    "object": sample_object,
    "count": sample_count,
    "relation": sample_relation,
    "scene": sample_scene,
}


# ---- twins: minimal edits that make in-batch hard negatives --------------------------------------

@dataclasses.dataclass(frozen=True)
class TwinOptions:
    """How twins are drawn (chances, see WorldConfig): `alike`, an object's shape twin is one of the
    shapes most like its own; `moved`, an object's twin moves or changes size instead; `alike_scenes`,
    a scene's twin with another object takes one of its family."""

    alike: float = 0.0
    moved: float = 0.0
    alike_scenes: float = 0.0


def _twin_object(rng: Rng, spec: SceneSpec, split: str, jitter: float, opts: TwinOptions) -> SceneSpec:
    """Same place, size and background; another colour (half the time) or another shape, with
    chance `alike` one of the shapes most like it (`shape_overlap` within ALIKE_MARGIN of the closest).
    With chance `moved`, instead the same colour and shape at another position or of another size."""
    s = spec.shapes[0]
    if opts.moved > 0 and rng.chance(opts.moved):
        return _moved_object(rng, spec)
    pairs = colour_shape_pairs(split)
    recolour = rng.chance(0.5)
    if recolour:
        options = [(c, sh) for c, sh in pairs if sh == s.shape and c != s.colour]
    else:
        options = [(c, sh) for c, sh in pairs if c == s.colour and sh != s.shape]
    bg = spec.background
    tones = [bg.rgb] if bg.kind in ("neutral", "plain") else [bg.rgb, bg.rgb2]
    options = [o for o in options if _contrast_ok(PALETTE[o[0]], tones, MIN_CONTRAST)]
    if not options:
        return spec
    if not recolour and opts.alike > 0 and rng.chance(opts.alike):
        closest = max(shape_overlap(s.shape, sh) for _, sh in options)
        options = [o for o in options if shape_overlap(s.shape, o[1]) >= closest - ALIKE_MARGIN]
    colour, shape = rng.choice(options)
    rgb = jitter_colour(rng, colour, jitter) if colour != s.colour else s.rgb
    return SceneSpec("object", (ShapeSpec(colour, shape, s.cx, s.cy, s.r, rgb),), background=spec.background)


def _moved_object(rng: Rng, spec: SceneSpec) -> SceneSpec:
    """The object of `spec` at another named position (half the time) or of another size."""
    s = spec.shapes[0]
    position, size = position_of(s.cx, s.cy), size_of_radius(s.r)
    if rng.chance(0.5):
        position = rng.choice([p for p in POSITIONS if p != position])
    else:
        size = rng.choice([z for z in SIZES if z != size])
    r = rng.uniform(*SIZE_RADIUS[size])
    cx, cy = place(rng, position, r)
    return SceneSpec("object", (dataclasses.replace(s, cx=cx, cy=cy, r=r),), background=spec.background)


def _twin_count(rng: Rng, spec: SceneSpec, split: str, jitter: float, opts: TwinOptions) -> SceneSpec:
    """Same colour, shape, size and background; another count."""
    s = spec.shapes[0]
    counts = [k for k, sh in count_shape_pairs(split) if sh == s.shape and k != len(spec.shapes)]
    if not counts:
        return spec
    k = rng.choice(counts)
    size = size_of_radius(s.r)
    spots = scatter_shapes(rng, k, SIZE_RADIUS[size], REACH[s.shape], tries=2000) \
        or scatter_shapes(rng, k, SIZE_RADIUS["small"], REACH[s.shape], tries=2000)
    if spots is None:
        return spec
    shapes = tuple(ShapeSpec(s.colour, s.shape, cx, cy, r, s.rgb) for cx, cy, r in spots)
    return SceneSpec("count", shapes, background=spec.background)


def _twin_relation(rng: Rng, spec: SceneSpec, split: str, jitter: float, opts: TwinOptions) -> SceneSpec:
    """The two shapes trade places: the relation reverses, everything else stays."""
    a, b = spec.shapes
    return SceneSpec("relation", (ShapeSpec(a.colour, a.shape, b.cx, b.cy, a.r, a.rgb),
                                  ShapeSpec(b.colour, b.shape, a.cx, a.cy, b.r, b.rgb)),
                     background=spec.background)


def _twin_scene(rng: Rng, spec: SceneSpec, split: str, jitter: float, opts: TwinOptions) -> SceneSpec:
    """Same object and layout under another condition (or another object in the same condition);
    on a plain backdrop, another object on the same stage. When the object changes, with chance
    `alike_scenes` it becomes one of its own family (SCENE_FAMILY: a house for a church) if one fits."""
    land, alike = spec.landscape, opts.alike_scenes
    if land.backdrop is not None:
        obj = rng.choice(_scene_alike(rng, land.obj, [o for o in SCENE_OBJECTS if o != land.obj], alike))
        return SceneSpec("scene", landscape=dataclasses.replace(land, obj=obj,
                                                                horizon=_horizon_for(obj, land.horizon)))
    options = [(o, c) for o, c in scene_pairs(split) if o == land.obj and c != land.condition]
    if not options or rng.chance(0.5):
        others = [(o, c) for o, c in scene_pairs(split) if c == land.condition and o != land.obj]
        if others:
            family = _scene_alike(rng, land.obj, [o for o, _ in others], alike)
            options = [(o, c) for o, c in others if o in family]
    if not options:
        return spec
    obj, condition = rng.choice(options)
    return SceneSpec("scene", landscape=dataclasses.replace(land, obj=obj, condition=condition,
                                                            horizon=_horizon_for(obj, land.horizon)))


def _scene_alike(rng: Rng, obj: str, objects: list[str], alike: float) -> list[str]:
    """`objects`, narrowed with chance `alike` to those of `obj`'s family when any is there."""
    if not obj or alike <= 0 or not rng.chance(alike):
        return objects
    family = [o for o in objects if SCENE_FAMILY.get(o) == SCENE_FAMILY.get(obj)]
    return family or objects


def _horizon_for(obj: str, horizon: float) -> float:
    """`horizon` moved into the range where `obj` stands (kept as it is when already inside)."""
    lo, hi = HORIZON_RANGE.get(obj, DEFAULT_HORIZON)
    return min(max(horizon, lo), hi)


TWINS = {"object": _twin_object, "count": _twin_count, "relation": _twin_relation, "scene": _twin_scene}


def twin(rng: Rng, spec: SceneSpec, split: str, jitter: float, opts: TwinOptions = TwinOptions()) -> SceneSpec:
    """A minimal edit of `spec` (one attribute changed) within the split's compositions, drawn as
    `opts` says."""
    return TWINS[spec.kind](rng, spec, split, jitter, opts)

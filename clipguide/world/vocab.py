"""Vocabulary of the world: colours, shapes, sizes, positions, counts, relations, backgrounds and
scene objects, with the words used for them in captions."""
from __future__ import annotations

import math

RGB = tuple[float, float, float]

# Base colours. Every pair is at least ~0.38 apart in RGB so that jittered samples stay separable.
PALETTE: dict[str, RGB] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.15, 0.65, 0.15),
    "blue": (0.12, 0.25, 0.88),
    "yellow": (0.98, 0.90, 0.12),
    "orange": (1.00, 0.50, 0.00),
    "purple": (0.52, 0.14, 0.72),
    "pink": (1.00, 0.55, 0.78),
    "brown": (0.48, 0.27, 0.09),
    "black": (0.05, 0.05, 0.05),
    "white": (0.98, 0.98, 0.98),
    "gray": (0.50, 0.50, 0.50),
    "cyan": (0.08, 0.82, 0.90),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "hexagon", "cross", "ring")
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Radius ranges (fraction of the image side) of the three sizes. Every shape spans ~2r across.
SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (0.07, 0.095),
    "medium": (0.13, 0.165),
    "large": (0.21, 0.245),
}

# Backgrounds: the default neutral tone, plain palette colours, and two textures.
NEUTRAL_BACKGROUND: RGB = (0.74, 0.73, 0.70)
BACKGROUND_KINDS: tuple[str, ...] = ("neutral", "plain", "gradient", "stripes")
TEXTURES: tuple[str, ...] = ("gradient", "stripes")
# Soft tones that textured backgrounds are made of.
TEXTURE_TONES: tuple[RGB, ...] = (
    (0.70, 0.82, 0.95),  # light blue
    (0.97, 0.94, 0.74),  # light yellow
    (0.76, 0.90, 0.74),  # light green
    (0.85, 0.80, 0.95),  # lavender
    (0.98, 0.84, 0.74),  # peach
    (0.84, 0.84, 0.84),  # light gray
    (0.20, 0.24, 0.30),  # slate
    (0.12, 0.14, 0.32),  # navy
)
# A shape colour must be at least this far (RGB distance) from every background tone under it.
MIN_CONTRAST = 0.3

# Scene objects and the conditions each one is drawn in.
SCENE_OBJECTS: tuple[str, ...] = (
    "church", "gothic church", "house", "tree", "sun", "moon", "mountain", "boat", "car")
CONDITIONS: tuple[str, ...] = ("day", "night", "snow")
SCENE_CONDITIONS: dict[str, tuple[str, ...]] = {
    "church": CONDITIONS,
    "gothic church": CONDITIONS,
    "house": CONDITIONS,
    "tree": CONDITIONS,
    "sun": ("day", "snow"),
    "moon": ("night",),
    "mountain": CONDITIONS,
    "boat": ("day", "night"),
    "car": CONDITIONS,
}
# Families of scene objects that look alike (buildings; lights of the sky; things that stand
# tall; vehicles): a scene twin with `alike_scenes` takes another object of its family.
SCENE_FAMILY: dict[str, str] = {
    "church": "building", "gothic church": "building", "house": "building",
    "sun": "sky", "moon": "sky", "tree": "upright", "mountain": "upright",
    "boat": "vehicle", "car": "vehicle",
}
SCENE_CLASSES: tuple[tuple[str, str], ...] = tuple(
    (obj, cond) for obj in SCENE_OBJECTS for cond in SCENE_CONDITIONS[obj])

KINDS: tuple[str, ...] = ("object", "count", "relation", "scene")

# ---- words -------------------------------------------------------------------------------------

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS} | {"gray": ("gray", "grey")}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {s: (s,) for s in SHAPES} | {
    "circle": ("circle", "disk"),
    "cross": ("cross", "plus sign"),
}
PLURALS: dict[str, str] = {"cross": "crosses", "plus sign": "plus signs"}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
SCENE_NOUNS: dict[str, tuple[str, ...]] = {
    "church": ("a church", "a chapel"),
    "gothic church": ("a gothic church", "a gothic cathedral"),
    "house": ("a house", "a cottage"),
    "tree": ("a tree",),
    "sun": ("the sun",),
    "moon": ("the moon", "a crescent moon"),
    "mountain": ("a mountain",),
    "boat": ("a boat", "a sailboat", "a sailing boat"),
    "car": ("a car",),
}
CONDITION_PHRASES: dict[str, tuple[str, ...]] = {
    "day": ("during the day", "on a sunny day", "in daylight", "by day"),
    "night": ("at night", "in the night", "under the night sky"),
    "snow": ("in the snow", "in winter", "covered in snow", "on a snowy day"),
}
CONDITION_SCENE_WORDS: dict[str, str] = {"day": "a daytime scene", "night": "a night scene",
                                         "snow": "a winter scene"}
PREFIXES: tuple[str, ...] = ("a picture of", "an image of", "a drawing of", "a photo of")


def plural(noun: str) -> str:
    """Plural of a shape noun."""
    return PLURALS.get(noun, noun + "s")


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """The phrase with its indefinite article in front: 'an orange star'."""
    return f"{article(phrase)} {phrase}"


def count_phrase(count: int, colour: str, shape: str) -> str:
    """Canonical counting phrase: 'one red star', 'three blue crosses'."""
    noun = shape if count == 1 else plural(shape)
    return f"{NUMBER_WORDS[count]} {colour} {noun}"


def size_of_radius(r: float) -> str:
    """Size label of a radius (the nearest range)."""
    best, dist = "medium", float("inf")
    for name, (lo, hi) in SIZE_RADIUS.items():
        d = 0.0 if lo <= r <= hi else min(abs(r - lo), abs(r - hi))
        if d < dist:
            best, dist = name, d
    return best


def position_of(cx: float, cy: float, centre_radius: float = 0.1) -> str:
    """Position label of a point in normalised image coordinates (y grows downwards)."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < centre_radius:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_of(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Spatial relation of point a to point b: 'left of', 'right of', 'above' or 'below'."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def colour_distance(a: RGB, b: RGB) -> float:
    """Euclidean RGB distance."""
    return math.dist(a, b)


def nearest_colour(rgb: RGB) -> str:
    """Name of the palette colour nearest to rgb."""
    return min(COLOURS, key=lambda c: colour_distance(PALETTE[c], rgb))

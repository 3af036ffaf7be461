"""Held-out compositions: combinations the training split never produces and the evaluation split
produces exclusively. Every colour, shape, count, relation, scene object and condition still
appears in training, only with other partners."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .vocab import COLOURS, SCENE_CLASSES, SHAPES

# 20 of the 96 colour-shape pairs (~21%): every colour loses at most two shapes and every shape
# at most three colours.
HELDOUT_COLOUR_SHAPE: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("red", "hexagon"),
    ("green", "circle"), ("green", "cross"),
    ("blue", "triangle"), ("blue", "ring"),
    ("yellow", "square"), ("yellow", "heart"),
    ("orange", "circle"), ("orange", "ring"),
    ("purple", "square"), ("purple", "star"),
    ("pink", "triangle"), ("pink", "hexagon"),
    ("brown", "heart"), ("brown", "cross"),
    ("black", "ring"),
    ("white", "triangle"),
    ("gray", "heart"),
    ("cyan", "square"),
})

# 7 of the 24 (count >= 2, shape) pairs. Count 1 is never held out: single objects are everywhere.
HELDOUT_COUNT_SHAPE: frozenset[tuple[int, str]] = frozenset({
    (2, "heart"), (2, "cross"),
    (3, "star"), (3, "square"), (3, "hexagon"),
    (4, "circle"), (4, "triangle"),
})

# 13 of the 66 unordered colour pairs (~20%) never appear together in a relation image.
HELDOUT_RELATION_COLOURS: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in (
    ("red", "purple"), ("green", "orange"), ("blue", "yellow"),
    ("red", "white"), ("green", "black"), ("blue", "brown"), ("yellow", "pink"),
    ("orange", "purple"),
    ("orange", "cyan"), ("purple", "white"), ("pink", "black"), ("brown", "gray"),
    ("black", "cyan"),
))

# 5 of the 23 (scene object, condition) pairs.
HELDOUT_SCENES: frozenset[tuple[str, str]] = frozenset({
    ("gothic church", "night"), ("house", "snow"), ("tree", "night"), ("car", "snow"),
    ("mountain", "night"),
})

TRAIN_COLOUR_SHAPE: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COLOUR_SHAPE)
EVAL_COLOUR_SHAPE: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) in HELDOUT_COLOUR_SHAPE)
TRAIN_SCENES: tuple[tuple[str, str], ...] = tuple(p for p in SCENE_CLASSES if p not in HELDOUT_SCENES)
EVAL_SCENES: tuple[tuple[str, str], ...] = tuple(p for p in SCENE_CLASSES if p in HELDOUT_SCENES)


def objects_of(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (colour, shape) pairs shown in a sample, from its attributes."""
    if attrs.get("kind") == "relation":
        return [tuple(o) for o in attrs["objects"]]  # type: ignore[misc]
    if "colour" in attrs and "shape" in attrs:
        return [(attrs["colour"], attrs["shape"])]
    return []


def heldout_hits(attrs: Mapping[str, Any]) -> list[str]:
    """Which held-out compositions a sample shows: a list drawn from 'colour_shape', 'count',
    'relation' and 'scene' (empty for a sample the training split may produce)."""
    hits = []
    if any(o in HELDOUT_COLOUR_SHAPE for o in objects_of(attrs)):
        hits.append("colour_shape")
    kind = attrs.get("kind")
    if kind == "count" and (attrs["count"], attrs["shape"]) in HELDOUT_COUNT_SHAPE:
        hits.append("count")
    if kind == "relation":
        colours = frozenset(o[0] for o in attrs["objects"])
        if colours in HELDOUT_RELATION_COLOURS:
            hits.append("relation")
    if kind == "scene" and (attrs.get("object"), attrs.get("condition")) in HELDOUT_SCENES:
        hits.append("scene")
    return hits


def is_heldout(attrs: Mapping[str, Any]) -> bool:
    """Whether a sample shows any held-out composition."""
    return bool(heldout_hits(attrs))


def summary() -> dict[str, list]:
    """The held-out sets as sorted plain lists (for reports and logs)."""
    return {
        "colour_shape": sorted(HELDOUT_COLOUR_SHAPE),
        "count_shape": sorted(HELDOUT_COUNT_SHAPE),
        "relation_colours": sorted(tuple(sorted(p)) for p in HELDOUT_RELATION_COLOURS),
        "scenes": sorted(HELDOUT_SCENES),
    }

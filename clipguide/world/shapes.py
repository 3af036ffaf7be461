"""The eight basic shapes as primitives. Each spans about 2r across its widest extent, so a radius
means the same visible size for every shape."""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import InputError
from .raster import Prim, circle, polygon, rect, regular_polygon, star, subtract, union
from .vocab import SHAPES

RING_INNER = 0.56  # inner radius of a ring, as a fraction of its outer radius
CROSS_ARM = 0.34   # half-width of a cross arm, as a fraction of r
SQUARE_HALF = 0.93  # half-side of a square, as a fraction of r
# Radius of the circle around the centre that holds the whole shape, as a multiple of r.
REACH: dict[str, float] = {s: 1.0 for s in SHAPES} | {
    "square": SQUARE_HALF * 2 ** 0.5, "triangle": 2 / 3 ** 0.5, "star": 1 / math.sin(2 * math.pi / 5),
    "heart": 1.0}


def shape_prim(shape: str, cx: float, cy: float, r: float) -> Prim:
    """Primitive of a named shape centred at (cx, cy) with 'radius' r."""
    if shape == "circle":
        return circle(cx, cy, r)
    if shape == "square":
        h = SQUARE_HALF * r
        return rect(cx, cy, h, h)
    if shape == "triangle":
        # Upward equilateral triangle, width 2r, centroid at the centre.
        h = r * math.sqrt(3.0)
        return polygon([(cx, cy - 2 * h / 3), (cx + r, cy + h / 3), (cx - r, cy + h / 3)])
    if shape == "star":
        outer = r / math.sin(2 * math.pi / 5)
        # Centre the star's height (tip to lower tips) on cy.
        dy = outer * (1 - math.cos(math.pi / 5)) / 2
        return star(cx, cy + dy, outer, 0.42 * outer, 5)
    if shape == "heart":
        return heart(cx, cy, r)
    if shape == "hexagon":
        return regular_polygon(cx, cy, r, 6, rotation=math.pi / 6)
    if shape == "cross":
        w = CROSS_ARM * r
        return union(rect(cx, cy, r, w), rect(cx, cy, w, r))
    if shape == "ring":
        return subtract(circle(cx, cy, r), circle(cx, cy, RING_INNER * r))
    raise InputError(f"unknown shape {shape!r}; known shapes are {list(SHAPES)}")


def heart(cx: float, cy: float, r: float) -> Prim:
    """Heart, point down: a square turned 45 degrees with two discs on its upper edges."""
    h = r / (0.5 + math.sqrt(0.5))                  # half-diagonal of the square, width = 2r
    c = cy + 0.915 * r - h                          # square centre, so the heart is centred
    disc = h / math.sqrt(2.0)
    diamond = polygon([(cx, c - h), (cx + h, c), (cx, c + h), (cx - h, c)])
    return union(diamond, circle(cx - h / 2, c - h / 2, disc), circle(cx + h / 2, c - h / 2, disc))


@functools.lru_cache(maxsize=None)
def shape_overlap(a: str, b: str, grid: int = 129) -> float:
    """How alike two shapes look: intersection over union of their masks drawn at the same centre
    and radius (1.0 for a shape with itself; a hexagon and a circle overlap most, a ring and a star
    least)."""
    g = np.linspace(-1.6, 1.6, grid)
    x, y = np.meshgrid(g, g)
    ma, mb = shape_prim(a, 0.0, 0.0, 1.0).sdf(x, y) < 0, shape_prim(b, 0.0, 0.0, 1.0).sdf(x, y) < 0
    return float((ma & mb).sum() / max(int((ma | mb).sum()), 1))

"""Landscape scenes: sky, ground and one object (church, gothic church, house, tree, sun, moon,
mountain, boat, car) by day, at night or in the snow, drawn from primitives.

Drawings use a coordinate frame anchored at the object's foot: x is its centre, g the ground line
and s its scale, so heights read as `g - 0.3 * s`."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .raster import (Canvas, box, circle, ellipse, pointed_arch, polygon, rect, round_arch,
                     segment, star, subtract, union)
from .rng import Rng
from .spec import LandscapeSpec
from .vocab import CONDITIONS, RGB, SCENE_CONDITIONS

SNOW: RGB = (0.96, 0.97, 1.0)
LIT_WINDOW: RGB = (1.0, 0.83, 0.32)


class Look:
    """How a condition changes colours: at night surfaces are darkened and turned blue (moonlight:
    forms stay visible), while lights (lit windows, the moon, stars) keep their colour. `exposure`
    scales every surface in every condition (a per-scene lighting: brightness and a slight tint,
    channel by channel), so that an object is recognised by its form rather than by how bright it
    is in the conditions it was seen under. `haze` mixes surfaces toward their grey and `ambient`
    adds a light of its own (both zero unless a scene is relit for training). `lit`: the object's
    own lights (windows, a church's cross, a car's headlights) are on; by default only at night."""

    def __init__(self, condition: str, exposure: RGB = (1.0, 1.0, 1.0), haze: float = 0.0,
                 ambient: RGB = (0.0, 0.0, 0.0), lit: bool | None = None) -> None:
        self.condition = condition
        self.night = condition == "night"
        self.snow = condition == "snow"
        self.lit = self.night if lit is None else lit
        self.exposure = exposure
        self.haze = haze
        self.ambient = ambient

    def __call__(self, rgb: RGB) -> RGB:
        r, g, b = (min(c * e, 1.0) for c, e in zip(rgb, self.exposure))
        if self.haze or any(self.ambient):
            grey = 0.3 * r + 0.59 * g + 0.11 * b
            r, g, b = (min((1 - self.haze) * c + self.haze * grey + a, 1.0)
                       for c, a in zip((r, g, b), self.ambient))
        if self.night:
            return (0.68 * r + 0.02, 0.7 * g + 0.03, 0.8 * b + 0.08)
        return (r, g, b)

    def window(self, day: RGB) -> RGB:
        """Window colour: glass by day, lit at night."""
        return LIT_WINDOW if self.lit else day


def _jitter(rng: Rng, rgb: RGB, amount: float = 0.06) -> RGB:
    f = rng.uniform(1 - amount, 1 + amount)
    return tuple(min(max(c * f, 0.0), 1.0) for c in rgb)  # type: ignore[return-value]


# ---- sky and ground -----------------------------------------------------------------------------

SKY: dict[str, tuple[RGB, RGB]] = {
    "day": ((0.36, 0.62, 0.93), (0.72, 0.86, 0.98)),
    "night": ((0.01, 0.02, 0.09), (0.07, 0.10, 0.25)),
    "snow": ((0.64, 0.69, 0.77), (0.84, 0.86, 0.90)),
}
GROUND: dict[str, tuple[RGB, RGB]] = {
    "day": ((0.40, 0.70, 0.26), (0.24, 0.50, 0.15)),
    "night": ((0.06, 0.13, 0.08), (0.03, 0.07, 0.05)),
    "snow": ((0.97, 0.98, 1.0), (0.82, 0.87, 0.95)),
}
WATER: dict[str, tuple[RGB, RGB]] = {
    "day": ((0.30, 0.55, 0.82), (0.10, 0.30, 0.62)),
    "night": ((0.05, 0.08, 0.20), (0.02, 0.04, 0.11)),
    "snow": ((0.45, 0.58, 0.72), (0.30, 0.42, 0.58)),
}


def draw_sky(c: Canvas, condition: str, horizon: float, rng: Rng, clouds: bool) -> None:
    """Sky gradient down to the horizon, with stars at night and clouds by day."""
    top, bottom = SKY[condition]
    c.linear_gradient(top, bottom, math.pi / 2, rows=(0.0, horizon))
    if condition == "night":
        scatter(c, rng, (0.0, 0.0, 1.0, horizon - 0.06), (9, 4), 0.55, (0.006, 0.011),
                (1.0, 0.98, 0.85))
    elif condition == "day" and clouds:
        for _ in range(rng.randint(1, 2)):
            cloud(c, rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.2), rng.uniform(0.7, 1.0))


def draw_ground(c: Canvas, condition: str, horizon: float, water: bool = False) -> None:
    """Grass (or snow, or water) from the horizon to the bottom."""
    top, bottom = (WATER if water else GROUND)[condition]
    c.linear_gradient(top, bottom, math.pi / 2, rows=(horizon, 1.0))


def cloud(c: Canvas, x: float, y: float, s: float) -> None:
    """A white cloud of overlapping puffs."""
    shape = union(ellipse(x, y + 0.01 * s, 0.11 * s, 0.035 * s), circle(x - 0.04 * s, y, 0.035 * s),
                  circle(x + 0.02 * s, y - 0.012 * s, 0.045 * s))
    c.fill(shape, (0.98, 0.98, 1.0), 0.95)


def scatter(c: Canvas, rng: Rng, region: tuple[float, float, float, float], grid: tuple[int, int],
            density: float, radius: tuple[float, float], rgb: RGB, alpha: float = 1.0) -> None:
    """Scatter small dots (stars, snowflakes) over a region, at most one per grid cell."""
    gx, gy = grid
    x0, y0, x1, y1 = region
    cw, ch = (x1 - x0) / gx, (y1 - y0) / gy
    centres = np.zeros((gy, gx, 2), dtype=np.float32)
    radii = np.zeros((gy, gx), dtype=np.float32)
    for j in range(gy):
        for i in range(gx):
            present = rng.chance(density)
            r = rng.uniform(*radius)
            m = r + 0.02
            fx = rng.uniform(min(m / cw, 0.5), max(1 - m / cw, 0.5))
            fy = rng.uniform(min(m / ch, 0.5), max(1 - m / ch, 0.5))
            centres[j, i] = (x0 + (i + fx) * cw, y0 + (j + fy) * ch)
            radii[j, i] = r if present else 0.0
    c.dots(region, centres, radii, rgb, alpha)


# ---- objects ------------------------------------------------------------------------------------

def draw_house(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A house: walls, pitched roof, chimney, door and two windows."""
    wall = _jitter(rng, rng.choice([(0.93, 0.84, 0.62), (0.80, 0.46, 0.34), (0.95, 0.93, 0.86),
                                    (0.72, 0.80, 0.88)]))
    roof = _jitter(rng, rng.choice([(0.66, 0.17, 0.12), (0.38, 0.22, 0.14), (0.30, 0.32, 0.40)]))
    c.fill(box(x + 0.09 * s, g - 0.42 * s, x + 0.145 * s, g - 0.3 * s), look((0.55, 0.25, 0.18)))
    c.fill(box(x - 0.2 * s, g - 0.27 * s, x + 0.2 * s, g), look(wall))
    apex, eave, half = g - 0.45 * s, g - 0.27 * s, 0.26 * s
    c.fill(polygon([(x, apex), (x + half, eave), (x - half, eave)]), look(roof))
    if look.snow:
        k = 0.55
        c.fill(polygon([(x, apex - 0.01 * s), (x + half * k + 0.015 * s, apex + (eave - apex) * k),
                        (x - half * k - 0.015 * s, apex + (eave - apex) * k)]), SNOW)
        c.fill(box(x + 0.085 * s, g - 0.435 * s, x + 0.15 * s, g - 0.415 * s, 0.008 * s), SNOW)
    c.fill(box(x - 0.045 * s, g - 0.15 * s, x + 0.045 * s, g), look((0.42, 0.25, 0.12)))
    glass = look.window((0.62, 0.84, 0.98))
    frame = look((0.35, 0.25, 0.2))
    for wx in (x - 0.125 * s, x + 0.125 * s):
        c.fill(rect(wx, g - 0.165 * s, 0.05 * s, 0.045 * s), frame)
        c.fill(rect(wx, g - 0.165 * s, 0.038 * s, 0.034 * s), glass)
        c.fill(union(rect(wx, g - 0.165 * s, 0.005 * s, 0.04 * s),
                     rect(wx, g - 0.165 * s, 0.045 * s, 0.005 * s)), frame)


def draw_church(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A village church: nave with a pitched roof and a bell tower with a spire and a cross."""
    wall = _jitter(rng, rng.choice([(0.92, 0.90, 0.84), (0.86, 0.80, 0.68), (0.96, 0.95, 0.93)]))
    roof = _jitter(rng, rng.choice([(0.62, 0.18, 0.14), (0.32, 0.33, 0.40), (0.40, 0.24, 0.16)]))
    tx = x - 0.13 * s                                   # tower axis
    # nave
    c.fill(box(x - 0.08 * s, g - 0.21 * s, x + 0.27 * s, g), look(wall))
    nave_roof = [(x + 0.095 * s, g - 0.34 * s), (x + 0.295 * s, g - 0.21 * s),
                 (x - 0.1 * s, g - 0.21 * s)]
    c.fill(polygon(nave_roof), look(roof))
    # tower and spire
    c.fill(box(tx - 0.075 * s, g - 0.42 * s, tx + 0.075 * s, g), look(_jitter(rng, wall, 0.03)))
    spire = [(tx, g - 0.62 * s), (tx + 0.095 * s, g - 0.42 * s), (tx - 0.095 * s, g - 0.42 * s)]
    c.fill(polygon(spire), look(roof))
    if look.snow:
        c.fill(polygon([(tx, g - 0.625 * s), (tx + 0.05 * s, g - 0.52 * s),
                        (tx - 0.05 * s, g - 0.52 * s)]), SNOW)
        c.fill(polygon([(x + 0.095 * s, g - 0.345 * s), (x + 0.2 * s, g - 0.275 * s),
                        (x - 0.01 * s, g - 0.275 * s)]), SNOW)
    cross_rgb = (0.95, 0.8, 0.35) if look.lit else (0.22, 0.18, 0.14)
    c.fill(union(rect(tx, g - 0.675 * s, 0.009 * s, 0.06 * s),
                  rect(tx, g - 0.69 * s, 0.035 * s, 0.009 * s)), cross_rgb)
    # door, belfry opening and nave windows
    c.fill(round_arch(tx, g, 0.035 * s, 0.11 * s), look((0.40, 0.24, 0.12)))
    c.fill(round_arch(tx, g - 0.3 * s, 0.028 * s, 0.07 * s), look((0.15, 0.13, 0.14)))
    glass = look.window((0.35, 0.50, 0.72))
    for wx in (x + 0.02 * s, x + 0.1 * s, x + 0.18 * s):
        c.fill(round_arch(wx, g - 0.06 * s, 0.022 * s, 0.09 * s), glass)


def draw_gothic_church(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A gothic church: symmetric facade, two towers with tall pointed spires, a rose window, a
    pointed portal and lancet windows."""
    stone = _jitter(rng, rng.choice([(0.62, 0.58, 0.53), (0.55, 0.53, 0.55), (0.70, 0.64, 0.55)]))
    spire_rgb = _jitter(rng, rng.choice([(0.30, 0.30, 0.35), (0.36, 0.30, 0.28)]))
    dark = look((0.18, 0.14, 0.12))
    # central nave facade with a steep gable
    c.fill(box(x - 0.13 * s, g - 0.3 * s, x + 0.13 * s, g), look(stone))
    c.fill(polygon([(x, g - 0.44 * s), (x + 0.14 * s, g - 0.3 * s), (x - 0.14 * s, g - 0.3 * s)]),
           look(stone))
    # towers with spires and a small finial cross
    for side in (-1, 1):
        tx = x + side * 0.2 * s
        c.fill(box(tx - 0.07 * s, g - 0.4 * s, tx + 0.07 * s, g), look(_jitter(rng, stone, 0.04)))
        c.fill(polygon([(tx, g - 0.68 * s), (tx + 0.08 * s, g - 0.4 * s),
                        (tx - 0.08 * s, g - 0.4 * s)]), look(spire_rgb))
        if look.snow:
            c.fill(polygon([(tx, g - 0.685 * s), (tx + 0.025 * s, g - 0.6 * s),
                            (tx - 0.025 * s, g - 0.6 * s)]), SNOW)
        glass = look.window((0.28, 0.36, 0.66))
        c.fill(pointed_arch(tx, g - 0.2 * s, 0.024 * s, 0.11 * s), glass)
        c.fill(pointed_arch(tx, g - 0.05 * s, 0.024 * s, 0.1 * s), glass)
    # rose window and portal
    rose = look.window((0.62, 0.25, 0.42))
    c.fill(circle(x, g - 0.25 * s, 0.058 * s), dark)
    c.fill(circle(x, g - 0.25 * s, 0.045 * s), rose)
    c.fill(circle(x, g - 0.25 * s, 0.015 * s), dark)
    c.fill(pointed_arch(x, g, 0.058 * s, 0.17 * s), dark)
    if look.snow:
        c.fill(polygon([(x, g - 0.445 * s), (x + 0.06 * s, g - 0.385 * s),
                        (x - 0.06 * s, g - 0.385 * s)]), SNOW)


def draw_tree(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A tree: round leafy crown on a trunk, or a pine; snow on top in winter."""
    trunk = look(_jitter(rng, (0.45, 0.28, 0.14)))
    leaf = _jitter(rng, rng.choice([(0.18, 0.55, 0.17), (0.25, 0.62, 0.20), (0.12, 0.45, 0.20)]))
    if rng.chance(0.5):
        c.fill(box(x - 0.035 * s, g - 0.25 * s, x + 0.035 * s, g), trunk)
        crown = union(circle(x, g - 0.42 * s, 0.14 * s), circle(x - 0.12 * s, g - 0.32 * s, 0.11 * s),
                      circle(x + 0.12 * s, g - 0.32 * s, 0.11 * s),
                      circle(x, g - 0.3 * s, 0.12 * s))
        c.fill(crown, look(leaf))
        c.fill(circle(x + 0.05 * s, g - 0.36 * s, 0.05 * s),
               look(tuple(min(v * 1.25, 1.0) for v in leaf)), 0.6)
        if look.snow:
            c.fill(union(ellipse(x, g - 0.545 * s, 0.09 * s, 0.03 * s),
                         ellipse(x - 0.13 * s, g - 0.42 * s, 0.06 * s, 0.022 * s),
                         ellipse(x + 0.13 * s, g - 0.42 * s, 0.06 * s, 0.022 * s)), SNOW)
    else:
        c.fill(box(x - 0.03 * s, g - 0.1 * s, x + 0.03 * s, g), trunk)
        for k, (top, bottom, half) in enumerate([(0.62, 0.36, 0.12), (0.5, 0.22, 0.16),
                                                  (0.38, 0.08, 0.2)]):
            tier = polygon([(x, g - top * s), (x + half * s, g - bottom * s),
                            (x - half * s, g - bottom * s)])
            c.fill(tier, look(_jitter(rng, leaf, 0.05)))
            if look.snow:
                h = (top - bottom) * 0.35
                c.fill(polygon([(x, g - (top + 0.005) * s),
                                (x + half * 0.35 * s + 0.01 * s, g - (top - h) * s),
                                (x - half * 0.35 * s - 0.01 * s, g - (top - h) * s)]), SNOW)


def draw_sun(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """The sun with rays high in the sky over gentle hills."""
    cy = rng.uniform(0.26, 0.34)
    hill = look(GROUND["day"][0]) if look.condition == "plain" else GROUND[look.condition][0]
    c.fill(ellipse(rng.uniform(0.1, 0.4), g + 0.03, 0.35, 0.08), _shade(hill, 0.92))
    c.fill(ellipse(rng.uniform(0.6, 0.9), g + 0.04, 0.4, 0.07), _shade(hill, 0.85))
    rays = star(x, cy, 0.22 * s, 0.15 * s, 12)
    c.fill(rays, (1.0, 0.72, 0.12))
    c.fill(circle(x, cy, 0.135 * s), (1.0, 0.88, 0.22))
    c.fill(circle(x - 0.03 * s, cy - 0.03 * s, 0.07 * s), (1.0, 0.95, 0.55), 0.5)


def draw_moon(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A crescent moon with a faint halo in the night sky."""
    cy = rng.uniform(0.26, 0.34)
    c.fill(circle(x, cy, 0.2 * s), (0.35, 0.38, 0.5), 0.18)
    crescent = subtract(circle(x, cy, 0.14 * s), circle(x + 0.07 * s, cy - 0.035 * s, 0.12 * s))
    c.fill(crescent, (0.98, 0.95, 0.74))


def draw_mountain(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """Two rocky peaks, the front one with a jagged snow cap."""
    rock = _jitter(rng, rng.choice([(0.50, 0.46, 0.43), (0.45, 0.42, 0.46), (0.55, 0.47, 0.40)]))
    side = rng.choice([-1, 1])
    bx = x + side * 0.24 * s
    c.fill(polygon([(bx - 0.3 * s, g), (bx, g - 0.36 * s), (bx + 0.3 * s, g)]), look(_shade(rock, 0.78)))
    top = g - 0.56 * s
    c.fill(polygon([(x - 0.42 * s, g), (x, top), (x + 0.42 * s, g)]), look(rock))
    # sunlit face on one side
    c.fill(polygon([(x, top), (x + 0.42 * s, g), (x + 0.12 * s, g)]), look(_shade(rock, 0.85)))
    depth = 0.3 if look.snow else 0.2           # how far down the snow reaches, in units of s
    k = depth / 0.56
    yb = top + depth * s
    hw = 0.42 * s * k
    cap = [polygon([(x, top - 0.005 * s), (x + hw, yb), (x - hw, yb)])]
    for i in range(4):
        x0 = x - hw + (2 * hw) * i / 4
        x1 = x - hw + (2 * hw) * (i + 1) / 4
        cap.append(polygon([(x0, yb - 0.001), (x1, yb - 0.001), ((x0 + x1) / 2, yb + 0.045 * s)]))
    c.fill(union(*cap), look(SNOW))


def draw_boat(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A sailboat on the water: hull, mast, mainsail and jib."""
    hull_rgb = _jitter(rng, rng.choice([(0.55, 0.26, 0.12), (0.78, 0.16, 0.12), (0.14, 0.24, 0.52),
                                        (0.92, 0.92, 0.90)]))
    wl = g + 0.16 * s                                  # water line of the boat
    deck = wl - 0.06 * s
    c.fill(polygon([(x - 0.24 * s, deck), (x + 0.26 * s, deck), (x + 0.17 * s, wl + 0.03 * s),
                    (x - 0.17 * s, wl + 0.03 * s)]), look(hull_rgb))
    c.fill(box(x - 0.24 * s, deck - 0.012 * s, x + 0.26 * s, deck + 0.008 * s), look((0.3, 0.2, 0.12)))
    mx = x + 0.01 * s
    top = deck - 0.48 * s
    c.fill(box(mx - 0.008 * s, top, mx + 0.008 * s, deck), look((0.35, 0.24, 0.16)))
    sail = (0.97, 0.96, 0.92)
    c.fill(polygon([(mx + 0.014 * s, top + 0.01 * s), (mx + 0.014 * s, deck - 0.04 * s),
                    (x + 0.22 * s, deck - 0.04 * s)]), look(sail))
    c.fill(polygon([(mx - 0.014 * s, top + 0.06 * s), (mx - 0.014 * s, deck - 0.04 * s),
                    (x - 0.18 * s, deck - 0.04 * s)]), look(_shade(sail, 0.9)))
    c.fill(polygon([(mx, top - 0.05 * s), (mx + 0.06 * s, top - 0.035 * s), (mx, top - 0.02 * s)]),
           look((0.85, 0.15, 0.12)))
    foam = look((0.85, 0.92, 1.0))
    for i in range(5):
        wx = rng.uniform(0.05, 0.95)
        wy = rng.uniform(g + 0.03, 0.97)
        if abs(wx - x) < 0.28 * s and wy < wl + 0.06 * s:
            continue
        c.fill(segment(wx - 0.05, wy, wx + 0.05, wy, 0.012), foam, 0.6)


def draw_car(c: Canvas, look: Look, rng: Rng, x: float, g: float, s: float) -> None:
    """A car seen from the side on a road: body, cabin with windows, wheels and lights."""
    paint = _jitter(rng, rng.choice([(0.82, 0.12, 0.10), (0.15, 0.30, 0.75), (0.95, 0.80, 0.15),
                                     (0.20, 0.55, 0.25), (0.90, 0.90, 0.92)]))
    c.fill(box(-0.01, g + 0.02, 1.01, g + 0.15), look((0.33, 0.33, 0.35)))
    for dx in (-0.3, 0.0, 0.3):
        c.fill(box(0.5 + dx - 0.05, g + 0.082, 0.5 + dx + 0.05, g + 0.09), look((0.9, 0.9, 0.85)), 0.8)
    wb = g + 0.115                                     # where the wheels touch the road
    body_top, body_bottom = wb - 0.16 * s, wb - 0.04 * s
    c.fill(polygon([(x - 0.14 * s, body_top + 0.01 * s), (x + 0.12 * s, body_top + 0.01 * s),
                    (x + 0.07 * s, wb - 0.27 * s), (x - 0.09 * s, wb - 0.27 * s)]), look(paint))
    c.fill(box(x - 0.25 * s, body_top, x + 0.25 * s, body_bottom, 0.035 * s), look(paint))
    glass = look((0.62, 0.82, 0.95))
    c.fill(polygon([(x - 0.115 * s, body_top + 0.005 * s), (x - 0.02 * s, body_top + 0.005 * s),
                    (x - 0.02 * s, wb - 0.255 * s), (x - 0.08 * s, wb - 0.255 * s)]), glass)
    c.fill(polygon([(x + 0.005 * s, body_top + 0.005 * s), (x + 0.095 * s, body_top + 0.005 * s),
                    (x + 0.06 * s, wb - 0.255 * s), (x + 0.005 * s, wb - 0.255 * s)]), glass)
    if look.snow:
        c.fill(box(x - 0.095 * s, wb - 0.285 * s, x + 0.075 * s, wb - 0.262 * s, 0.01 * s), SNOW)
    for wx in (x - 0.14 * s, x + 0.14 * s):
        c.fill(circle(wx, wb - 0.05 * s, 0.052 * s), (0.07, 0.07, 0.08))
        c.fill(circle(wx, wb - 0.05 * s, 0.024 * s), look((0.72, 0.72, 0.75)))
    light = (1.0, 0.95, 0.6) if look.lit else look((0.98, 0.9, 0.5))
    c.fill(rect(x + 0.235 * s, body_top + 0.035 * s, 0.016 * s, 0.014 * s, 0.006 * s), light)
    if look.lit:
        c.fill(polygon([(x + 0.25 * s, body_top + 0.03 * s), (x + 0.5 * s, body_top),
                        (x + 0.5 * s, body_top + 0.09 * s)]), (1.0, 0.95, 0.6), 0.25)
    c.fill(rect(x - 0.243 * s, body_top + 0.035 * s, 0.008 * s, 0.014 * s), look((0.8, 0.1, 0.1)))


def _shade(rgb: RGB, f: float) -> RGB:
    return (rgb[0] * f, rgb[1] * f, rgb[2] * f)


DRAWERS: dict[str, Callable[[Canvas, Look, Rng, float, float, float], None]] = {
    "church": draw_church,
    "gothic church": draw_gothic_church,
    "house": draw_house,
    "tree": draw_tree,
    "sun": draw_sun,
    "moon": draw_moon,
    "mountain": draw_mountain,
    "boat": draw_boat,
    "car": draw_car,
}

# Where the horizon sits for each object (boats float on water that starts higher up).
HORIZON_RANGE: dict[str, tuple[float, float]] = {
    "boat": (0.52, 0.58), "sun": (0.62, 0.7), "moon": (0.62, 0.7),
    "car": (0.62, 0.68), "mountain": (0.72, 0.78),
}
DEFAULT_HORIZON = (0.68, 0.76)
EXPOSURE_RANGE = (0.6, 1.1)       # per-scene lighting of the object's surfaces
TINT = 0.15                        # and its per-channel variation
# A relit training scene (LandscapeSpec.relight): a wider light, an ambient light, haze, and half
# the time the object's own lights on whatever the condition.
RELIGHT_EXPOSURE, RELIGHT_TINT, RELIGHT_AMBIENT, RELIGHT_HAZE = (0.4, 1.15), 0.3, 0.12, 0.5


def draw_landscape(c: Canvas, spec: LandscapeSpec) -> None:
    """Render a landscape scene onto a canvas."""
    valid = SCENE_CONDITIONS.get(spec.obj, ()) if spec.obj else CONDITIONS   # '': the landscape alone
    if spec.backdrop is None and spec.condition not in valid:
        raise InputError(f"no scene of {spec.obj!r} with condition {spec.condition!r}; valid: {valid}")
    rng = Rng(spec.key)
    level = rng.uniform(*EXPOSURE_RANGE)
    exposure = tuple(level * rng.uniform(1 - TINT, 1 + TINT) for _ in range(3))
    light: dict = {}
    if spec.relight:                 # its own stream, so the scene's details stay as they were
        lrng = Rng(spec.key, 1)
        level = lrng.uniform(*RELIGHT_EXPOSURE)
        exposure = tuple(level * lrng.uniform(1 - RELIGHT_TINT, 1 + RELIGHT_TINT) for _ in range(3))
        light = {"haze": lrng.uniform(0.0, RELIGHT_HAZE),
                 "ambient": tuple(lrng.uniform(0.0, RELIGHT_AMBIENT) for _ in range(3)),
                 "lit": spec.condition == "night" or lrng.chance(0.5)}   # lights on by day too
    if spec.backdrop is not None:                        # the object alone on a plain stage
        look = Look("plain", exposure, **light)
        c.linear_gradient(spec.backdrop[0], spec.backdrop[0], math.pi / 2, rows=(0.0, spec.horizon))
        c.linear_gradient(spec.backdrop[1], spec.backdrop[1], math.pi / 2, rows=(spec.horizon, 1.0))
    else:
        look = Look(spec.condition, exposure, **light)
        draw_sky(c, spec.condition, spec.horizon, rng, clouds=spec.obj not in ("sun", "moon"))
        draw_ground(c, spec.condition, spec.horizon, water=spec.obj == "boat")
    if spec.obj:                                         # '': the landscape alone
        DRAWERS[spec.obj](c, look, rng, spec.x, spec.horizon, spec.scale)
    if look.snow:
        scatter(c, rng, (0.0, 0.0, 1.0, 1.0), (10, 10), 0.45, (0.006, 0.011), (1.0, 1.0, 1.0), 0.9)

"""Anti-aliased rasterisation of signed-distance primitives with numpy.

Geometry lives in normalised coordinates: x and y run over [0, 1] across the image, y downwards,
so one description renders at any size. A primitive is a signed distance function (negative
inside) with a bounding box; the canvas evaluates it only inside that box and turns the distance
into coverage with a one-pixel ramp, which anti-aliases every edge."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .vocab import RGB

Array = np.ndarray
# An SDF takes x of shape (1, w) and y of shape (h, 1) and returns distances broadcastable to (h, w).
SDF = Callable[[Array, Array], Array]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True, slots=True)
class Prim:
    """A shape: its signed distance function and a box that contains it."""

    sdf: SDF
    box: Box


# ---- primitives ---------------------------------------------------------------------------------


def circle(cx: float, cy: float, r: float) -> Prim:
    """Disc of radius r."""
    def f(x: Array, y: Array) -> Array:
        return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r
    return Prim(f, (cx - r, cy - r, cx + r, cy + r))


def ellipse(cx: float, cy: float, a: float, b: float) -> Prim:
    """Axis-aligned ellipse with half-axes a (x) and b (y); distance is approximate."""
    m = min(a, b)

    def f(x: Array, y: Array) -> Array:
        return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0) * m
    return Prim(f, (cx - a, cy - b, cx + a, cy + b))


def rect(cx: float, cy: float, hw: float, hh: float, rounding: float = 0.0) -> Prim:
    """Axis-aligned rectangle of half-width hw and half-height hh, corners rounded by `rounding`."""
    rr = min(rounding, hw, hh)
    bw, bh = hw - rr, hh - rr

    def f(x: Array, y: Array) -> Array:
        dx = np.abs(x - cx) - bw
        dy = np.abs(y - cy) - bh
        ox = np.maximum(dx, 0.0)
        oy = np.maximum(dy, 0.0)
        return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(dx, dy), 0.0) - rr
    return Prim(f, (cx - hw, cy - hh, cx + hw, cy + hh))


def box(x0: float, y0: float, x1: float, y1: float, rounding: float = 0.0) -> Prim:
    """Rectangle given by its corners."""
    return rect((x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2, rounding)


def polygon(points: Sequence[tuple[float, float]]) -> Prim:
    """Convex polygon; the distance is the largest distance to an edge line (exact inside)."""
    pts = [(float(x), float(y)) for x, y in points]
    gx = sum(p[0] for p in pts) / len(pts)
    gy = sum(p[1] for p in pts) / len(pts)
    edges = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        nx, ny = y1 - y0, x0 - x1
        norm = math.hypot(nx, ny)
        if norm == 0:
            continue
        nx, ny = nx / norm, ny / norm
        if nx * ((x0 + x1) / 2 - gx) + ny * ((y0 + y1) / 2 - gy) < 0:
            nx, ny = -nx, -ny
        edges.append((nx, ny, nx * x0 + ny * y0))

    def f(x: Array, y: Array) -> Array:
        d = None
        for nx, ny, c in edges:
            e = (nx * x - c) + ny * y
            d = e if d is None else np.maximum(d, e)
        return d
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return Prim(f, (min(xs), min(ys), max(xs), max(ys)))


def regular_polygon(cx: float, cy: float, radius: float, sides: int, rotation: float = 0.0) -> Prim:
    """Regular polygon with the given circumradius; rotation 0 puts a vertex straight up."""
    pts = [(cx + radius * math.sin(rotation + 2 * math.pi * k / sides),
            cy - radius * math.cos(rotation + 2 * math.pi * k / sides)) for k in range(sides)]
    return polygon(pts)


def star(cx: float, cy: float, outer: float, inner: float, points: int = 5) -> Prim:
    """Star with `points` tips, one pointing up; tips at radius `outer`, notches at `inner`."""
    half = math.pi / points
    # Fold every point into the half-wedge between a tip (angle 0) and the next notch (angle half),
    # where the boundary is one segment from the tip A to the notch B.
    ax, ay = outer, 0.0
    bx, by = inner * math.cos(half), inner * math.sin(half)
    ex, ey = bx - ax, by - ay
    ee = ex * ex + ey * ey

    def f(x: Array, y: Array) -> Array:
        px, py = x - cx, y - cy
        rho = np.sqrt(px * px + py * py)
        phi = np.arctan2(px, -py)
        phi = np.abs(np.mod(phi + half, 2 * half) - half)
        qx, qy = rho * np.cos(phi) - ax, rho * np.sin(phi) - ay
        t = np.clip((qx * ex + qy * ey) / ee, 0.0, 1.0)
        dist = np.sqrt((qx - ex * t) ** 2 + (qy - ey * t) ** 2)
        return np.where(ex * qy - ey * qx > 0, -dist, dist)
    return Prim(f, (cx - outer, cy - outer, cx + outer, cy + outer))


def segment(x0: float, y0: float, x1: float, y1: float, width: float) -> Prim:
    """Thick line segment with round caps; `width` is the full thickness."""
    ex, ey = x1 - x0, y1 - y0
    ee = max(ex * ex + ey * ey, 1e-12)
    hw = width / 2

    def f(x: Array, y: Array) -> Array:
        qx, qy = x - x0, y - y0
        t = np.clip((qx * ex + qy * ey) / ee, 0.0, 1.0)
        return np.sqrt((qx - ex * t) ** 2 + (qy - ey * t) ** 2) - hw
    return Prim(f, (min(x0, x1) - hw, min(y0, y1) - hw, max(x0, x1) + hw, max(y0, y1) + hw))


def union(*prims: Prim) -> Prim:
    """Union of shapes."""
    def f(x: Array, y: Array) -> Array:
        d = prims[0].sdf(x, y)
        for p in prims[1:]:
            d = np.minimum(d, p.sdf(x, y))
        return d
    return Prim(f, (min(p.box[0] for p in prims), min(p.box[1] for p in prims),
                    max(p.box[2] for p in prims), max(p.box[3] for p in prims)))


def intersect(*prims: Prim) -> Prim:
    """Intersection of shapes."""
    def f(x: Array, y: Array) -> Array:
        d = prims[0].sdf(x, y)
        for p in prims[1:]:
            d = np.maximum(d, p.sdf(x, y))
        return d
    return Prim(f, (max(p.box[0] for p in prims), max(p.box[1] for p in prims),
                    min(p.box[2] for p in prims), min(p.box[3] for p in prims)))


def subtract(a: Prim, b: Prim) -> Prim:
    """Shape a with shape b cut out of it."""
    def f(x: Array, y: Array) -> Array:
        return np.maximum(a.sdf(x, y), -b.sdf(x, y))
    return Prim(f, a.box)


def round_arch(cx: float, bottom: float, hw: float, height: float) -> Prim:
    """Window or door with a semicircular top."""
    spring = bottom - max(height - hw, 0.0)
    return union(box(cx - hw, spring, cx + hw, bottom), circle(cx, spring, hw))


def pointed_arch(cx: float, bottom: float, hw: float, height: float) -> Prim:
    """Gothic (lancet) arch: two circular arcs meeting in a point."""
    rise = hw * math.sqrt(3.0)
    spring = bottom - max(height - rise, 0.0)
    arcs = intersect(circle(cx - hw, spring, 2 * hw), circle(cx + hw, spring, 2 * hw),
                     box(cx - hw, spring - rise, cx + hw, spring))
    return union(box(cx - hw, spring, cx + hw, bottom), arcs)


# ---- canvas -------------------------------------------------------------------------------------


class Canvas:
    """A float32 RGB image (H, W, 3) that primitives are painted onto."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.img = np.empty((size, size, 3), dtype=np.float32)
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.xs = c[None, :]
        self.ys = c[:, None]

    def _window(self, b: Box) -> tuple[int, int, int, int] | None:
        s = self.size
        j0 = max(int(math.floor(b[0] * s)) - 1, 0)
        j1 = min(int(math.ceil(b[2] * s)) + 1, s)
        i0 = max(int(math.floor(b[1] * s)) - 1, 0)
        i1 = min(int(math.ceil(b[3] * s)) + 1, s)
        if j0 >= j1 or i0 >= i1:
            return None
        return i0, i1, j0, j1

    def coverage(self, prim: Prim) -> tuple[Array, tuple[int, int, int, int]] | None:
        """Coverage in [0, 1] of a primitive inside its pixel window, and that window."""
        win = self._window(prim.box)
        if win is None:
            return None
        i0, i1, j0, j1 = win
        d = prim.sdf(self.xs[:, j0:j1], self.ys[i0:i1, :])
        a = 0.5 - d * self.size
        np.clip(a, 0.0, 1.0, out=a)
        return a, win

    def fill(self, prim: Prim, rgb: RGB, alpha: float = 1.0) -> None:
        """Paint a primitive in one colour, with opacity alpha."""
        cov = self.coverage(prim)
        if cov is None:
            return
        a, (i0, i1, j0, j1) = cov
        if alpha != 1.0:
            a = a * alpha
        region = self.img[i0:i1, j0:j1]
        colour = np.asarray(rgb, dtype=np.float32)
        region += (colour - region) * a[..., None]

    def fill_all(self, rgb: RGB) -> None:
        """Paint the whole canvas in one colour."""
        self.img[...] = np.asarray(rgb, dtype=np.float32)

    def linear_gradient(self, c0: RGB, c1: RGB, angle: float,
                        rows: tuple[float, float] = (0.0, 1.0)) -> None:
        """Blend from c0 to c1 along direction `angle` (radians, 0 = left to right) over the
        whole canvas, or only over the band of rows given in normalised coordinates."""
        s = self.size
        i0, i1 = int(round(rows[0] * s)), int(round(rows[1] * s))
        if i0 >= i1:
            return
        ux, uy = math.cos(angle), math.sin(angle)
        ys = self.ys[i0:i1]
        # Project onto the direction and normalise to [0, 1] over the band's corners.
        corners = [ux * x + uy * y for x in (0.0, 1.0) for y in rows]
        lo, hi = min(corners), max(corners)
        t = ((ux * self.xs - lo) + uy * ys) / max(hi - lo, 1e-6)
        a = np.asarray(c0, dtype=np.float32)
        b = np.asarray(c1, dtype=np.float32)
        self.img[i0:i1] = a + (b - a) * t[..., None]

    def stripes(self, c0: RGB, c1: RGB, angle: float, period: float) -> None:
        """Anti-aliased stripes of colours c0 and c1 across the whole canvas."""
        ux, uy = math.cos(angle), math.sin(angle)
        t = (ux * self.xs + uy * self.ys) / period
        d = (np.abs(t - np.floor(t) - 0.5) - 0.25) * period       # <0 inside the c1 stripe
        a = 0.5 - d * self.size
        np.clip(a, 0.0, 1.0, out=a)
        ca = np.asarray(c0, dtype=np.float32)
        cb = np.asarray(c1, dtype=np.float32)
        self.img[...] = ca + (cb - ca) * a[..., None]

    def dots(self, region: Box, centres: Array, radii: Array, rgb: RGB, alpha: float = 1.0) -> None:
        """Paint small discs, at most one per cell of a grid laid over `region`.

        centres: (gy, gx, 2) disc centres, each inside its own cell with room for the disc and a
        pixel of edge; radii: (gy, gx), with radius <= 0 for an empty cell. Each pixel only looks
        at the disc of its own cell, so the cost does not grow with the number of discs."""
        win = self._window(region)
        if win is None:
            return
        i0, i1, j0, j1 = win
        gy, gx = radii.shape
        x0, y0, x1, y1 = region
        xs, ys = self.xs[:, j0:j1], self.ys[i0:i1, :]
        ix = np.clip(((xs[0] - x0) / (x1 - x0) * gx).astype(np.int64), 0, gx - 1)
        iy = np.clip(((ys[:, 0] - y0) / (y1 - y0) * gy).astype(np.int64), 0, gy - 1)
        cx = centres[..., 0][iy[:, None], ix[None, :]]
        cy = centres[..., 1][iy[:, None], ix[None, :]]
        r = radii[iy[:, None], ix[None, :]]
        d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) - r
        d[r <= 0] = 1.0
        a = 0.5 - d * self.size
        np.clip(a, 0.0, 1.0, out=a)
        if alpha != 1.0:
            a *= alpha
        region_px = self.img[i0:i1, j0:j1]
        colour = np.asarray(rgb, dtype=np.float32)
        region_px += (colour - region_px) * a[..., None]

    def shade(self, rows: tuple[float, float], factor_top: float, factor_bottom: float) -> None:
        """Multiply a band of rows by a brightness ramp (for ground or water depth)."""
        s = self.size
        i0, i1 = int(round(rows[0] * s)), int(round(rows[1] * s))
        if i0 >= i1:
            return
        f = np.linspace(factor_top, factor_bottom, i1 - i0, dtype=np.float32)
        self.img[i0:i1] *= f[:, None, None]

    def as_uint8(self) -> Array:
        """The image as uint8 (H, W, 3)."""
        return to_uint8(self.img)


def to_uint8(img: Array) -> Array:
    """Float image in [0, 1] to uint8, rounding to nearest."""
    out = np.clip(img, 0.0, 1.0) * 255.0 + 0.5
    return out.astype(np.uint8)

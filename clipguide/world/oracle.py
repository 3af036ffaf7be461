"""Ground truth and image checks.

`ground_truth(spec)` gives a sample's attributes from its render parameters. `check(image,
prompt)` measures an arbitrary image (for instance a generator's output) and compares it with
what a world prompt asks for: foreground colour, position, size, count, relation, background and
scene condition. Shapes and scene objects are not recognised; they are left to learned models.

How an image is measured: the colours on the image border are taken as background; pixels far
from all of them are foreground. Each foreground pixel is explained as a blend of its background
and one palette colour (so anti-aliased edges do not vote for in-between colours) and labelled with
that colour. The dominant colour is the most common label among the most clearly foreground pixels;
position is the centroid of the foreground; size is the extent of its largest connected part;
count is the number of connected parts of the asked colour."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .attributes import ground_truth
from .parse import parse_caption
from .vocab import COLOURS, NEUTRAL_BACKGROUND, PALETTE, colour_distance, position_of, relation_of

__all__ = ["ground_truth", "check", "measure", "OracleReport", "to_array"]

FG_THRESHOLD = 0.12         # RGB distance from every background colour that makes a pixel foreground
MIN_FOREGROUND = 0.002      # fraction of the image below which nothing is there
MAX_SIDE = 128              # larger images are measured after area downsampling
SIZE_EDGES = (0.215, 0.36)  # extent thresholds small|medium|large (shapes span 2r)
_MAPS = ("foreground", "core", "unmixed", "nearest")
_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


@dataclass
class OracleReport:
    """Outcome of checking an image against a prompt: one bool per check, the measured values
    and the attributes that were asked for."""

    checks: dict[str, bool]
    measured: dict[str, Any]
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when there was something to check and every check passed."""
        return bool(self.checks) and all(self.checks.values())

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed, in the order they were made."""
        return [k for k, ok in self.checks.items() if not ok]

    @property
    def score(self) -> float:
        """Fraction of checks passed."""
        return sum(self.checks.values()) / len(self.checks) if self.checks else 0.0


def to_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as float32 (H, W, 3) in [0, 1]. Accepts float (3, H, W) or (1, 3, H, W) tensors
    in [0, 1], and uint8 or float (H, W, 3) arrays or tensors."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        a = t.float().numpy() if t.dtype != torch.uint8 else t.numpy()
    elif isinstance(image, np.ndarray):
        a = image
    else:
        raise InputError(f"expected a torch tensor or numpy array image, got {type(image).__name__}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = np.asarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InputError("image contains NaN or infinite values")
    if a.min() < -0.02 or a.max() > 1.02:
        raise InputError(f"float image values must be in [0, 1], got [{a.min():.3f}, {a.max():.3f}]")
    return np.clip(a, 0.0, 1.0)


def _downsample(a: np.ndarray) -> np.ndarray:
    h, w, _ = a.shape
    if max(h, w) <= MAX_SIDE:
        return a
    f = MAX_SIDE / max(h, w)
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    return t[0].permute(1, 2, 0).numpy()


def _border(a: np.ndarray) -> np.ndarray:
    h, w, _ = a.shape
    k = max(1, round(0.02 * min(h, w)))
    return np.concatenate([a[:k].reshape(-1, 3), a[-k:].reshape(-1, 3),
                           a[:, :k].reshape(-1, 3), a[:, -k:].reshape(-1, 3)])


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of a boolean mask: (labels with 0 for background and
    1..n for components, n)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int64), 0
    h, w = mask.shape
    m = torch.from_numpy(mask)[None, None].float()
    lab = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w) * m
    while True:
        nxt = F.max_pool2d(lab, 3, stride=1, padding=1) * m
        if torch.equal(nxt, lab):
            break
        lab = nxt
    flat = lab[0, 0].numpy().astype(np.int64)
    uniq, inv = np.unique(flat, return_inverse=True)
    labels = inv.reshape(h, w)
    if uniq[0] != 0:            # every pixel is foreground
        labels = labels + 1
    return labels, int((uniq != 0).sum())


def measure(image: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Measure an image: foreground fraction, dominant colour, centroid, position, extent, size,
    background, and per-pixel maps ('foreground', 'core', and palette indices 'nearest' and
    'unmixed') for further checks."""
    a = _downsample(to_array(image))
    h, w, _ = a.shape
    px = a.reshape(-1, 3)
    border = _border(a)
    bg_set = np.unique(np.round(border * 20) / 20, axis=0)
    if len(bg_set) > 64:
        bg_set = bg_set[np.linspace(0, len(bg_set) - 1, 64).astype(int)]
    d2 = (px * px).sum(1)[:, None] + (bg_set * bg_set).sum(1)[None] - 2.0 * px @ bg_set.T
    nearest = d2.argmin(1)
    d_bg = np.sqrt(np.maximum(d2[np.arange(len(px)), nearest], 0.0))
    fg = d_bg > FG_THRESHOLD

    # Explain each foreground pixel as its background blended with one palette colour.
    unmixed = np.full(len(px), -1, dtype=np.int64)
    p, b = px[fg], bg_set[nearest[fg]]                                   # (F, 3)
    diff = _PALETTE[None] - b[:, None]                                   # (F, 12, 3)
    alpha = ((p - b)[:, None] * diff).sum(-1) / np.maximum((diff * diff).sum(-1), 1e-3)
    alpha = np.clip(alpha, 0.0, 1.0)
    resid = np.sqrt((((p - b)[:, None] - alpha[..., None] * diff) ** 2).sum(-1))
    unmixed[fg] = (resid + 0.15 * (1.0 - alpha)).argmin(1)
    pal2 = (_PALETTE * _PALETTE).sum(1)
    nearest_pal = (pal2[None] - 2.0 * px @ _PALETTE.T).argmin(1)

    out: dict[str, Any] = {"size_px": (h, w), "foreground_fraction": float(fg.mean())}
    med = np.median(border, axis=0)
    spread = float((np.sqrt(((border - med) ** 2).sum(-1)) > 0.06).mean())
    out["background_spread"] = spread
    if spread > 0.15:
        out["background"] = "texture"
    else:
        names = {"neutral": NEUTRAL_BACKGROUND} | PALETTE
        out["background"] = min(names, key=lambda n: colour_distance(names[n], tuple(med)))
    fg2 = fg.reshape(h, w)
    out["foreground"] = fg2
    out["unmixed"] = unmixed.reshape(h, w)
    out["nearest"] = nearest_pal.reshape(h, w)
    if fg.mean() < MIN_FOREGROUND:
        out.update(colour=None, position=None, centroid=None, extent=None, size=None,
                   core=np.zeros_like(fg2))
        return out
    strong = d_bg[fg]
    # Colour is read from the most clearly foreground (interior) pixels, whose colour is pure.
    core = fg & (d_bg >= 0.75 * np.quantile(strong, 0.95))
    votes = np.bincount(nearest_pal[core], minlength=len(COLOURS))
    out["colour"] = COLOURS[int(votes.argmax())]
    out["colour_votes"] = {COLOURS[i]: int(v) for i, v in enumerate(votes) if v}
    out["core"] = core.reshape(h, w)
    ys, xs = np.nonzero(fg2)
    cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
    out["centroid"] = (float(cx), float(cy))
    out["position"] = position_of(cx, cy)
    comp, n = components(fg2)
    sizes = np.bincount(comp.ravel())[1:]
    big = comp == (int(sizes.argmax()) + 1)
    # Soft extent of the largest part: per column (row) its strongest coverage, summed, so that
    # anti-aliased edge pixels count by how much of them is covered.
    ys, xs = np.nonzero(big)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
    cov = np.clip(d_bg.reshape(h, w)[y0:y1, x0:x1] / np.quantile(strong, 0.95), 0.0, 1.0)
    cov[(fg2 & ~big)[y0:y1, x0:x1]] = 0.0
    extent = max(cov.max(0).sum() / w, cov.max(1).sum() / h)
    out["extent"] = float(extent)
    out["size"] = "small" if extent < SIZE_EDGES[0] else "medium" if extent < SIZE_EDGES[1] else "large"
    return out


def colour_mask(m: dict[str, Any], colour: str) -> np.ndarray:
    """Foreground pixels that are, or blend into their background from, a palette colour."""
    k = COLOURS.index(colour)
    return m["foreground"] & ((m["nearest"] == k) | (m["unmixed"] == k))


def _count(m: dict[str, Any], colour: str | None) -> int:
    mask = m["foreground"] if colour is None else colour_mask(m, colour)
    comp, n = components(mask)
    if n == 0:
        return 0
    sizes = np.bincount(comp.ravel())[1:]
    keep = sizes >= max(3, 0.2 * sizes.max())
    return int(keep.sum())


def _colour_centroid(m: dict[str, Any], colour: str) -> tuple[tuple[float, float] | None, int]:
    mask = colour_mask(m, colour)
    n = int(mask.sum())
    if n < max(4, 0.001 * mask.size):
        return None, n
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    return ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h), n


def _condition(a: np.ndarray) -> dict[str, Any]:
    h = a.shape[0]
    sky = a[: max(1, int(0.2 * h))]
    ground = a[h - max(1, int(0.12 * h)):]
    sky_lum = float(sky.mean())
    snow_frac = float((ground.min(-1) > 0.72).mean())
    if sky_lum < 0.25:
        cond = "night"
    elif snow_frac > 0.5:
        cond = "snow"
    else:
        cond = "day"
    return {"condition": cond, "sky_brightness": sky_lum, "snow_ground_fraction": snow_frac}


def check(image: torch.Tensor | np.ndarray, prompt: str | Mapping[str, Any]) -> OracleReport:
    """Check an image against a world caption or an attribute dict (as from `parse_caption` or
    `ground_truth`). Returns the checks that apply to the prompt, each True or False."""
    attrs = parse_caption(prompt) if isinstance(prompt, str) else dict(prompt)
    if attrs is None:
        return OracleReport({}, {"parsed": False}, {})
    kind = attrs.get("kind")
    if kind == "scene":
        a = _downsample(to_array(image))
        m = _condition(a)
        checks = {}
        if "condition" in attrs:
            checks["condition"] = m["condition"] == attrs["condition"]
        return OracleReport(checks, m, attrs)

    m = measure(image)
    checks: dict[str, bool] = {}
    measured = {k: v for k, v in m.items() if k not in _MAPS}
    present = m["colour"] is not None
    checks["foreground"] = present
    if "background" in attrs:
        want = attrs["background"]
        got = m["background"]
        checks["background"] = got == ("texture" if want in ("gradient", "stripes") else want)
    if kind == "relation":
        (ca, _), (cb, _) = attrs["objects"]
        pa, na = _colour_centroid(m, ca)
        pb, nb = _colour_centroid(m, cb)
        measured.update(first_centroid=pa, second_centroid=pb, first_pixels=na, second_pixels=nb)
        checks["colours"] = pa is not None and pb is not None
        rel = relation_of(pa, pb) if pa is not None and pb is not None else None
        measured["relation"] = rel
        if "relation" in attrs:
            checks["relation"] = rel == attrs["relation"]
        return OracleReport(checks, measured, attrs)
    if "colour" in attrs:
        checks["colour"] = present and m["colour"] == attrs["colour"]
    if "position" in attrs:
        checks["position"] = present and m["position"] == attrs["position"]
    if "size" in attrs and kind != "count":
        checks["size"] = present and m["size"] == attrs["size"]
    if "count" in attrs:
        n = _count(m, attrs.get("colour"))
        measured["count"] = n
        checks["count"] = n == attrs["count"]
    return OracleReport(checks, measured, attrs)

"""Turn a SceneSpec into pixels."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .raster import Canvas, to_uint8
from .scenes import draw_landscape
from .shapes import shape_prim
from .spec import BackgroundSpec, SceneSpec

MIN_SIZE, MAX_SIZE = 16, 1024
FORMATS = ("float", "uint8", "numpy")


def check_size(size: object) -> int:
    """Validate an image size (pixels per side)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InputError(f"image size must be an int, got {size!r}")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InputError(f"image size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return int(size)


def draw_background(c: Canvas, bg: BackgroundSpec) -> None:
    """Paint a shapes image's background."""
    if bg.kind in ("neutral", "plain"):
        c.fill_all(bg.rgb)
    elif bg.kind == "gradient":
        c.linear_gradient(bg.rgb, bg.rgb2, bg.angle)
    elif bg.kind == "stripes":
        c.stripes(bg.rgb, bg.rgb2, bg.angle, bg.period)
    else:
        raise InputError(f"unknown background kind {bg.kind!r}")


def render_array(spec: SceneSpec, size: int) -> np.ndarray:
    """Render to a float32 numpy array (H, W, 3) in [0, 1]."""
    c = Canvas(check_size(size))
    if spec.landscape is not None:
        draw_landscape(c, spec.landscape)
    else:
        if spec.background is None:
            raise InputError("a shapes scene needs a background")
        draw_background(c, spec.background)
    for sh in spec.shapes:
        c.fill(shape_prim(sh.shape, sh.cx, sh.cy, sh.r), sh.rgb)
    np.clip(c.img, 0.0, 1.0, out=c.img)
    return c.img


def render(spec: SceneSpec, size: int = 64, fmt: str = "float") -> torch.Tensor | np.ndarray:
    """Render a spec. fmt: 'float' -> torch float32 (3, H, W) in [0, 1]; 'uint8' -> torch uint8
    (H, W, 3); 'numpy' -> numpy uint8 (H, W, 3). The float image is the uint8 one divided by 255,
    so every format shows exactly the same pixels."""
    if fmt not in FORMATS:
        raise InputError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    img = to_uint8(render_array(spec, size))
    if fmt == "numpy":
        return img
    t = torch.from_numpy(img)
    if fmt == "uint8":
        return t
    return t.permute(2, 0, 1).float().div_(255.0)

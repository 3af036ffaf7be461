"""Ground-truth attributes of a sample, read off its render parameters.

Attribute dicts by kind:
  object:   kind, colour, shape, size, position, count (1), background
  count:    kind, colour, shape, size, count, background
  relation: kind, objects ((colour, shape), (colour, shape)), relation (of the first to the
            second), background
  scene:    kind, object, condition (no condition for an object on a plain backdrop)
`background` is a palette colour name, 'neutral', 'gradient' or 'stripes'."""
from __future__ import annotations

from typing import Any

from .spec import BackgroundSpec, SceneSpec
from .vocab import position_of, relation_of, size_of_radius


def background_name(bg: BackgroundSpec) -> str:
    """How a background is named in attributes and captions."""
    if bg.kind == "plain" and bg.colour is not None:
        return bg.colour
    return bg.kind


def ground_truth(spec: SceneSpec) -> dict[str, Any]:
    """Attributes of a spec, measured from its geometry (sizes from radii, positions and
    relations from centres)."""
    if spec.kind == "scene":
        assert spec.landscape is not None
        if spec.landscape.backdrop is not None:          # on a plain stage: no condition
            return {"kind": "scene", "object": spec.landscape.obj}
        if not spec.landscape.obj:                        # the landscape alone: no object
            return {"kind": "scene", "condition": spec.landscape.condition}
        return {"kind": "scene", "object": spec.landscape.obj, "condition": spec.landscape.condition}
    assert spec.background is not None and spec.shapes
    bg = background_name(spec.background)
    first = spec.shapes[0]
    if spec.kind == "relation":
        a, b = spec.shapes
        return {"kind": "relation", "objects": ((a.colour, a.shape), (b.colour, b.shape)),
                "relation": relation_of((a.cx, a.cy), (b.cx, b.cy)), "background": bg}
    out: dict[str, Any] = {"kind": spec.kind, "colour": first.colour, "shape": first.shape,
                           "size": size_of_radius(first.r)}
    if spec.kind == "object":
        out["position"] = position_of(first.cx, first.cy)
    out["count"] = len(spec.shapes)
    out["background"] = bg
    return out

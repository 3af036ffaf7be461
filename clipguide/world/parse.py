"""Recover attributes from a caption in the world's language.

`parse_caption("three small blue stars at the top")` returns
{'kind': 'count', 'colour': 'blue', 'shape': 'star', 'count': 3, 'size': 'small'} and so on;
keys are those of `attributes.ground_truth`, present only when the caption states them."""
from __future__ import annotations

import re
from typing import Any

from .vocab import (COLOUR_SYNONYMS, NUMBER_WORDS, POSITION_PHRASES, SCENE_NOUNS, SHAPE_SYNONYMS,
                    SIZE_WORDS, plural)


def _alternation(words: dict[str, str]) -> str:
    """Regex alternation of words, longest first so that 'plus signs' beats 'plus sign'."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOUR_WORDS = {w: c for c, ws in COLOUR_SYNONYMS.items() for w in ws}
_SHAPE_WORDS: dict[str, str] = {}
for _s, _ws in SHAPE_SYNONYMS.items():
    for _w in _ws:
        _SHAPE_WORDS[_w] = _s
        _SHAPE_WORDS[plural(_w)] = _s
_PLURAL_WORDS = {plural(w) for ws in SHAPE_SYNONYMS.values() for w in ws}
_SIZE_WORDS = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()} | {str(n): n for n in NUMBER_WORDS}

_OBJECT = re.compile(
    rf"(?:\b(?P<size>{_alternation(_SIZE_WORDS)})\s+)?\b(?P<colour>{_alternation(_COLOUR_WORDS)})"
    rf"\s+(?P<shape>{_alternation(_SHAPE_WORDS)})\b")
_BACKGROUND = re.compile(
    rf"\bon an? (?:(?P<colour>{_alternation(_COLOUR_WORDS)})|(?P<tex>plain|striped|gradient))"
    r" background\b")
_COUNT = re.compile(
    rf"\b(?:(?P<pair>a pair of)|(?P<single>a single)|(?P<num>{_alternation(_NUMBERS)}))\s+"
    rf"(?:(?:{_alternation(_SIZE_WORDS)})\s+)?(?:{_alternation(_COLOUR_WORDS)})\b")
_SCENE_WORDS = {"gothic church": "gothic church", "gothic cathedral": "gothic church",
                "cathedral": "gothic church", "church": "church", "chapel": "church",
                "house": "house", "cottage": "house", "tree": "tree", "sun": "sun", "moon": "moon",
                "mountain": "mountain", "sailing boat": "boat", "sailboat": "boat", "boat": "boat",
                "car": "car"}
assert set(_SCENE_WORDS.values()) == set(SCENE_NOUNS)
_SCENE = re.compile(rf"\b(?:{_alternation(_SCENE_WORDS)})\b")
_SNOW = re.compile(r"\b(?:snow|snowy|winter|wintry)\b")
_NIGHT = re.compile(r"\b(?:night|nighttime|starry)\b")
_DAY = re.compile(r"\b(?:day|daytime|daylight|sunny)\b")
_POSITION = [(p, re.compile(r"\b" + re.escape(ph) + r"\b(?! of\b)(?! and\b)"))
             for p, phs in POSITION_PHRASES.items() for ph in sorted(phs, key=len, reverse=True)]
_RELATIONS = [("left of", re.compile(r"\bleft of\b")), ("right of", re.compile(r"\bright of\b")),
              ("above", re.compile(r"\b(?:above|over)\b")),
              ("below", re.compile(r"\b(?:below|under|beneath|underneath)\b"))]
_SIDES = [("left of", r"on the left and"), ("right of", r"on the right and"),
          ("above", r"at the top and"), ("below", r"at the bottom and")]


def normalise(text: str) -> str:
    """Lower case, punctuation removed, single spaces."""
    text = re.sub(r"[^a-z0-9\- ]+", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def _scene(text: str) -> dict[str, Any] | None:
    m = _SCENE.search(text)
    if m is None:
        return None
    out: dict[str, Any] = {"kind": "scene", "object": _SCENE_WORDS[m.group(0)]}
    if _SNOW.search(text):
        out["condition"] = "snow"
    elif _NIGHT.search(text):
        out["condition"] = "night"
    elif _DAY.search(text):
        out["condition"] = "day"
    return out


def _relation(text: str, a: re.Match, b: re.Match) -> str | None:
    between = text[a.end():b.start()]
    for rel, phrase in _SIDES:
        if phrase in between:
            return rel
    for rel, pattern in _RELATIONS:
        if pattern.search(between):
            return rel
    return None


def parse_caption(text: str) -> dict[str, Any] | None:
    """Attributes stated by a world caption, or None if it names no shape or scene object."""
    t = normalise(text)
    scene = _scene(t)
    if scene is not None:
        return scene
    out: dict[str, Any] = {}
    bg = _BACKGROUND.search(t)
    if bg is not None:
        if bg.group("colour"):
            out["background"] = _COLOUR_WORDS[bg.group("colour")]
        else:
            out["background"] = {"plain": "neutral", "striped": "stripes",
                                 "gradient": "gradient"}[bg.group("tex")]
        t = (t[:bg.start()] + t[bg.end():]).strip()
    objects = list(_OBJECT.finditer(t))
    if len(objects) >= 2:
        a, b = objects[0], objects[1]
        rel = _relation(t, a, b)
        if rel is not None:
            return {"kind": "relation",
                    "objects": ((_COLOUR_WORDS[a.group("colour")], _SHAPE_WORDS[a.group("shape")]),
                                (_COLOUR_WORDS[b.group("colour")], _SHAPE_WORDS[b.group("shape")])),
                    "relation": rel} | out
    if not objects:
        shape = re.search(rf"\b(?:{_alternation(_SHAPE_WORDS)})\b", t)
        if shape is None:
            return None
        return {"kind": "object", "shape": _SHAPE_WORDS[shape.group(0)]} | out
    m = objects[0]
    res: dict[str, Any] = {"colour": _COLOUR_WORDS[m.group("colour")],
                           "shape": _SHAPE_WORDS[m.group("shape")]}
    if m.group("size"):
        res["size"] = _SIZE_WORDS[m.group("size")]
    count = _COUNT.search(t)
    plural_noun = m.group("shape") in _PLURAL_WORDS
    if count is not None:
        res["kind"] = "count"
        res["count"] = 2 if count.group("pair") else 1 if count.group("single") else \
            _NUMBERS[count.group("num")]
    else:
        res["kind"] = "count" if plural_noun else "object"
        if not plural_noun:
            res["count"] = 1
    for pos, pattern in _POSITION:
        if pattern.search(t[m.end():]):
            res["position"] = pos
            break
    return {"kind": res.pop("kind")} | res | out

"""Captions of samples: several templates and synonyms per kind, the canonical class caption and
a detailed caption (every attribute, for retrieval)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .rng import Rng
from .vocab import (COLOUR_SYNONYMS, CONDITION_PHRASES, CONDITION_SCENE_WORDS, INVERSE_RELATION,
                    NUMBER_WORDS, POSITION_PHRASES, PREFIXES, RELATION_PHRASES, SCENE_NOUNS,
                    SHAPE_SYNONYMS, SIZE_WORDS, count_phrase, plural, with_article)

Attrs = Mapping[str, Any]

# Template ids per kind (for tests and statistics); the texts are built in the functions below.
OBJECT_TEMPLATES = ("np", "prefix np", "np position", "np on background", "one np on background",
                    "there is np position", "bare", "prefix np position on background")
COUNT_TEMPLATES = ("number np", "prefix number np", "digit np", "there are number np",
                   "number np on background", "a group of number np", "exactly number np",
                   "a pair of np")
RELATION_TEMPLATES = ("a rel b", "prefix a rel b", "b inverse a", "a is rel b",
                      "a here and b there", "there is a rel b", "a rel b on background")
SCENE_TEMPLATES = ("np condition", "prefix np condition", "condition scene with np", "np",
                   "there is np condition", "a view of np condition")
# A scene object on a plain backdrop (no condition); ids follow SCENE_TEMPLATES'.
BACKDROP_TEMPLATES = ("np", "prefix np", "np on a plain background", "there is np")
# A landscape with no object; ids follow BACKDROP_TEMPLATES'.
EMPTY_TEMPLATES = ("condition scene", "empty condition", "prefix empty condition", "landscape condition")

SNOW_PHRASES_SUN = ("over the snow", "in winter", "on a snowy day", "over a snowy landscape")
CANONICAL_CONDITION = {"day": "during the day", "night": "at night", "snow": "in the snow"}
# For 'A on the left and B on the right': where A is, and where B is, for each relation.
SIDES = {"left of": ("on the left", "on the right"), "right of": ("on the right", "on the left"),
         "above": ("at the top", "at the bottom"), "below": ("at the bottom", "at the top")}


def background_phrase(name: str) -> str:
    """'a white background', 'a striped background', 'a plain background' (neutral)."""
    if name == "neutral":
        return "a plain background"
    if name == "stripes":
        return "a striped background"
    if name == "gradient":
        return "a gradient background"
    return f"a {name} background"


def _colour(rng: Rng, c: str) -> str:
    return rng.choice(COLOUR_SYNONYMS[c])


def _shape(rng: Rng, s: str) -> str:
    return rng.choice(SHAPE_SYNONYMS[s]) if rng.chance(0.25) else s


def _size(rng: Rng, size: str) -> str:
    return rng.choice(SIZE_WORDS[size])


# ---- canonical ----------------------------------------------------------------------------------

def scene_phrase(obj: str, condition: str) -> str:
    """Canonical scene class caption: 'a gothic church at night'."""
    cond = "in winter" if (obj, condition) == ("sun", "snow") else CANONICAL_CONDITION[condition]
    return f"{SCENE_NOUNS[obj][0]} {cond}"


def relation_phrase(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
    """Canonical relation caption: 'a red circle left of a blue square'."""
    return f"{with_article(' '.join(a))} {relation} {with_article(' '.join(b))}"


def canonical_caption(attrs: Attrs) -> str:
    """The class caption of a sample: 'a red circle', 'three blue stars', 'a red circle left of a
    blue square', 'a gothic church at night'."""
    kind = attrs["kind"]
    if kind == "object":
        return with_article(f"{attrs['colour']} {attrs['shape']}")
    if kind == "count":
        return count_phrase(attrs["count"], attrs["colour"], attrs["shape"])
    if kind == "relation":
        a, b = attrs["objects"]
        return relation_phrase(a, attrs["relation"], b)
    if kind == "scene":
        if "condition" not in attrs:                      # an object on a plain backdrop
            return SCENE_NOUNS[attrs["object"]][0]
        if "object" not in attrs:                         # the landscape alone
            return f"an empty landscape {CANONICAL_CONDITION[attrs['condition']]}"
        return scene_phrase(attrs["object"], attrs["condition"])
    raise ValueError(f"unknown kind {kind!r}")


def detailed_caption(attrs: Attrs) -> str:
    """A caption naming every attribute, in canonical words."""
    kind = attrs["kind"]
    if kind == "scene":
        return canonical_caption(attrs)
    bg = " on " + background_phrase(attrs["background"])
    if kind == "relation":
        return canonical_caption(attrs) + bg
    if kind == "count":
        noun = attrs["shape"] if attrs["count"] == 1 else plural(attrs["shape"])
        return f"{NUMBER_WORDS[attrs['count']]} {attrs['size']} {attrs['colour']} {noun}{bg}"
    pos = POSITION_PHRASES[attrs["position"]][0]
    return f"{with_article(attrs['size'])} {attrs['colour']} {attrs['shape']} {pos}{bg}"


def wordings(attrs: Attrs) -> tuple[str, ...]:
    """Every plain wording of a sample's class caption that the world's captions use (synonyms,
    number digits, relation phrases both ways round, condition phrases), the canonical caption
    first: the class's prompts for ensembling."""
    kind = attrs["kind"]
    out = [canonical_caption(attrs)]
    if kind in ("object", "count"):
        n = attrs.get("count", 1)
        for c in COLOUR_SYNONYMS[attrs["colour"]]:
            for s in SHAPE_SYNONYMS[attrs["shape"]]:
                if kind == "object":
                    out.append(with_article(f"{c} {s}"))
                else:
                    noun = s if n == 1 else plural(s)
                    out += [f"{NUMBER_WORDS[n]} {c} {noun}", f"{n} {c} {noun}", f"exactly {NUMBER_WORDS[n]} {c} {noun}"]
    elif kind == "relation":
        first, second = (with_article(" ".join(o)) for o in attrs["objects"])
        rel = attrs["relation"]
        out += [f"{first} {w} {second}" for w in RELATION_PHRASES[rel]]
        out += [f"{second} {w} {first}" for w in RELATION_PHRASES[INVERSE_RELATION[rel]]]
    elif kind == "scene" and "object" in attrs:
        nouns = SCENE_NOUNS[attrs["object"]]
        if "condition" not in attrs:                      # an object on a plain backdrop
            out += nouns
        else:
            obj, cond = attrs["object"], attrs["condition"]
            phrases = SNOW_PHRASES_SUN if (obj, cond) == ("sun", "snow") else CONDITION_PHRASES[cond]
            out += [f"{np_} {cp}" for np_ in nouns for cp in phrases]
            out += [f"{CONDITION_SCENE_WORDS[cond]} with {np_}" for np_ in nouns]
    elif kind == "scene":                                 # the landscape alone
        cond = attrs["condition"]
        out += [CONDITION_SCENE_WORDS[cond]] + [f"{w} {cp}" for w in ("an empty landscape", "a landscape")
                                                for cp in CONDITION_PHRASES[cond]]
    return tuple(dict.fromkeys(out))


# ---- varied -------------------------------------------------------------------------------------

def _object_caption(rng: Rng, a: Attrs) -> tuple[str, int]:
    t = rng.randint(0, len(OBJECT_TEMPLATES) - 1)
    colour, shape = _colour(rng, a["colour"]), _shape(rng, a["shape"])
    sized = rng.chance(0.4) if t not in (2, 5, 7) else rng.chance(0.7)
    adj = f"{_size(rng, a['size'])} {colour}" if sized else colour
    np_ = with_article(f"{adj} {shape}")
    pos = rng.choice(POSITION_PHRASES[a["position"]])
    bg = background_phrase(a["background"])
    text = [np_, f"{rng.choice(PREFIXES)} {np_}", f"{np_} {pos}", f"{np_} on {bg}",
            f"one {adj} {shape} on {bg}", f"there is {np_} {pos}", f"{colour} {shape}",
            f"{rng.choice(PREFIXES)} {np_} {pos} on {bg}"][t]
    return text, t


def _count_caption(rng: Rng, a: Attrs) -> tuple[str, int]:
    n = a["count"]
    choices = [0, 1, 2, 3, 4, 5, 6] + ([7, 7] if n == 2 else [])
    t = rng.choice(choices)
    colour, shape = _colour(rng, a["colour"]), _shape(rng, a["shape"])
    adj = f"{_size(rng, a['size'])} {colour}" if rng.chance(0.3) else colour
    noun = shape if n == 1 else plural(shape)
    word = NUMBER_WORDS[n]
    np_ = f"{word} {adj} {noun}"
    bg = background_phrase(a["background"])
    if t == 0:
        text = np_
    elif t == 1:
        text = f"{rng.choice(PREFIXES)} {np_}"
    elif t == 2:
        text = f"{n} {adj} {noun}"
    elif t == 3:
        text = f"there {'is' if n == 1 else 'are'} {np_}"
    elif t == 4:
        text = f"{np_} on {bg}"
    elif t == 5:
        text = f"a single {adj} {noun}" if n == 1 else f"a group of {np_}"
    elif t == 6:
        text = f"exactly {np_}"
    else:
        text = f"a pair of {adj} {noun}"
    return text, t


def _relation_caption(rng: Rng, a: Attrs) -> tuple[str, int]:
    t = rng.randint(0, len(RELATION_TEMPLATES) - 1)
    (ca, sa), (cb, sb) = a["objects"]
    rel = a["relation"]
    first = with_article(f"{_colour(rng, ca)} {_shape(rng, sa)}")
    second = with_article(f"{_colour(rng, cb)} {_shape(rng, sb)}")
    words = rng.choice(RELATION_PHRASES[rel])
    if t == 0:
        text = f"{first} {words} {second}"
    elif t == 1:
        text = f"{rng.choice(PREFIXES)} {first} {words} {second}"
    elif t == 2:
        text = f"{second} {rng.choice(RELATION_PHRASES[INVERSE_RELATION[rel]])} {first}"
    elif t == 3:
        text = f"{first} is {words} {second}"
    elif t == 4:
        here, there = SIDES[rel]
        text = f"{first} {here} and {second} {there}"
    elif t == 5:
        text = f"there is {first} {words} {second}"
    else:
        text = f"{first} {words} {second} on {background_phrase(a['background'])}"
    return text, t


def _scene_caption(rng: Rng, a: Attrs) -> tuple[str, int]:
    if "condition" not in a:                             # an object on a plain backdrop
        t = rng.randint(0, len(BACKDROP_TEMPLATES) - 1)
        np_ = rng.choice(SCENE_NOUNS[a["object"]])
        return [np_, f"{rng.choice(PREFIXES)} {np_}", f"{np_} on a plain background",
                f"there is {np_}"][t], len(SCENE_TEMPLATES) + t
    if "object" not in a:                                # the landscape alone
        t = rng.randint(0, len(EMPTY_TEMPLATES) - 1)
        cp = rng.choice(CONDITION_PHRASES[a["condition"]])
        return [CONDITION_SCENE_WORDS[a["condition"]], f"an empty landscape {cp}",
                f"{rng.choice(PREFIXES)} an empty landscape {cp}",
                f"a landscape {cp}"][t], len(SCENE_TEMPLATES) + len(BACKDROP_TEMPLATES) + t
    t = rng.randint(0, len(SCENE_TEMPLATES) - 1)
    obj, cond = a["object"], a["condition"]
    np_ = rng.choice(SCENE_NOUNS[obj])
    phrases = SNOW_PHRASES_SUN if (obj, cond) == ("sun", "snow") else CONDITION_PHRASES[cond]
    cp = rng.choice(phrases)
    text = [f"{np_} {cp}", f"{rng.choice(PREFIXES)} {np_} {cp}",
            f"{CONDITION_SCENE_WORDS[cond]} with {np_}", np_, f"there is {np_} {cp}",
            f"a view of {np_} {cp}"][t]
    return text, t


_BY_KIND = {"object": _object_caption, "count": _count_caption, "relation": _relation_caption,
            "scene": _scene_caption}


def caption(attrs: Attrs, rng: Rng) -> tuple[str, int]:
    """A randomly worded true caption of a sample and the id of its template."""
    return _BY_KIND[attrs["kind"]](rng, attrs)

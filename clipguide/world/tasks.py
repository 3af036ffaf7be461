"""Zero-shot evaluation tasks and retrieval pairs on held-out compositions.

Every task gives class names, one canonical prompt per class, prompt templates for ensembling,
and deterministic items. Each item carries its own candidate prompts and the index of the true
one, because for 'count' and 'relation' the candidates depend on the objects in the image:

    task = get_task("relation")
    for item in task.items(200, seed=0):
        texts = item.candidates        # ("a red circle left of a blue square", "... right of ...",
        ...                            #  "... above ...", "... below ..."); truth: item.label

colour_shape: a single object; candidates are colour-shape prompts ('a red star'): all 96, the
              held-out 20 or the 76 training ones (`candidates=`).
count:        one to four same objects; candidates 'one/two/three/four <colour> <shape(s)>'.
relation:     two objects; candidates '<first> left of/right of/above/below <second>'.
scene:        a landscape; candidates are scene prompts ('a gothic church at night')."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, InputError
from .captions import count_phrase, relation_phrase, scene_phrase, wordings
from .heldout import EVAL_COLOUR_SHAPE, EVAL_SCENES, TRAIN_COLOUR_SHAPE, TRAIN_SCENES
from .parse import parse_caption
from .rng import mix
from .sampling import ALL_COLOUR_SHAPE, SPLITS
from .vocab import COUNTS, NUMBER_WORDS, RELATIONS, SCENE_CLASSES, with_article
from .world import World

TASKS: tuple[str, ...] = ("colour_shape", "count", "relation", "scene")
TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "a picture of {}", "an image of {}",
                              "a drawing of {}")
CANDIDATE_SETS = ("all", "heldout", "train")
_KIND = {"colour_shape": "object", "count": "count", "relation": "relation", "scene": "scene"}


@dataclass(frozen=True)
class EvalItem:
    """One evaluation image with its candidate prompts; candidates[label] is the true one and
    label also indexes the task's classes."""

    image: torch.Tensor
    label: int
    candidates: tuple[str, ...]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class EvalTask:
    """A zero-shot task. `prompts` has one canonical prompt per class; for per-item tasks
    ('count', 'relation') they are patterns with {colour}/{shape}/{shapes} or {first}/{second}
    filled in per item, see `EvalItem.candidates`."""

    name: str
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    templates: tuple[str, ...]
    per_item: bool
    split: str
    candidate_set: str

    def candidates_for(self, attrs: dict[str, Any]) -> tuple[tuple[str, ...], int]:
        """Candidate prompts and true label for a sample's attributes."""
        if self.name == "count":
            c, s = attrs["colour"], attrs["shape"]
            return tuple(count_phrase(k, c, s) for k in COUNTS), COUNTS.index(attrs["count"])
        if self.name == "relation":
            a, b = attrs["objects"]
            return (tuple(relation_phrase(a, r, b) for r in RELATIONS),
                    RELATIONS.index(attrs["relation"]))
        key = " ".join((attrs["colour"], attrs["shape"])) if self.name == "colour_shape" \
            else " / ".join((attrs["object"], attrs["condition"]))
        try:
            return self.prompts, self.classes.index(key)
        except ValueError:
            raise InputError(f"{key!r} is not among the {self.candidate_set!r} candidates "
                             f"of task {self.name!r}") from None

    def world(self, seed: int = 0, size: int = 64) -> World:
        """The world the task's images come from."""
        return World(seed=mix(seed, TASKS.index(self.name), 7919) >> 2, size=size,
                     split=self.split, kinds={_KIND[self.name]: 1.0}, backdrops=0.0)

    def items(self, n: int, seed: int = 0, size: int = 64) -> list[EvalItem]:
        """n deterministic evaluation items."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"n must be an int >= 0, got {n!r}")
        w = self.world(seed, size)
        out = []
        for i in range(n):
            s = w.sample(i)
            cands, label = self.candidates_for(s.attrs)
            out.append(EvalItem(s.image, label, cands, s.attrs))
        return out

    def wordings(self, candidate: str) -> tuple[str, ...]:
        """The wordings of a candidate prompt that the world's captions use, the prompt first
        (`captions.wordings`); a prompt the caption parser does not read back stays alone."""
        attrs = parse_caption(candidate)
        found = wordings(attrs) if attrs is not None else ()
        return found if found and found[0] == candidate else (candidate,)


def _pick(name: str, candidates: str, all_: tuple, heldout: tuple, train: tuple) -> tuple:
    if candidates not in CANDIDATE_SETS:
        raise ConfigError(f"candidates must be one of {CANDIDATE_SETS}, got {candidates!r}")
    return {"all": all_, "heldout": heldout, "train": train}[candidates]


def get_task(name: str, split: str = "eval", candidates: str = "all") -> EvalTask:
    """A zero-shot task by name. split: which compositions the images show ('eval': held-out
    only). candidates: for 'colour_shape' and 'scene', whether all classes, only the held-out
    ones or only the training ones are candidates (they must include the split's classes)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; tasks are {TASKS}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "colour_shape":
        pairs = _pick(name, candidates, ALL_COLOUR_SHAPE, EVAL_COLOUR_SHAPE, TRAIN_COLOUR_SHAPE)
        need = {"all": ALL_COLOUR_SHAPE, "eval": EVAL_COLOUR_SHAPE, "train": TRAIN_COLOUR_SHAPE}[split]
        if not set(need) <= set(pairs):
            raise ConfigError(f"candidates {candidates!r} miss classes that split {split!r} shows")
        return EvalTask(name, tuple(f"{c} {s}" for c, s in pairs),
                        tuple(with_article(f"{c} {s}") for c, s in pairs), TEMPLATES, False,
                        split, candidates)
    if name == "scene":
        pairs = _pick(name, candidates, SCENE_CLASSES, EVAL_SCENES, TRAIN_SCENES)
        need = {"all": SCENE_CLASSES, "eval": EVAL_SCENES, "train": TRAIN_SCENES}[split]
        if not set(need) <= set(pairs):
            raise ConfigError(f"candidates {candidates!r} miss classes that split {split!r} shows")
        return EvalTask(name, tuple(f"{o} / {c}" for o, c in pairs),
                        tuple(scene_phrase(o, c) for o, c in pairs), TEMPLATES, False, split,
                        candidates)
    if candidates != "all":
        raise ConfigError(f"task {name!r} has per-item candidates; candidates must be 'all'")
    if name == "count":
        return EvalTask(name, tuple(NUMBER_WORDS[k] for k in COUNTS),
                        tuple(f"{NUMBER_WORDS[k]} {{colour}} {{shape}}" if k == 1 else
                              f"{NUMBER_WORDS[k]} {{colour}} {{shapes}}" for k in COUNTS),
                        TEMPLATES, True, split, candidates)
    return EvalTask(name, RELATIONS, tuple(f"{{first}} {r} {{second}}" for r in RELATIONS),
                    TEMPLATES, True, split, candidates)


def eval_items(name: str, n: int, seed: int = 0, size: int = 64, split: str = "eval",
               candidates: str = "all") -> list[EvalItem]:
    """Shortcut: `get_task(name, split, candidates).items(n, seed, size)`."""
    return get_task(name, split, candidates).items(n, seed, size)


def retrieval_pairs(n: int, seed: int = 0, size: int = 64,
                    split: str = "eval") -> list[tuple[torch.Tensor, str]]:
    """n (image, caption) pairs from the given split (held-out compositions by default), with
    pairwise distinct captions that name every attribute ('a small red star at the top on a
    plain background')."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"n must be an int >= 0, got {n!r}")
    w = World(seed=mix(seed, 104729) >> 2, size=size, split=split)
    seen: set[str] = set()
    out: list[tuple[torch.Tensor, str]] = []
    i = 0
    while len(out) < n:
        if i >= 50 * n + 1000:
            raise InputError(f"could not find {n} distinct captions in split {split!r}")
        attrs = w.attrs(i)
        text = attrs["detailed"]
        if text not in seen:
            seen.add(text)
            out.append((w.image(i, size), text))
        i += 1
    return out

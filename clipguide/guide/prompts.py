"""Prompts: text or image targets with weights (negative pushes away) and an optional stop floor.

Text form, as artists type it: ``"a gothic church:1 | blurry:-0.5 | sky:0.3:0.8"`` means
"a gothic church" with weight 1, "blurry" with weight -0.5, "sky" with weight 0.3 whose distance
stops counting once it is below 0.8. Colons inside the text are kept unless what follows is a number."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Prompt:
    """One target. Exactly one of `text` and `image` is set. `stop`: distances below it count as it
    (the prompt stops pulling once close enough); -inf never stops."""

    text: str | None = None
    weight: float = 1.0
    stop: float = -math.inf
    image: torch.Tensor | None = None

    def __post_init__(self):
        if (self.text is None) == (self.image is None):
            raise InputError("a Prompt needs exactly one of text= or image=")
        if self.text is not None and not self.text.strip():
            raise InputError("empty prompt text: write what the image should show, e.g. 'a gothic church'")
        if not math.isfinite(self.weight):
            raise InputError(f"prompt weight must be finite, got {self.weight}")

    @property
    def label(self) -> str:
        return self.text if self.text is not None else f"<image {tuple(self.image.shape)}>"


def _number(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_prompt(text: str) -> Prompt:
    """``"text"``, ``"text:weight"`` or ``"text:weight:stop"``."""
    parts = text.rsplit(":", 2)
    numbers = []
    while len(parts) > 1 and _number(parts[-1].strip()) is not None and len(numbers) < 2:
        numbers.insert(0, _number(parts.pop().strip()))
    body = ":".join(parts).strip()
    if len(numbers) == 2:
        weight, stop = numbers
    elif len(numbers) == 1:
        weight, stop = numbers[0], -math.inf
    else:
        weight, stop = 1.0, -math.inf
    return Prompt(text=body, weight=weight, stop=stop)


def parse_prompts(spec: str | Prompt | Iterable[str | Prompt | tuple]) -> list[Prompt]:
    """A '|'-separated string, a Prompt, or a list of strings / Prompts / (text, weight) tuples."""
    if isinstance(spec, Prompt):
        return [spec]
    if isinstance(spec, str):
        items: Sequence = [p for p in spec.split("|")]
    else:
        items = list(spec)
    out: list[Prompt] = []
    for item in items:
        if isinstance(item, Prompt):
            out.append(item)
        elif isinstance(item, str):
            if not item.strip():
                raise InputError(f"empty prompt in {spec!r}: remove the extra '|' or write a prompt")
            out.append(parse_prompt(item))
        elif isinstance(item, tuple) and 1 <= len(item) <= 3 and isinstance(item[0], str):
            out.append(Prompt(item[0], *[float(x) for x in item[1:]]))
        elif torch.is_tensor(item):
            out.append(Prompt(image=item))
        else:
            raise InputError(f"cannot read a prompt from {item!r}: use 'text', 'text:weight', (text, weight) "
                             "or Prompt(...)")
    if not out:
        raise InputError("no prompts given: pass at least one, e.g. 'a gothic church'")
    if sum(abs(p.weight) for p in out) == 0:
        raise InputError("all prompt weights are zero: give at least one prompt a non-zero weight")
    return out

"""A small deterministic random source keyed by integers.

Every sample draws from its own stream, keyed by (seed, index, stream), so any worker can produce
any sample. Only `random.Random.random()` is used, whose output for an integer seed is stable
across Python versions; choices and ranges are derived from it here."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")
_MASK = (1 << 64) - 1


def mix(*keys: int) -> int:
    """Hash integers into one 64-bit integer (splitmix64 steps)."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (k & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


class Rng:
    """Deterministic random numbers for one sample."""

    __slots__ = ("_r",)

    def __init__(self, *keys: int) -> None:
        self._r = random.Random(mix(*keys))

    def random(self) -> float:
        """Uniform float in [0, 1)."""
        return self._r.random()

    def uniform(self, lo: float, hi: float) -> float:
        """Uniform float in [lo, hi)."""
        return lo + (hi - lo) * self._r.random()

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (both included)."""
        return lo + min(int(self._r.random() * (hi - lo + 1)), hi - lo)

    def choice(self, seq: Sequence[T]) -> T:
        """A uniformly chosen element."""
        return seq[self.randint(0, len(seq) - 1)]

    def weighted(self, seq: Sequence[T], weights: Sequence[float]) -> T:
        """An element chosen with probability proportional to its weight."""
        total = sum(weights)
        x = self._r.random() * total
        for item, w in zip(seq, weights):
            x -= w
            if x < 0:
                return item
        return seq[-1]

    def chance(self, p: float) -> bool:
        """True with probability p."""
        return self._r.random() < p

    def shuffled(self, seq: Sequence[T]) -> list[T]:
        """A shuffled copy (Fisher-Yates)."""
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.randint(0, i)
            out[i], out[j] = out[j], out[i]
        return out

    def angle(self) -> float:
        """Uniform angle in [0, 2 pi)."""
        return self._r.random() * 2 * math.pi

    def key(self) -> int:
        """A fresh integer key for a sub-stream."""
        return int(self._r.random() * (1 << 53))

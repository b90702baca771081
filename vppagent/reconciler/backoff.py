"""Exponential retry delays, deterministic unless jitter is asked for.

Jitter is off by default so tests (and operators reading logs) can predict
exactly when a failed key will be tried again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``delay(n) = min(max, base * factor**(n-1))``, optionally jittered by ±jitter."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.max < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid backoff {self!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure (1-based)."""
        try:
            d = min(self.max, self.base * self.factor ** max(0, attempt - 1))
        except OverflowError:
            d = self.max
        if self.jitter and d:
            u = (rng or random).random()
            d = max(0.0, d * (1.0 + self.jitter * (2.0 * u - 1.0)))
        return d

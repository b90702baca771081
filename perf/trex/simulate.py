"""A simulated device under test: offered rate -> loss, for testing the search
without a traffic generator (and for ``runner.py --simulate``).

Like a real forwarder it has a capacity (the knee): below it nothing is lost,
above it the excess is dropped (optionally with a soft knee that starts
losing a little before).  Noise moves the capacity from trial to trial, and
"blips" add small losses in narrow rate bands below the knee (a timer, a
housekeeping burst): the loss curve is then not monotonic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from perf.trex.search import TrialResult


@dataclass
class SimulatedDut:
    capacity: float                      # rate (same unit as the search) where loss starts
    noise: float = 0.0                   # relative std-dev of the capacity per trial
    knee: float = 0.0                    # soft knee width (rate units) with rising loss before capacity
    blips: tuple[tuple[float, float, float], ...] = ()   # (from, to, loss ratio) bands
    pps_per_unit: float = 148_810.0      # 1% of 10GbE at 64 bytes
    seed: int = 1
    trials: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def loss_at(self, rate: float, capacity: float | None = None) -> float:
        cap = self.capacity if capacity is None else capacity
        loss = 0.0
        if rate > cap:
            loss = (rate - cap) / rate
        elif self.knee and rate > cap - self.knee:
            loss = 0.001 * (rate - (cap - self.knee)) / self.knee
        for lo, hi, extra in self.blips:
            if lo <= rate <= hi:
                loss = max(loss, extra)
        return min(loss, 1.0)

    def __call__(self, rate: float, duration: float) -> TrialResult:
        self.trials.append((rate, duration))
        cap = self.capacity * (1 + self._rng.gauss(0, self.noise)) if self.noise else self.capacity
        offered = max(1, int(rate * self.pps_per_unit * duration))
        received = offered - int(round(offered * self.loss_at(rate, cap)))
        return TrialResult(offered=offered, received=received)

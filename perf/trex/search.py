"""NDR and PDR by binary search (RFC 2544 throughput), independent of any traffic generator.

NDR (non-drop rate) is the highest offered rate with zero loss, PDR (partial
drop rate) the highest with loss at most ``loss_threshold`` (e.g. 0.5 %).
A trial offers a rate for ``trial_duration`` seconds and reports packets
offered and received; ``trial`` is any callable ``(rate, duration) ->
TrialResult`` (TRex through ``runner.py``, a simulated device in tests).

The search:

1. NDR: one trial at ``max_rate`` (a device that keeps up is done), one at
   ``min_rate`` (a device that drops even there has no NDR), then bisection
   of [highest pass, lowest fail] until the interval is at most
   ``resolution`` wide or ``max_iterations`` trials were spent.
2. The result is confirmed by a repeated trial (``confirm_duration``, by
   default the trial duration): real devices are noisy and not monotonic (a
   blip of loss at one rate, none just above).  A failed confirmation makes
   that rate the new upper bound and the search goes on, at most
   ``confirm_retries`` times.
3. PDR: the same, starting from NDR as the known-good lower bound (so
   NDR <= PDR always holds) and the lowest rate already seen failing the PDR
   criterion as the upper bound (trials are not wasted).

Rates are in whatever unit the trial understands (percent of line rate, pps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable


class SearchError(ValueError):
    """Invalid search parameters or an impossible trial result."""


@dataclass(frozen=True)
class TrialResult:
    offered: int          # packets the generator sent
    received: int         # packets that came back

    @property
    def loss_ratio(self) -> float:
        return (self.offered - self.received) / self.offered if self.offered else 1.0


Trial = Callable[[float, float], TrialResult]


@dataclass(frozen=True)
class SearchConfig:
    min_rate: float
    max_rate: float
    resolution: float                     # absolute, in rate units
    loss_threshold: float = 0.005         # PDR criterion (0.5 %)
    trial_duration: float = 10.0
    confirm_duration: float | None = None
    max_iterations: int = 30              # trials per bisection
    confirm_retries: int = 3

    def validate(self) -> None:
        def bad(field_name: str, why: str) -> SearchError:
            return SearchError(f"{field_name}: {why}")
        for name in ("min_rate", "max_rate", "resolution", "loss_threshold", "trial_duration"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or math.isinf(v):
                raise bad(name, f"expected a finite number, got {v!r}")
        if self.min_rate <= 0:
            raise bad("min_rate", f"must be positive, got {self.min_rate}")
        if self.max_rate <= self.min_rate:
            raise bad("max_rate", f"must be above min_rate ({self.min_rate}), got {self.max_rate}")
        if self.resolution <= 0:
            raise bad("resolution", f"must be positive, got {self.resolution}")
        if self.resolution >= self.max_rate - self.min_rate:
            raise bad("resolution", f"{self.resolution} does not split [{self.min_rate}, {self.max_rate}]")
        if not 0 <= self.loss_threshold < 1:
            raise bad("loss_threshold", f"must be in [0, 1), got {self.loss_threshold}")
        if self.trial_duration <= 0:
            raise bad("trial_duration", f"must be positive, got {self.trial_duration}")
        if self.confirm_duration is not None and self.confirm_duration <= 0:
            raise bad("confirm_duration", f"must be positive, got {self.confirm_duration}")
        if not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise bad("max_iterations", f"must be a positive integer, got {self.max_iterations!r}")
        if not isinstance(self.confirm_retries, int) or self.confirm_retries < 0:
            raise bad("confirm_retries", f"must be a non-negative integer, got {self.confirm_retries!r}")

    @property
    def bisections_needed(self) -> int:
        """Trials a clean bisection of the whole range needs."""
        return math.ceil(math.log2((self.max_rate - self.min_rate) / self.resolution))


@dataclass(frozen=True)
class Measurement:
    rate: float
    duration: float
    offered: int
    received: int
    loss_ratio: float
    purpose: str          # "ndr", "pdr", "ndr-confirm", ...


@dataclass
class Bound:
    """One searched quantity: ``rate`` passed its criterion (None: not even
    at min_rate); the true value lies in [lower, upper)."""

    rate: float | None
    lower: float | None
    upper: float | None
    converged: bool
    trials: int

    @property
    def width(self) -> float | None:
        return None if self.lower is None or self.upper is None else self.upper - self.lower


@dataclass
class SearchResult:
    ndr: Bound
    pdr: Bound
    config: SearchConfig
    measurements: list[Measurement] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ndr": asdict(self.ndr), "pdr": asdict(self.pdr), "config": asdict(self.config),
                "measurements": [asdict(m) for m in self.measurements]}


class _Search:
    def __init__(self, trial: Trial, cfg: SearchConfig) -> None:
        self.trial = trial
        self.cfg = cfg
        self.measurements: list[Measurement] = []

    def measure(self, rate: float, purpose: str, duration: float | None = None) -> Measurement:
        d = duration or self.cfg.trial_duration
        r = self.trial(rate, d)
        if not isinstance(r, TrialResult):
            raise SearchError(f"trial at {rate} returned {r!r}, not a TrialResult")
        if r.offered <= 0 or r.received < 0:
            raise SearchError(f"trial at {rate}: impossible counts offered={r.offered} received={r.received}")
        if r.received > r.offered:
            raise SearchError(f"trial at {rate}: received {r.received} > offered {r.offered} "
                              f"(duplicated or foreign packets: check the setup)")
        m = Measurement(rate, d, r.offered, r.received, r.loss_ratio, purpose)
        self.measurements.append(m)
        return m

    def bisect(self, threshold: float, name: str, lower: float | None, upper: float | None) -> Bound:
        """Highest rate with loss <= threshold; ``lower`` is known to pass,
        ``upper`` known to fail (either may be unknown)."""
        cfg = self.cfg
        trials = 0

        def passes(m: Measurement) -> bool:
            return m.loss_ratio <= threshold

        if upper is None:
            trials += 1
            if passes(self.measure(cfg.max_rate, name)):
                return self.confirm(threshold, name, cfg.max_rate, cfg.max_rate, None, trials)
            upper = cfg.max_rate
        if lower is None:
            trials += 1
            if not passes(self.measure(cfg.min_rate, name)):
                return Bound(None, None, cfg.min_rate, True, trials)
            lower = cfg.min_rate
        budget = cfg.max_iterations
        while upper - lower > cfg.resolution and budget > 0:
            mid = (lower + upper) / 2
            trials += 1
            budget -= 1
            if passes(self.measure(mid, name)):
                lower = mid
            else:
                upper = mid
        return self.confirm(threshold, name, lower, lower, upper, trials)

    def confirm(self, threshold: float, name: str, rate: float, lower: float, upper: float | None,
                trials: int) -> Bound:
        """Repeat the result; on failure search below it again."""
        cfg = self.cfg
        for attempt in range(cfg.confirm_retries + 1):
            trials += 1
            m = self.measure(rate, f"{name}-confirm", cfg.confirm_duration)
            if m.loss_ratio <= threshold:
                converged = upper is None or upper - lower <= cfg.resolution + 1e-12
                return Bound(rate, lower, upper, converged, trials)
            if attempt == cfg.confirm_retries:
                break
            if rate <= cfg.min_rate:
                break
            upper = rate                                # it failed here: a new upper bound
            lower = max((x.rate for x in self.measurements
                         if x.rate < rate and x.loss_ratio <= threshold), default=cfg.min_rate)
            budget = cfg.max_iterations
            while upper - lower > cfg.resolution and budget > 0:
                mid = (lower + upper) / 2
                trials += 1
                budget -= 1
                if self.measure(mid, name).loss_ratio <= threshold:
                    lower = mid
                else:
                    upper = mid
            rate = lower
        return Bound(None, None, rate, False, trials)


def find_ndr_pdr(trial: Trial, cfg: SearchConfig) -> SearchResult:
    """Run the NDR then the PDR search (see the module docstring)."""
    cfg.validate()
    s = _Search(trial, cfg)
    ndr = s.bisect(0.0, "ndr", None, None)
    failing = [m.rate for m in s.measurements if m.loss_ratio > cfg.loss_threshold
               and (ndr.rate is None or m.rate > ndr.rate)]
    pdr_upper = min(failing) if failing else None
    if ndr.rate is not None and ndr.rate >= cfg.max_rate:
        pdr = Bound(ndr.rate, ndr.lower, ndr.upper, True, 0)
    else:
        pdr = s.bisect(cfg.loss_threshold, "pdr", ndr.rate, pdr_upper)
    if ndr.rate is not None and (pdr.rate is None or pdr.rate < ndr.rate):
        # noise made the PDR search end below NDR; NDR's confirmed zero-loss trial meets the PDR criterion
        pdr = Bound(ndr.rate, ndr.lower, pdr.upper, False, pdr.trials)
    return SearchResult(ndr=ndr, pdr=pdr, config=cfg, measurements=s.measurements)


def format_table(result: SearchResult, unit: str = "%", pps_at_max: float | None = None) -> str:
    """A small text table of the result (and of every trial)."""
    def rate(v: float | None) -> str:
        if v is None:
            return "-"
        text = f"{v:.3f}{unit}"
        if pps_at_max:
            text += f" ({v / result.config.max_rate * pps_at_max / 1e6:.3f} Mpps)"
        return text
    lines = [f"{'':6} {'rate':>28} {'interval':>30} {'trials':>6} {'converged':>9}"]
    for name, b in (("NDR", result.ndr), ("PDR", result.pdr)):
        interval = f"[{rate(b.lower)}, {rate(b.upper)})"
        lines.append(f"{name:6} {rate(b.rate):>28} {interval:>30} {b.trials:>6} {str(b.converged):>9}")
    lines.append(f"PDR loss threshold {result.config.loss_threshold:.3%}, resolution {result.config.resolution}"
                 f"{unit}, trial {result.config.trial_duration}s")
    lines.append("")
    lines.append(f"{'#':>3} {'purpose':<12} {'rate':>12} {'offered':>14} {'received':>14} {'loss':>10}")
    for i, m in enumerate(result.measurements, 1):
        lines.append(f"{i:>3} {m.purpose:<12} {m.rate:>11.3f}{unit} {m.offered:>14} {m.received:>14} "
                     f"{m.loss_ratio:>10.4%}")
    return "\n".join(lines)

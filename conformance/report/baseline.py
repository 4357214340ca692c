"""Regressions against a baseline run: checks that newly fail or grew less accurate, and timings
compared through the two ratios' intervals (``paired.compare``): slower, not slower, or too noisy
to decide; only slower is a regression."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import paired
from .runfile import Benchmark, Run, by_key

__all__ = ["ACCURACY_FLOOR", "ACCURACY_FACTOR", "SLOWDOWN", "NOT_TIMED", "Regression", "TimingComparison",
           "regressions", "timing_comparisons", "ratio_text"]

# A check whose error stays under a tenth of its bound is not an accuracy regression however far
# it moved: the bound, not the last run, is the contract, and tiny errors move with the data.
ACCURACY_FLOOR = 0.1
# The regression rule's defaults: an error/bound grown by more than ACCURACY_FACTOR, a timing more
# than SLOWDOWN (a fraction) slower relative to torch (``regressions``).
ACCURACY_FACTOR = 2.0
SLOWDOWN = 0.25


@dataclass(frozen=True)
class Regression:
    """Something a baseline run did better: ``kind`` is newly failing, less accurate or slower."""

    kind: str
    id: str
    feature: str
    dtype: str
    before: str
    after: str


@dataclass(frozen=True)
class TimingComparison:
    """A benchmark of both runs and what their intervals say (``paired.compare``): ``verdict`` is
    ``paired.SLOWER``, ``paired.NOT_SLOWER`` or ``paired.UNDECIDED`` (too noisy to decide)."""

    before: Benchmark
    after: Benchmark
    verdict: str


def timing_comparisons(run: Run, baseline: Run, *, slowdown: float = SLOWDOWN) -> list:
    """Each benchmark timed in both runs, judged on the implementation's time over torch's in
    the same run (which does not depend on the machine's speed) with ``slowdown`` (a fraction)
    allowed."""
    if not slowdown >= 0:
        raise ValueError(f"slowdown={slowdown!r}: must be >= 0")
    before = baseline.timed_by_key()
    return [TimingComparison(old, new, paired.compare(new.interval, old.interval, slowdown))
            for key, new in run.timed_by_key().items() if (old := before.get(key)) is not None]


NOT_TIMED = "not timed (0 pairs)"   # a benchmark under --benchmark-disable: never a pass


def ratio_text(b: Benchmark) -> str:
    """``1.23x torch [1.20, 1.26]``: the ratio and its interval."""
    if b.ratio_to_torch is None:
        return NOT_TIMED
    if b.ratio_low is None or b.ratio_high is None:
        return f"{b.ratio_to_torch:.2f}x torch (no interval: {b.pairs} pairs)"
    return f"{b.ratio_to_torch:.2f}x torch [{b.ratio_low:.2f}, {b.ratio_high:.2f}]"


def regressions(run: Run, baseline: Run, *, accuracy_factor: float = ACCURACY_FACTOR,
                slowdown: float = SLOWDOWN) -> list:
    """Checks that newly fail (a declared failure, xfailed, was failing already), errors that
    grew by more than ``accuracy_factor`` (and exceed ``ACCURACY_FLOOR`` of their bound), timings
    that ``timing_comparisons`` finds slower than in ``baseline``, and benchmarks that ran without
    timing anything (``--benchmark-disable``) where the baseline timed them: a benchmark with no
    pairs never passes the gate.
    """
    if not accuracy_factor >= 1:
        raise ValueError(f"accuracy_factor={accuracy_factor!r}: must be >= 1")
    timings = timing_comparisons(run, baseline, slowdown=slowdown)
    found = []
    before = baseline.checks_by_key()
    for key, check in run.checks_by_key().items():
        old = before.get(key)
        if check.status == "failed" and (old is None or old.status not in ("failed", "xfailed")):
            found.append(Regression("newly failing", check.id, check.feature, check.dtype,
                                    old.status if old else "absent", "failed"))
        elif (old is not None and check.ratio is not None and old.ratio is not None and math.isfinite(check.ratio)
              and check.ratio > ACCURACY_FLOOR and check.ratio > accuracy_factor * old.ratio):
            found.append(Regression("less accurate", check.id, check.feature, check.dtype,
                                    f"error/bound {old.ratio:.3g}", f"error/bound {check.ratio:.3g}"))
    found += [Regression("slower", t.after.id, "benchmark", t.after.dtype, ratio_text(t.before), ratio_text(t.after))
              for t in timings if t.verdict == paired.SLOWER]
    timed_before = baseline.timed_by_key()
    found += [Regression("not timed", b.id, "benchmark", b.dtype, ratio_text(timed_before[key]), NOT_TIMED)
              for key, b in by_key(run.benchmarks, run.primary).items() if b.interval is None and key in timed_before]
    return found

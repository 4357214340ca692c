"""The implementation's time over torch's from paired rounds: its estimate, its 95 % interval,
when to stop timing, and whether one run is slower than another.

The two sides are timed in alternating rounds on the same inputs, so a disturbance of the
machine that lasts longer than a pair (another process, a clock change, a burst of page faults)
hits both alike and cancels in the pair's ratio ``impl_i / torch_i``. The estimate is the
median of the paired ratios: a round that one disturbance doubled moves it by one rank, where
it would have decided a quotient of two minima.

The interval is the distribution-free one for a median (the sign test inverted; Conover,
*Practical Nonparametric Statistics*, 3rd ed., section 3.4): with the ``n`` ratios sorted,
``[r_(k), r_(n+1-k)]`` for the largest ``k`` with ``P(B < k) <= 2.5 %``, ``B ~ Binomial(n, 1/2)``.
It covers the true median ratio with probability at least 95 % for any distribution of
independent pairs: no resampling, no seed, no normality, and bursts of noise that make the
times bimodal do not widen it as they widen a mean's. It exists from 6 pairs on.

Timing stops (``RoundPlan``) after the fewest pairs once the interval is precise enough or the
benchmark's share of the run's time (``TimeBudget``) is spent.

A gate reads two intervals (``compare``): a slowdown is a regression only when the new run's
lower end over the baseline's upper end exceeds the allowed slowdown; when neither that nor
the converse (new upper end over baseline lower end within it) holds, the runs were too noisy
to decide.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

__all__ = ["CONFIDENCE", "MAX_PAIRS", "SLOWER", "NOT_SLOWER", "UNDECIDED", "RatioInterval",
           "ratio_interval", "RoundPlan", "TimeBudget", "compare"]

CONFIDENCE = Fraction(95, 100)   # exact, so the ranks below are exact at any pair count
# A cap on the pairs of one group, for calls of microseconds; the time budget ends larger ones sooner.
MAX_PAIRS = 1000

SLOWER, NOT_SLOWER, UNDECIDED = "slower", "not slower", "too noisy to decide"


@dataclass(frozen=True)
class RatioInterval:
    """The median paired ratio over ``pairs`` pairs and its 95 % interval (``None`` ends below 6
    pairs: 5 ratios all on one side of the median have probability 1/16, more than 5 %)."""

    ratio: float
    low: Optional[float]
    high: Optional[float]
    pairs: int

    @property
    def half_width(self) -> float:
        """Half the interval's width as a fraction of the ratio (inf without an interval)."""
        if self.low is None or self.high is None:
            return math.inf
        return (self.high - self.low) / 2 / self.ratio


@functools.lru_cache(maxsize=None)
def _rank(n: int) -> int:
    """The largest ``k`` with ``P(Binomial(n, 1/2) < k) <= (1 - CONFIDENCE) / 2``; 0 when none.
    Exact arithmetic: ``sum_{j < k} C(n, j) <= 2.5 % of 2^n``."""
    limit = (1 - CONFIDENCE) / 2 * 2 ** n   # a Fraction
    k, below, term = 0, 0, 1   # term = C(n, k)
    while below + term <= limit:
        below += term
        term = term * (n - k) // (k + 1)
        k += 1
    return k


def ratio_interval(impl_times: Sequence[float], torch_times: Sequence[float]) -> RatioInterval:
    """The median of ``impl_times[i] / torch_times[i]`` over the complete pairs, with its interval.

    >>> ratio_interval([2.0, 2.2, 1.8, 2.0, 2.1, 1.9], [1.0] * 6)
    RatioInterval(ratio=2.0, low=1.8, high=2.2, pairs=6)
    """
    ratios = sorted(i / t for i, t in zip(impl_times, torch_times))
    if not ratios:
        raise ValueError("ratio_interval: no complete pair of rounds")
    k = _rank(len(ratios))
    low, high = (ratios[k - 1], ratios[-k]) if k else (None, None)
    return RatioInterval(statistics.median(ratios), low, high, len(ratios))


@dataclass(frozen=True)
class RoundPlan:
    """When a group stops timing: after at least ``min_pairs`` pairs, once the interval's half
    width is within ``precision`` of the ratio or ``budget`` seconds have passed."""

    min_pairs: int
    precision: float
    budget: float

    def __post_init__(self) -> None:
        if not (isinstance(self.min_pairs, int) and 1 <= self.min_pairs <= MAX_PAIRS):
            raise ValueError(f"min_pairs={self.min_pairs!r}: expected an integer from 1 to {MAX_PAIRS}")
        if not self.precision >= 0:
            raise ValueError(f"precision={self.precision!r}: expected a fraction >= 0")
        if not self.budget >= 0:
            raise ValueError(f"budget={self.budget!r}: expected seconds >= 0")

    def done(self, impl_times: Sequence[float], torch_times: Sequence[float], elapsed: float) -> bool:
        pairs = min(len(impl_times), len(torch_times))
        if pairs < self.min_pairs:
            return False
        return elapsed >= self.budget or ratio_interval(impl_times, torch_times).half_width <= self.precision


@dataclass
class TimeBudget:
    """The seconds a run's benchmarks may spend in timed rounds, shared out as each starts: an
    equal share of what is left, so a benchmark precise early leaves its time to the noisier
    ones after it, and the run stays within ``seconds`` (give or take a pair per benchmark)."""

    seconds: float
    spent: float = 0.0

    def __post_init__(self) -> None:
        if not self.seconds >= 0:
            raise ValueError(f"seconds={self.seconds!r}: expected seconds >= 0")

    def share(self, benchmarks_left: int) -> float:
        """The budget of the benchmark starting now, with ``benchmarks_left`` (itself included) to go."""
        return max(0.0, self.seconds - self.spent) / max(1, benchmarks_left)

    def spend(self, seconds: float) -> None:
        self.spent += seconds


def compare(new: RatioInterval, old: RatioInterval, slowdown: float) -> str:
    """``SLOWER`` when even the new interval's lower end over the old one's upper end exceeds
    ``1 + slowdown``; ``NOT_SLOWER`` when even the new upper end over the old lower end stays
    within it; otherwise (or without an interval) ``UNDECIDED``.

    >>> compare(RatioInterval(1.6, 1.5, 1.7, 20), RatioInterval(1.0, 0.95, 1.05, 20), 0.25)
    'slower'
    """
    if not slowdown >= 0:
        raise ValueError(f"slowdown={slowdown!r}: must be >= 0")
    if None in (new.low, new.high, old.low, old.high):
        return UNDECIDED
    if new.low > old.high * (1 + slowdown):
        return SLOWER
    if new.high <= old.low * (1 + slowdown):
        return NOT_SLOWER
    return UNDECIDED

"""The paired rounds of a benchmark beside torch: the implementation and torch timed alternately
on the same inputs, after the same warm-up (one untimed call each, whose peak memory is
recorded): torch first in even pairs, second in odd ones, so a disturbance of the machine longer
than a pair hits both sides alike and neither side always follows the other.

pytest-benchmark times the implementation's rounds (its table, JSON, autosave and
``--benchmark-compare`` see them); torch's rounds are timed in the same rounds' setup and
teardown with ``time.perf_counter``, pytest-benchmark's default timer. The ratio to torch is
the median of the paired ratios with its 95 % interval (``conformance.paired``); rounds go on
until the plan (``paired.RoundPlan``) says the pairs are enough.
"""
from __future__ import annotations

import statistics
import time

import pytest

from .. import memory, paired, records
from .machine import copy_bandwidth, synchronize

__all__ = ["steps", "linear_steps", "softmax_steps", "paired_rounds", "benchmarks_from", "time_beside_torch"]


def benchmarks_from(item: pytest.Item) -> int:
    """How many benchmarks the run has still to time, ``item``'s included."""
    items = item.session.items
    return sum(other.get_closest_marker("conformance_bench") is not None for other in items[items.index(item):])


def steps(loss_fn, x, t, device):
    """The timed function and its per-round setup, for each op; each ends by synchronising."""
    def forward():
        loss_fn(x, t)
        synchronize(device)

    def backward(loss):
        loss.backward()
        synchronize(device)

    def forward_backward():
        loss_fn(x, t).backward()
        synchronize(device)

    def fresh_loss():
        x.grad = None
        return (loss_fn(x, t),), {}

    def fresh_grad():
        x.grad = None

    return {"forward": (forward, None), "backward": (backward, fresh_loss),
            "forward+backward": (forward_backward, fresh_grad)}


def _arguments(setup):
    """What a round's setup returns, as pytest-benchmark's pedantic reads it: ``(args, kwargs)`` or nothing."""
    return (setup() or ((), {})) if setup else ((), {})


def _once(target, setup):
    """One untimed call shaped like a round, its setup (the forward, for a backward) run now so
    that only the call counts: the warm-up whose peak memory is recorded."""
    args, kwargs = _arguments(setup)
    return lambda: target(*args, **kwargs)


def _timed(target, setup) -> float:
    """One round timed as pytest-benchmark's pedantic times one: the setup untimed, then the call."""
    args, kwargs = _arguments(setup)
    start = time.perf_counter()
    target(*args, **kwargs)
    return time.perf_counter() - start


class _Enough(Exception):
    """Raised by a round's setup to end pytest-benchmark's pedantic loop, whose round count is
    fixed in advance, once the plan says the pairs are enough."""


def paired_rounds(benchmark, torch_step, impl_step, plan: paired.RoundPlan) -> tuple[list, list]:
    """The implementation's round times (timed by pytest-benchmark) and torch's, in pairs: torch
    before the implementation in even pairs (in the round's setup), after it in odd ones (in its
    teardown): T I I T T I ... Each check of the plan runs between complete pairs."""
    torch_times, impl_setup = [], impl_step[1]
    start = time.perf_counter()

    def impl_times() -> list:
        return benchmark.stats.stats.data if benchmark.stats is not None else []

    def setup():
        if plan.done(impl_times(), torch_times, time.perf_counter() - start):
            raise _Enough
        if len(torch_times) % 2 == 0:
            torch_times.append(_timed(*torch_step))
        return _arguments(impl_setup)

    def teardown(*args, **kwargs):
        if len(torch_times) < len(impl_times()):
            torch_times.append(_timed(*torch_step))

    try:
        benchmark.pedantic(impl_step[0], setup=setup, teardown=teardown, rounds=paired.MAX_PAIRS)
    except _Enough:
        benchmark.has_error = False   # pedantic marks any exception an error; this one is the planned end
    return list(impl_times()), torch_times


def _side(times: list, traffic: int, bandwidth: float, peak) -> dict:
    """One side's record: its median and best round, the rate of the median round, its extra memory."""
    median = statistics.median(times)
    return {"median": median, "min": min(times), "bytes_per_second": traffic / median,
            "roofline_percent": 100 * traffic / median / bandwidth, "peak_extra_bytes": peak}


def time_beside_torch(benchmark, node: pytest.Item, sides: dict, device: str, traffic: int, info: dict, *,
                      copy_bandwidths: dict, plan: paired.RoundPlan, bench_time: paired.TimeBudget) -> None:
    """Record each side's warm-up memory, time the pairs of ``sides`` (``{"torch": step, "impl":
    step}``, each a ``steps`` entry) under ``plan``, spend their time from ``bench_time``, and
    record what they measured in ``benchmark.extra_info`` and ``node``'s ``benchmark`` record;
    skip, once recorded, where pytest-benchmark timed nothing (``--benchmark-disable``)."""
    peaks = {side: getattr(memory.footprint(_once(*step), device), "peak", None) for side, step in sides.items()}
    if device not in copy_bandwidths:
        copy_bandwidths[device] = copy_bandwidth(device)
    start = time.perf_counter()
    impl_times, torch_times = paired_rounds(benchmark, sides["torch"], sides["impl"], plan)
    bench_time.spend(time.perf_counter() - start)
    info = dict(info, device=device, traffic_bytes=traffic, copy_bytes_per_second=copy_bandwidths[device],
                precision=plan.precision)
    if impl_times:   # none under --benchmark-disable
        interval = paired.ratio_interval(impl_times, torch_times)
        info.update(pairs=interval.pairs, ratio_to_torch=interval.ratio, ratio_low=interval.low,
                    ratio_high=interval.high,
                    **{side: _side(times, traffic, copy_bandwidths[device], peaks[side])
                       for side, times in (("impl", impl_times), ("torch", torch_times))})
    benchmark.extra_info.update(info)
    records.attach(node.user_properties, "benchmark", dict(info, group=benchmark.group))
    if not impl_times:   # recorded all the same: against a baseline that timed it, "not timed" is a regression
        pytest.skip("not timed: pytest-benchmark is disabled (--benchmark-disable); a benchmark that timed "
                    "nothing is no pass")


def linear_steps(call, inputs: tuple, device: str) -> dict:
    """``steps`` for a linear loss: ``call(hidden, weight, target, linear_bias=bias)``, the
    hidden states, weight and bias requiring grad."""
    hidden, weight, bias, target = inputs
    leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]

    def loss():
        return call(leaves[0], leaves[1], target, linear_bias=leaves[2])

    def forward():
        loss()
        synchronize(device)

    def forward_backward():
        loss().backward()
        synchronize(device)

    def fresh_grads():
        for leaf in leaves:
            leaf.grad = None

    return {"forward": (forward, None), "forward+backward": (forward_backward, fresh_grads)}


def softmax_steps(call, x, upstream, device: str) -> dict:
    """``steps`` for a softmax form: ``call(x, -1)``, and its backward with ``upstream``."""
    x = x.detach().requires_grad_()

    def forward():
        call(x, -1)
        synchronize(device)

    def forward_backward():
        call(x, -1).backward(upstream)
        synchronize(device)

    def fresh_grad():
        x.grad = None

    return {"forward": (forward, None), "forward+backward": (forward_backward, fresh_grad)}

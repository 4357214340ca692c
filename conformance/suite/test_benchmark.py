"""Speed beside torch's own loss: forward, backward and both, in float32 and bfloat16, at
language-model shapes. One test per pytest-benchmark group times the implementation and torch
in alternating rounds on the same inputs, after the same warm-up (one untimed call each, whose
peak memory is recorded): torch first in even pairs, second in odd ones, so a disturbance of
the machine longer than a pair hits both sides alike and neither side always follows the other.

pytest-benchmark times the implementation's rounds (its table, JSON, autosave and
``--benchmark-compare`` see them); torch's rounds are timed in the same rounds' setup and
teardown with ``time.perf_counter``, pytest-benchmark's default timer. The ratio to torch is
the median of the paired ratios with its 95 % interval (``conformance.paired``); rounds go on
until the interval is within ``--conformance-bench-precision`` of the ratio or the benchmark's
share of ``--conformance-bench-time`` (the run's, shared out as each starts) is spent.
``extra_info`` carries the ratio and its interval, and per side the median and best time, the
bytes per second against the copy bandwidth (a roofline percentage) and the extra memory one
call needs.

These run only when asked: ``--benchmark-only`` or ``--conformance-bench``, and never under
pytest-xdist, where pytest-benchmark times nothing (a usage error). Under ``--benchmark-disable``
each runs once untimed and is skipped: a benchmark without pairs is never a pass.
"""
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from conformance import bench, options, paired, records
from conformance.plugin import SESSION_KEY
from conformance.vocabulary import dtype_name

pytestmark = pytest.mark.conformance_bench


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    devices = metafunc.config.stash[SESSION_KEY].devices
    if "linear_shape" in metafunc.fixturenames:
        shapes = metafunc.config.getoption("conformance_bench_linear_shape") or \
            list(dict.fromkeys(shape for device in devices for shape in bench.linear_shapes_for(device)))
        metafunc.parametrize("linear_shape", shapes, ids=lambda s: "x".join(map(str, s)))
    if "shape" not in metafunc.fixturenames:
        return
    explicit = metafunc.config.getoption("conformance_bench_shape")
    shapes = explicit or list(dict.fromkeys(shape for device in devices for shape in bench.shapes_for(device)))
    metafunc.parametrize("shape", shapes, ids=lambda s: "%dx%d" % s)


@pytest.fixture(scope="module", autouse=True)
def _release_inputs():
    """Drop the last benchmark problems (tens of MB) once the benchmarks are done."""
    yield
    bench.inputs.cache_clear()
    bench.linear_inputs.cache_clear()


@pytest.fixture(scope="session")
def bench_time(request) -> paired.TimeBudget:
    """The run's time for timed rounds (``--conformance-bench-time``), shared out as each benchmark starts."""
    return paired.TimeBudget(request.config.getoption("conformance_bench_time"))


def _benchmarks_from(item: pytest.Item) -> int:
    """How many benchmarks the run has still to time, ``item``'s included."""
    items = item.session.items
    return sum(other.get_closest_marker("conformance_bench") is not None for other in items[items.index(item):])


@pytest.fixture(scope="session")
def copy_bandwidths() -> dict:
    """Per device, the copy bandwidth measured once in this run."""
    return {}


def _steps(loss_fn, x, t, device):
    """The timed function and its per-round setup, for each op; each ends by synchronising."""
    def forward():
        loss_fn(x, t)
        bench.synchronize(device)

    def backward(loss):
        loss.backward()
        bench.synchronize(device)

    def forward_backward():
        loss_fn(x, t).backward()
        bench.synchronize(device)

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


def _paired_rounds(benchmark, torch_step, impl_step, plan: paired.RoundPlan) -> tuple[list, list]:
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


def _side(times: list, traffic: int, copy_bandwidth: float, peak) -> dict:
    """One side's record: its median and best round, the rate of the median round, its extra memory."""
    median = statistics.median(times)
    return {"median": median, "min": min(times), "bytes_per_second": traffic / median,
            "roofline_percent": 100 * traffic / median / copy_bandwidth, "peak_extra_bytes": peak}


def _backward_marked(ops) -> list:
    return [pytest.param(op, marks=pytest.mark.feature("backward")) if "backward" in op else op for op in ops]


def _time_beside_torch(benchmark, request, steps: dict, device: str, traffic: int, info: dict,
                       copy_bandwidths, bench_time) -> None:
    """Record each side's warm-up memory, time the pairs, and record what they measured."""
    peaks = {side: bench.peak_extra_memory(_once(*step), device) for side, step in steps.items()}
    if device not in copy_bandwidths:
        copy_bandwidths[device] = bench.copy_bandwidth(device)
    config = request.config
    plan = options.round_plan(config, budget=bench_time.share(_benchmarks_from(request.node)))
    start = time.perf_counter()
    impl_times, torch_times = _paired_rounds(benchmark, steps["torch"], steps["impl"], plan)
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
    records.attach(request.node.user_properties, "benchmark", dict(info, group=benchmark.group))
    if not impl_times:   # recorded all the same: against a baseline that timed it, "not timed" is a regression
        pytest.skip("not timed: pytest-benchmark is disabled (--benchmark-disable); a benchmark that timed "
                    "nothing is no pass")


@pytest.mark.parametrize("op", _backward_marked(bench.OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_speed_beside_torch(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths, bench_time):
    if not request.config.getoption("conformance_bench_shape") and shape not in bench.shapes_for(device):
        pytest.skip(f"{shape[0]}x{shape[1]} is not a {device} benchmark shape")
    n, c = shape
    benchmark.group = f"{op} {dtype_name(dtype)} {n}x{c} {device}"
    logits, target = bench.inputs(n, c, dtype, device, seed)
    problems = {"torch": (F.cross_entropy, logits, target), "impl": (impl.call, *impl.feed(logits, target))}
    steps = {}
    for side, (loss_fn, x, t) in problems.items():
        steps[side] = _steps(loss_fn, x.detach().requires_grad_(), t, device)[op]
    info = {"implementation": impl.spec, "op": op, "dtype": dtype_name(dtype), "shape": f"{n}x{c}"}
    _time_beside_torch(benchmark, request, steps, device, bench.traffic_bytes(op, n, c, dtype), info,
                       copy_bandwidths, bench_time)


def _linear_steps(call, inputs: tuple, device: str) -> dict:
    """``_steps`` for a linear loss: ``call(hidden, weight, target, linear_bias=bias)``, the
    hidden states, weight and bias requiring grad."""
    hidden, weight, bias, target = inputs
    leaves = [t.detach().requires_grad_() for t in (hidden, weight, bias)]

    def loss():
        return call(leaves[0], leaves[1], target, linear_bias=leaves[2])

    def forward():
        loss()
        bench.synchronize(device)

    def forward_backward():
        loss().backward()
        bench.synchronize(device)

    def fresh_grads():
        for leaf in leaves:
            leaf.grad = None

    return {"forward": (forward, None), "forward+backward": (forward_backward, fresh_grads)}


@pytest.mark.form("linear")
@pytest.mark.parametrize("op", _backward_marked(bench.LINEAR_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_linear_speed_beside_torch(benchmark, request, impl, device, linear_shape, dtype, op, seed,
                                   copy_bandwidths, bench_time):
    """A linear loss beside torch's composition (``linear_cross_entropy``'s reference path), which
    materialises the N x V logits: the point of a fused linear loss is the memory it saves, so
    the logits' bytes are recorded beside each side's extra memory."""
    if not request.config.getoption("conformance_bench_linear_shape") and linear_shape not in bench.linear_shapes_for(device):
        pytest.skip(f"{'x'.join(map(str, linear_shape))} is not a {device} linear benchmark shape")
    n, h, v = linear_shape
    benchmark.group = f"{impl.name} {op} {dtype_name(dtype)} {n}x{h}x{v} {device}"
    inputs = bench.linear_inputs(n, h, v, dtype, device, seed)
    steps = {"torch": _linear_steps(F.linear_cross_entropy, inputs, device)[op],
             "impl": _linear_steps(impl.call, inputs, device)[op]}
    info = {"implementation": impl.spec, "op": f"{impl.name} {op}", "dtype": dtype_name(dtype), "shape": f"{n}x{h}x{v}",
            "logits_bytes": n * v * dtype.itemsize}
    _time_beside_torch(benchmark, request, steps, device, bench.linear_traffic_bytes(op, n, h, v, dtype), info,
                       copy_bandwidths, bench_time)

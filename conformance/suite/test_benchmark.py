"""Speed beside torch's own loss: forward, backward and both, in float32 and bfloat16, at
language-model shapes, a linear loss beside torch's composition, and a softmax form (forward, and
forward and backward) beside torch's on the same logits. One test per
pytest-benchmark group times the implementation and torch in alternating rounds on the same
inputs (``conformance.bench.rounds``); the ratio to torch is the median of the paired ratios with
its 95 % interval, and rounds go on until the interval is within ``--conformance-bench-precision``
of the ratio or the benchmark's share of ``--conformance-bench-time`` (the run's, shared out as
each starts) is spent. ``extra_info`` carries the ratio and its interval, and per side the median
and best time, the bytes per second against the copy bandwidth (a roofline percentage) and the
extra memory one call needs.

These run only when asked: ``--benchmark-only`` or ``--conformance-bench``, and never under
pytest-xdist, where pytest-benchmark times nothing (a usage error). Under ``--benchmark-disable``
each runs once untimed and is skipped: a benchmark without pairs is never a pass.
"""
import pytest
import torch
import torch.nn.functional as F

from conformance import bench, options, paired
from conformance.bench import rounds
from conformance.session import SESSION_KEY
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


@pytest.fixture(scope="session")
def copy_bandwidths() -> dict:
    """Per device, the copy bandwidth measured once in this run."""
    return {}


def _plan(request, bench_time: paired.TimeBudget) -> paired.RoundPlan:
    """When this benchmark stops timing: the options' plan with its share of the run's time."""
    return options.round_plan(request.config, budget=bench_time.share(rounds.benchmarks_from(request.node)))


BENCH_DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)


def _skip_unless_benchmark_shape(request, shape: tuple, device: str) -> None:
    """A default shape of another device (the run's shapes are every device's) is not timed on this one."""
    if not request.config.getoption("conformance_bench_shape") and shape not in bench.shapes_for(device):
        pytest.skip(f"{shape[0]}x{shape[1]} is not a {device} benchmark shape")


def _backward_marked(ops) -> list:
    return [pytest.param(op, marks=pytest.mark.feature("backward")) if "backward" in op else op for op in ops]


@pytest.mark.parametrize("op", _backward_marked(bench.OPS))
@BENCH_DTYPES
def test_speed_beside_torch(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths, bench_time):
    _skip_unless_benchmark_shape(request, shape, device)
    n, c = shape
    benchmark.group = f"{op} {dtype_name(dtype)} {n}x{c} {device}"
    logits, target = bench.inputs(n, c, dtype, device, seed)
    problems = {"torch": (F.cross_entropy, logits, target), "impl": (impl.call, *impl.feed(logits, target))}
    sides = {side: rounds.steps(loss_fn, x.detach().requires_grad_(), t, device)[op]
             for side, (loss_fn, x, t) in problems.items()}
    info = {"implementation": impl.spec, "op": op, "dtype": dtype_name(dtype), "shape": f"{n}x{c}"}
    rounds.time_beside_torch(benchmark, request.node, sides, device, bench.traffic_bytes(op, n, c, dtype), info,
                             copy_bandwidths=copy_bandwidths, plan=_plan(request, bench_time), bench_time=bench_time)


@pytest.mark.form("linear")
@pytest.mark.parametrize("op", _backward_marked(bench.LINEAR_OPS))
@BENCH_DTYPES
def test_linear_speed_beside_torch(benchmark, request, impl, device, linear_shape, dtype, op, seed,
                                   copy_bandwidths, bench_time):
    """A linear loss beside torch's composition (``linear_cross_entropy``'s reference path), which
    materialises the N x V logits: the point of a fused linear loss is the memory it saves, so
    the logits' bytes are recorded beside each side's extra memory."""
    if (not request.config.getoption("conformance_bench_linear_shape")
            and linear_shape not in bench.linear_shapes_for(device)):
        pytest.skip(f"{'x'.join(map(str, linear_shape))} is not a {device} linear benchmark shape")
    n, h, v = linear_shape
    benchmark.group = f"{impl.name} {op} {dtype_name(dtype)} {n}x{h}x{v} {device}"
    inputs = bench.linear_inputs(n, h, v, dtype, device, seed)
    sides = {"torch": rounds.linear_steps(F.linear_cross_entropy, inputs, device)[op],
             "impl": rounds.linear_steps(impl.call, inputs, device)[op]}
    info = {"implementation": impl.spec, "op": f"{impl.name} {op}", "dtype": dtype_name(dtype), "shape": f"{n}x{h}x{v}",
            "logits_bytes": n * v * dtype.itemsize}
    rounds.time_beside_torch(benchmark, request.node, sides, device, bench.linear_traffic_bytes(op, n, h, v, dtype),
                             info, copy_bandwidths=copy_bandwidths, plan=_plan(request, bench_time),
                             bench_time=bench_time)


def _softmax_speed(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths, bench_time,
                   torch_fn) -> None:
    """A softmax form along the classes of the loss benchmarks' logits, beside torch's own."""
    _skip_unless_benchmark_shape(request, shape, device)
    n, c = shape
    benchmark.group = f"{impl.form} {op} {dtype_name(dtype)} {n}x{c} {device}"
    x, _ = bench.inputs(n, c, dtype, device, seed)
    upstream = torch.randn(n, c, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    sides = {side: rounds.softmax_steps(fn, x, upstream, device)[op]
             for side, fn in (("torch", torch_fn), ("impl", impl.call))}
    info = {"implementation": impl.spec, "op": f"{impl.form} {op}", "dtype": dtype_name(dtype), "shape": f"{n}x{c}"}
    rounds.time_beside_torch(benchmark, request.node, sides, device, bench.softmax_traffic_bytes(op, n, c, dtype),
                             info, copy_bandwidths=copy_bandwidths, plan=_plan(request, bench_time),
                             bench_time=bench_time)


SOFTMAX_OPS = pytest.mark.parametrize("op", _backward_marked(bench.SOFTMAX_OPS))


@pytest.mark.form("softmax")
@SOFTMAX_OPS
@BENCH_DTYPES
def test_softmax_speed_beside_torch(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths,
                                    bench_time):
    _softmax_speed(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths, bench_time, F.softmax)


@pytest.mark.form("log_softmax")
@SOFTMAX_OPS
@BENCH_DTYPES
def test_log_softmax_speed_beside_torch(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths,
                                        bench_time):
    _softmax_speed(benchmark, request, impl, device, shape, dtype, op, seed, copy_bandwidths, bench_time,
                   F.log_softmax)

"""Speed beside torch's own loss: forward, backward and both, in float32 and bfloat16, at
language-model shapes. Each pytest-benchmark group holds torch's time and the implementation's,
measured in the same run; ``extra_info`` carries the ratio to torch, the bytes per second
against the copy bandwidth (a roofline percentage) and the extra memory one call needs. Ratios and
rates use each side's fastest round, the one the machine disturbed least: with a few rounds of
large calls, one page-fault storm moves a median by a factor of two.

These run only when asked: ``--benchmark-only`` or ``--conformance-bench``.
"""
import pytest
import torch
import torch.nn.functional as F

from conformance import bench
from conformance.cases import dtype_name

pytestmark = pytest.mark.conformance_bench

TORCH_SPEC = "torch.nn.functional:cross_entropy"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = metafunc.config.getoption("conformance_bench_shape")
    shapes = explicit or bench.shapes_for("cuda" if torch.cuda.is_available() else "cpu")
    metafunc.parametrize("shape", shapes, ids=lambda s: "%dx%d" % s)


@pytest.fixture(scope="module", autouse=True)
def _release_inputs():
    """Drop the last benchmark problem (hundreds of MB) once the benchmarks are done."""
    yield
    bench.inputs.cache_clear()


@pytest.fixture(scope="session")
def copy_bandwidths() -> dict:
    """Per device, the copy bandwidth measured once in this run."""
    return {}


@pytest.fixture(scope="session")
def torch_times() -> dict:
    """torch's best time per (device, shape, dtype, op), for the implementation's ratio."""
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


def _once(target, setup):
    """One untimed call shaped like a round, its setup (the forward, for a backward) run now so
    that only the call counts: the warm-up whose peak memory is recorded."""
    args, kwargs = (setup() or ((), {})) if setup else ((), {})
    return lambda: target(*args, **kwargs)


@pytest.mark.parametrize("side", bench.SIDES)
@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.feature("backward")) if "backward" in op else op
                                for op in bench.OPS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_speed_beside_torch(benchmark, request, impl, device, shape, dtype, op, side, seed, copy_bandwidths,
                            torch_times):
    config = request.config
    if not config.getoption("conformance_bench_shape") and shape not in bench.shapes_for(device):
        pytest.skip(f"{shape[0]}x{shape[1]} is benchmarked on cuda only")
    n, c = shape
    benchmark.group = f"{op} {dtype_name(dtype)} {n}x{c} {device}"
    logits, target = bench.inputs(n, c, dtype, device, seed)
    if side == "torch":
        loss_fn, (x, t) = F.cross_entropy, (logits, target)
    else:
        loss_fn, (x, t) = impl.call, impl.feed(logits, target)
    x = x.detach().requires_grad_()
    if device not in copy_bandwidths:
        copy_bandwidths[device] = bench.copy_bandwidth(device)
    target_fn, setup = _steps(loss_fn, x, t, device)[op]
    peak = bench.peak_extra_memory(_once(target_fn, setup), device)
    x.grad = None
    benchmark.pedantic(target_fn, setup=setup, rounds=config.getoption("conformance_bench_rounds"))

    traffic = bench.traffic_bytes(op, n, c, dtype)
    info = {"side": side, "implementation": TORCH_SPEC if side == "torch" else impl.spec, "op": op,
            "dtype": dtype_name(dtype), "device": device, "shape": f"{n}x{c}", "traffic_bytes": traffic,
            "copy_bytes_per_second": copy_bandwidths[device], "peak_extra_bytes": peak}
    timing = {}
    if benchmark.stats:
        stats = benchmark.stats.stats
        info["bytes_per_second"] = traffic / stats.min
        info["roofline_percent"] = 100 * info["bytes_per_second"] / copy_bandwidths[device]
        key = (device, shape, dtype, op)
        if side == "torch":
            torch_times[key] = stats.min
        elif key in torch_times:
            info["ratio_to_torch"] = stats.min / torch_times[key]
        timing = {"median": stats.median, "min": stats.min, "rounds": stats.rounds}
    benchmark.extra_info.update(info)
    request.node.user_properties.append(("benchmark", dict(info, group=benchmark.group, **timing)))

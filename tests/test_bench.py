"""The benchmarks beside torch: the bytes model, the memory and bandwidth probes, the plugin
wiring (off by default, on with --benchmark-only or --conformance-bench, pytest-benchmark's own
JSON, autosave and compare options intact), and the statistics of paired rounds proven on
synthetic timings, so that they are exact and never flaky on a loaded machine."""
import json
import math
import random

import pytest
import torch

from conformance import bench, paired

BENCH = ("--pyargs", "conformance.suite.test_benchmark", "-p", "no:cacheprovider", "-q",
         "--conformance-bench-shape", "8x300", "--conformance-bench-rounds", "2")

SLOW_IMPL = """
import time
import torch

def cross_entropy(input, target, **options):
    time.sleep(0.1)
    return torch.nn.functional.cross_entropy(input, target, **options)
"""


def test_traffic_counts_logits_read_and_gradient_written():
    logits = 4096 * 32000 * 4
    assert bench.traffic_bytes("forward", 4096, 32000, torch.float32) == logits
    assert bench.traffic_bytes("backward", 4096, 32000, torch.float32) == 2 * logits
    assert bench.traffic_bytes("forward+backward", 4096, 32000, torch.bfloat16) == logits
    with pytest.raises(ValueError, match="op='fwd'"):
        bench.traffic_bytes("fwd", 1, 1, torch.float32)


def test_peak_memory_counts_what_a_call_touches():
    size = 64 * 2**20
    peak = bench.peak_extra_memory(lambda: torch.ones(size // 4), "cpu")
    if peak is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert size * 0.9 <= peak <= size * 1.5


def test_copy_bandwidth_is_measured():
    assert bench.copy_bandwidth("cpu", nbytes=8 * 2**20, repeats=2) > 1e8


def test_machine_info_records_threads_and_allocator(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    info = bench.machine_info()
    assert info["threads"] == torch.get_num_threads()
    assert info["environment"]["THP_MEM_ALLOC_ENABLE"] == "1"


def test_benchmarks_do_not_run_by_default(pytester):
    result = pytester.runpytest_inprocess(*BENCH)
    outcomes = result.parseoutcomes()
    assert outcomes["deselected"] == 12 and "passed" not in outcomes


def test_bad_shape_is_a_usage_error(pytester):
    result = pytester.runpytest_inprocess(*BENCH, "--conformance-bench-shape", "4096by32000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-bench-shape='4096by32000': expected NxC*"])


def test_benchmark_only_times_the_implementation_beside_torch(pytester):
    result = pytester.runpytest_inprocess(*BENCH, "--benchmark-only", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=12)
    data = json.loads((pytester.path / "bench.json").read_text())
    assert data["machine_info"]["conformance"]["threads"] == torch.get_num_threads()
    groups = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[b["extra_info"]["side"]] = b["extra_info"]
    assert sorted(groups) == sorted(f"{op} {dtype} 8x300 cpu" for op in bench.OPS for dtype in ("float32", "bfloat16"))
    for sides in groups.values():
        assert set(sides) == {"torch", "impl"}
        assert sides["impl"]["ratio_to_torch"] > 0 and "ratio_to_torch" not in sides["torch"]
        assert sides["impl"]["roofline_percent"] > 0 and sides["impl"]["copy_bytes_per_second"] > 0
        assert "peak_extra_bytes" in sides["impl"]


def test_conformance_bench_runs_checks_and_benchmarks(pytester):
    result = pytester.runpytest_inprocess("--pyargs", "conformance.suite.test_value", *BENCH[1:],
                                          "--conformance-bench", "-k", "float32 and (1x10 or forward-)")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 3 + 2
    result.stdout.fnmatch_lines(["*benchmark*pass 2*", "*value*pass 3*"])


def test_benchmark_compare_fail_still_gates(pytester):
    pytester.makepyfile(slow_impl=SLOW_IMPL)
    pytester.syspathinsert()
    only = ("--benchmark-only", "-k", "float32 and forward-")
    first = pytester.runpytest_inprocess(*BENCH, *only, "--benchmark-autosave")
    first.assert_outcomes(passed=2)
    same = pytester.runpytest_inprocess(*BENCH, *only, "--benchmark-compare")
    assert same.ret == pytest.ExitCode.OK and "Comparing against benchmarks from" in same.stderr.str()
    slower = pytester.runpytest_inprocess(*BENCH, *only, "--impl=slow_impl", "--benchmark-compare",
                                          "--benchmark-compare-fail=min:200%")
    assert slower.ret != pytest.ExitCode.OK
    assert "Performance has regressed" in slower.stderr.str()


def test_slow_fixtures_are_torch_with_a_sleep_after_forward_and_backward(monkeypatch):
    """fixtures/slow: torch's value and gradient, bit for bit; each of the two passes ends with a
    sleep of ``factor - 1`` times its own duration."""
    from fixtures import SLOW, _stretch
    from fixtures.slow import three_times

    assert SLOW == ("fixtures.slow.one_and_a_half_times", "fixtures.slow.three_times")
    sleeps = []
    monkeypatch.setattr(_stretch.time, "sleep", sleeps.append)
    logits, target = torch.randn(8, 300, requires_grad=True), torch.randint(300, (8,))
    loss = three_times.cross_entropy(logits, target, label_smoothing=0.1)
    loss.backward()
    expected = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    grad, logits.grad = logits.grad, None
    expected.backward()
    assert torch.equal(loss, expected) and torch.equal(grad, logits.grad)
    assert len(sleeps) == 2 and all(seconds > 0 for seconds in sleeps)
    with pytest.raises(ValueError, match="factor=0.5"):
        _stretch.stretched(torch.nn.functional.cross_entropy, 0.5)


# ---------------------------------------------------------------------------------------------
# The statistics of paired rounds, on synthetic timings


def test_interval_is_the_sign_test_interval_of_the_paired_ratios():
    ratios = list(range(1, 21))
    random.Random(0).shuffle(ratios)
    interval = paired.ratio_interval([float(r) for r in ratios], [1.0] * 20)
    # n = 20: P(Binomial(20, 1/2) <= 5) = 2.07 % <= 2.5 % < P(<= 6): the 6th and 15th ratios
    assert (interval.ratio, interval.low, interval.high, interval.pairs) == (10.5, 6.0, 15.0, 20)
    assert interval.half_width == pytest.approx(4.5 / 10.5)
    assert paired.ratio_interval([2.0, 4.0, 3.0], [1.0, 2.0, 1.0, 5.0]).pairs == 3   # complete pairs only
    few = paired.ratio_interval([1.0] * 5, [1.0] * 5)
    assert few.low is None and few.high is None and few.half_width == math.inf
    assert paired.ratio_interval([1.0] * 6, [1.0] * 6).low == 1.0
    with pytest.raises(ValueError, match="no complete pair"):
        paired.ratio_interval([], [1.0])


def _round(rng: random.Random, seconds: float, *, jitter: float, disturbed: float) -> float:
    """One round on a loaded machine: a few percent of jitter, and now and then another process
    takes a core and the round takes twice as long."""
    return seconds * math.exp(rng.gauss(0, jitter)) * (2 if rng.random() < disturbed else 1)


def _pairs(rng: random.Random, ratio: float, pairs: int, *, jitter: float = 0.05, disturbed: float = 0.2):
    torch_times = [_round(rng, 1e-3, jitter=jitter, disturbed=disturbed) for _ in range(pairs)]
    impl_times = [_round(rng, ratio * 1e-3, jitter=jitter, disturbed=disturbed) for _ in range(pairs)]
    return impl_times, torch_times


def test_interval_covers_the_true_ratio_at_least_95_percent_of_the_time():
    """Bimodal noise (a fifth of the rounds doubled) and few pairs: the distribution-free interval
    still covers the median ratio, 1.3, in at least 95 % of 2000 simulated runs (20 pairs: 95.9 %)."""
    rng = random.Random(1)
    covered = 0
    for _ in range(2000):
        interval = paired.ratio_interval(*_pairs(rng, 1.3, 20))
        covered += interval.low <= 1.3 <= interval.high
    assert covered >= 0.95 * 2000


def test_round_plan_stops_at_the_precision_or_the_budget_after_the_fewest_pairs():
    plan = paired.RoundPlan(min_pairs=10, precision=0.03, budget=5.0)
    tight = ([1.0 + 0.001 * i for i in range(12)], [1.0] * 12)
    wide = ([1.0 + 0.1 * (i % 3) for i in range(12)], [1.0] * 12)
    assert not plan.done(tight[0][:9], tight[1][:9], elapsed=100.0)   # the fewest pairs come first
    assert plan.done(*tight, elapsed=0.0)                             # precise
    assert not plan.done(*wide, elapsed=4.9) and plan.done(*wide, elapsed=5.0)   # then the budget
    for kwargs, message in (({"min_pairs": 0}, "min_pairs=0"), ({"precision": -1.0}, "precision=-1.0"),
                            ({"budget": math.nan}, "budget=nan")):
        with pytest.raises(ValueError, match=message):
            paired.RoundPlan(**{"min_pairs": 10, "precision": 0.03, "budget": 5.0, **kwargs})


def test_compare_reads_both_intervals():
    base = paired.RatioInterval(1.0, 0.95, 1.05, 20)
    assert paired.compare(paired.RatioInterval(1.5, 1.40, 1.60, 20), base, 0.25) == paired.SLOWER
    assert paired.compare(paired.RatioInterval(1.02, 0.98, 1.06, 20), base, 0.25) == paired.NOT_SLOWER
    # a point 1.5x slower, but an interval that reaches back to 1.1: not shown, not ruled out
    assert paired.compare(paired.RatioInterval(1.5, 1.10, 1.90, 20), base, 0.25) == paired.UNDECIDED
    assert paired.compare(paired.RatioInterval(3.0, None, None, 4), base, 0.25) == paired.UNDECIDED

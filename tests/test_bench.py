"""The benchmarks beside torch: the bytes model, the memory and bandwidth probes, the plugin
wiring (off by default, on with --benchmark-only or --conformance-bench, pytest-benchmark's own
JSON, autosave and compare options intact), the paired rounds, and the statistics and the gate
proven on synthetic paired timings, so that they are exact and never flaky on a loaded machine."""
import json
import math
import random

import pytest
import torch

from conformance import bench, memory, paired, report
from conformance.__main__ import main
from fixtures import SLOW, _stretch
from fixtures.slow import three_times

# Six paired rounds (the fewest with a 95 % interval) and no time for more: each benchmark of a
# self-test times exactly six pairs.
BENCH = ("--pyargs", "conformance.suite.test_benchmark", "-p", "no:cacheprovider", "-q",
         "--conformance-bench-shape", "8x300", "--conformance-bench-rounds", "6", "--conformance-bench-time", "0")

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


def test_softmax_traffic_counts_input_output_and_gradients():
    tensor = 64 * 1000 * 2
    assert bench.softmax_traffic_bytes("forward", 64, 1000, torch.bfloat16) == 2 * tensor
    assert bench.softmax_traffic_bytes("forward+backward", 64, 1000, torch.bfloat16) == 5 * tensor
    with pytest.raises(ValueError, match="op='backward'"):
        bench.softmax_traffic_bytes("backward", 1, 1, torch.float32)


def test_peak_memory_counts_what_a_call_allocates_and_what_it_keeps():
    """The peak is the most held at once, not the sum; what the call keeps is left at its end."""
    size = 16 * 2**20   # bytes
    kept = []

    def call():
        torch.ones(size // 4)                # freed at once
        kept.append(torch.ones(size // 8))   # kept
        (torch.ones(size // 4) * 2).sum()    # a temporary and its product at once: 2 x size

    found = memory.footprint(call, "cpu")
    # the kept half, then a tensor and its double at once (and the sum's few scalar bytes)
    assert size // 2 + 2 * size < found.peak <= size // 2 + 2 * size + 64 and found.retained == size // 2, found


def test_growth_counts_what_every_call_keeps_not_what_one_frees_late():
    """A list of every call's tensor grows with the calls; the previous call's tensors dropped by the
    next call, or a cache of ten, leave one call's (or ten) at the end of any run of calls: no growth."""
    every, last, cache = [], [], []

    def leaks():
        every.append(torch.empty(3))

    def frees_late():
        last[:] = [torch.empty(1000)]

    def caches():
        cache[:] = [*cache[-9:], torch.empty(50)]

    assert memory.growth(leaks, 50, "cpu").retained == 50 * 12
    assert memory.growth(frees_late, 50, "cpu").retained == 0
    assert memory.growth(caches, 50, "cpu").retained == 0


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
    # the six groups at 8x300 for each of torch's two logits losses (nll_loss's left to the deep run),
    # the 16 of torch's two linear paths (2 ops, 2 dtypes, 2 shapes) and the 8 of torch's softmax
    # forms (2 forms, 2 ops, 2 dtypes)
    assert outcomes["deselected"] == 2 * 6 + 16 + 8 and "passed" not in outcomes


def test_bad_shape_is_a_usage_error(pytester):
    result = pytester.runpytest_inprocess(*BENCH, "--conformance-bench-shape", "4096by32000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-bench-shape='4096by32000': expected NxC*"])


def test_benchmark_only_times_the_implementation_beside_torch(pytester):
    result = pytester.runpytest_inprocess(*BENCH, "--benchmark-only", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=6 + 8)
    data = json.loads((pytester.path / "bench.json").read_text())
    assert data["machine_info"]["conformance"]["threads"] == torch.get_num_threads()
    groups = {b["group"]: b for b in data["benchmarks"]}
    dtypes = ("float32", "bfloat16")
    assert sorted(groups) == sorted([f"{op} {dtype} 8x300 cpu" for op in bench.OPS for dtype in dtypes]
                                    + [f"{form} {op} {dtype} 8x300 cpu" for form in ("softmax", "log_softmax")
                                       for op in bench.SOFTMAX_OPS for dtype in dtypes])
    for b in groups.values():
        info = b["extra_info"]
        # one test per group: pytest-benchmark timed the implementation's six rounds, the kit paired them with torch's
        assert b["stats"]["rounds"] == info["pairs"] == 6 and info["impl"]["min"] == b["stats"]["min"]
        assert info["ratio_low"] <= info["ratio_to_torch"] <= info["ratio_high"] and info["precision"] == 0.03
        for side in ("impl", "torch"):
            assert info[side]["median"] > 0 and info[side]["roofline_percent"] > 0 and "peak_extra_bytes" in info[side]
        assert info["copy_bytes_per_second"] > 0


def test_conformance_bench_runs_checks_and_benchmarks(pytester):
    result = pytester.runpytest_inprocess("--pyargs", "conformance.suite.test_value", *BENCH[1:],
                                          "--conformance-bench", "-k",
                                          "float32 and (1x10 or (speed and not backward and not softmax))")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 3 + 1
    result.stdout.fnmatch_lines(["*benchmark*pass 1*", "*value*pass 3*"])


def test_benchmarks_under_xdist_are_a_usage_error(pytester):
    """pytest-benchmark disables itself under pytest-xdist: a run that asked for benchmarks there
    would pass its speed gate on nothing timed, so it stops before it starts, saying what to do."""
    for asked in ("--conformance-bench", "--benchmark-only"):
        result = pytester.runpytest_inprocess(*BENCH, asked, "-n", "2")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*cannot run under pytest-xdist*Drop -n for a benchmark run*"])


def test_a_benchmark_that_timed_nothing_is_no_pass(pytester):
    """Under --benchmark-disable a benchmark runs once, untimed: the verdict says skipped, never
    pass, and against a baseline that timed it the run and the report both find a regression."""
    only = ("--conformance-bench", "-k", "float32 and not backward and not softmax")
    pytester.runpytest_inprocess(*BENCH, *only, "--conformance-report=base.json").assert_outcomes(passed=1)
    untimed = pytester.runpytest_inprocess(*BENCH, *only, "--benchmark-disable", "--conformance-baseline=base.json",
                                           "--conformance-report=untimed.json")
    untimed.assert_outcomes(skipped=1)
    assert untimed.ret == pytest.ExitCode.TESTS_FAILED
    untimed.stdout.fnmatch_lines(["*benchmark*skipped*", "*not timed*forward]*x torch*not timed (0 pairs)*",
                                  "*forward float32 8x300 cpu*not timed (0 pairs)*", "1 regressions against base.json"])
    assert "pass" not in untimed.stdout.str().split("conformance verdict")[1].split("Speed beside torch")[0]
    assert main(["report", "untimed.json", "--baseline", "base.json", "-o", "untimed.md"]) == 1
    assert "**1 regression against the baseline (1 not timed)" in (pytester.path / "untimed.md").read_text()


def test_benchmark_only_verdict_shows_the_speed_beside_torch(pytester):
    """The terminal says how fast the loss is: per group, torch's time, the loss's, the ratio with
    its interval; no accuracy grade or empty section for a run that graded nothing."""
    result = pytester.runpytest_inprocess(*BENCH, "--benchmark-only", "-k", "bfloat16 and not softmax")
    result.assert_outcomes(passed=3)
    verdict = result.stdout.str().split("conformance verdict")[1]
    result.stdout.fnmatch_lines(["Speed beside torch:*", "*benchmark*torch ms*impl ms*impl/torch*95% interval*pairs",
                                 "*forward bfloat16 8x300 cpu*x*-*(+-*%)*6"])
    assert "Accuracy grade" not in verdict and "Closest passes" not in verdict and verdict.count("8x300 cpu") == 3


def test_benchmark_compare_fail_still_gates(pytester):
    pytester.makepyfile(slow_impl=SLOW_IMPL)
    pytester.syspathinsert()
    only = ("--benchmark-only", "-k", "float32 and not backward and not softmax")
    torch_own = "--impl=torch.nn.functional:cross_entropy"   # named: its benchmarks' ids are slow_impl's
    first = pytester.runpytest_inprocess(*BENCH, *only, torch_own, "--benchmark-autosave")
    first.assert_outcomes(passed=1)
    same = pytester.runpytest_inprocess(*BENCH, *only, torch_own, "--benchmark-compare")
    assert same.ret == pytest.ExitCode.OK and "Comparing against benchmarks from" in same.stderr.str()
    slower = pytester.runpytest_inprocess(*BENCH, *only, "--impl=slow_impl", "--benchmark-compare",
                                          "--benchmark-compare-fail=min:200%")
    assert slower.ret != pytest.ExitCode.OK
    assert "Performance has regressed" in slower.stderr.str()


def test_bench_options_are_validated(pytester):
    for option, value, message in (("--conformance-bench-precision", "-0.1", "expected a fraction >= 0"),
                                   ("--conformance-bench-time", "soon", "expected seconds >= 0"),
                                   ("--conformance-bench-rounds", "0", "expected an integer from 1 to 1000")):
        result = pytester.runpytest_inprocess(*BENCH, option, value)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*{option}={value!r}: {message}*"])


def test_slow_fixtures_are_torch_with_a_sleep_after_forward_and_backward(monkeypatch):
    """fixtures/slow: torch's value and gradient, bit for bit; each of the two passes ends with a
    sleep of ``factor - 1`` times its own duration."""
    assert SLOW == ("fixtures.slow.one_and_a_half_times", "fixtures.slow.steep_in_size", "fixtures.slow.three_times")
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


PAIRED_ROUNDS = """
from conformance import paired
from conformance.bench.rounds import paired_rounds

def test_rounds(benchmark):
    events = []
    torch_step = (lambda: events.append("T"), None)
    impl_step = (lambda: events.append("I"), lambda: events.append("i"))   # the impl's setup: untimed
    plan = paired.RoundPlan(min_pairs=5, precision=0.0, budget=0.0)
    impl_times, torch_times = paired_rounds(benchmark, torch_step, impl_step, plan)
    assert "".join(events) == "TiI" "iIT" "TiI" "iIT" "TiI"
    assert len(impl_times) == len(torch_times) == 5 and benchmark.stats.stats.rounds == 5
"""


def test_paired_rounds_alternate_which_side_goes_first(pytester):
    """torch before the implementation in even pairs, after it in odd ones; pytest-benchmark's
    pedantic loop times the implementation and ends, without an error, when the plan says so."""
    pytester.makepyfile(test_paired=PAIRED_ROUNDS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q", "--benchmark-json=b.json")
    result.assert_outcomes(passed=1)
    (entry,) = json.loads((pytester.path / "b.json").read_text())["benchmarks"]
    assert entry["stats"]["rounds"] == 5


# ---------------------------------------------------------------------------------------------
# The statistics and the gate, on synthetic paired timings


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


def test_time_budget_gives_what_a_precise_benchmark_left_to_the_later_ones():
    budget = paired.TimeBudget(12.0)
    assert budget.share(3) == 4.0
    budget.spend(1.0)                  # precise after a second
    assert budget.share(2) == 5.5
    budget.spend(11.5)                 # ran past its share by a pair
    assert budget.share(1) == 0.0      # the last gets its fewest pairs only
    with pytest.raises(ValueError, match="seconds=-1"):
        paired.TimeBudget(-1)


def test_compare_reads_both_intervals():
    base = paired.RatioInterval(1.0, 0.95, 1.05, 20)
    assert paired.compare(paired.RatioInterval(1.5, 1.40, 1.60, 20), base, 0.25) == paired.SLOWER
    assert paired.compare(paired.RatioInterval(1.02, 0.98, 1.06, 20), base, 0.25) == paired.NOT_SLOWER
    # a point 1.5x slower, but an interval that reaches back to 1.1: not shown, not ruled out
    assert paired.compare(paired.RatioInterval(1.5, 1.10, 1.90, 20), base, 0.25) == paired.UNDECIDED
    assert paired.compare(paired.RatioInterval(3.0, None, None, 4), base, 0.25) == paired.UNDECIDED


def _run(rng: random.Random, ratio: float, *, pairs: int = 60, **noise) -> report.Run:
    """A run file as the benchmarks write it, one benchmark per op, from synthetic paired rounds;
    60 pairs is about what a group of the default run paired on this machine under load (the
    median of the loaded runs in the README: 65)."""
    benchmarks = []
    for op in bench.OPS:
        interval = paired.ratio_interval(*_pairs(rng, ratio, pairs, **noise))
        benchmarks.append(report.Benchmark(
            id=f"conformance/suite/test_benchmark.py::test_speed_beside_torch[512x32000-cpu-float32-{op}]",
            group=f"{op} float32 512x32000 cpu", implementation="impl", op=op, dtype="float32", device="cpu",
            shape="512x32000", pairs=interval.pairs, ratio_to_torch=interval.ratio, ratio_low=interval.low,
            ratio_high=interval.high, precision=0.03))
    return report.Run(environment={"implementation": "impl"}, benchmarks=benchmarks)


@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_gate_is_stable_on_identical_runs(ratio):
    """The same implementation ten times on a loaded machine: no regression against the first
    run, and every comparison decided."""
    rng = random.Random(2)
    first, *again = [_run(rng, ratio) for _ in range(10)]
    for run in again:
        assert report.regressions(run, first) == []
        assert {t.verdict for t in report.timing_comparisons(run, first)} == {paired.NOT_SLOWER}


@pytest.mark.parametrize("slowdown", [1.5, 3.0])
def test_gate_flags_a_slower_implementation_every_time(slowdown):
    rng = random.Random(3)
    for _ in range(10):
        baseline, slower = _run(rng, 1.0), _run(rng, slowdown)
        found = report.regressions(slower, baseline)
        assert [r.kind for r in found] == ["slower"] * len(bench.OPS)


def test_gate_reports_a_run_too_noisy_to_decide(tmp_path, capsys):
    """Eight pairs on a machine that doubles every other round: the intervals reach from well
    below to well above a 25 % slowdown. Not a regression, and the report says so."""
    rng = random.Random(4)
    baseline, noisy = _run(rng, 1.0), _run(rng, 1.3, pairs=8, jitter=0.2, disturbed=0.5)
    timings = report.timing_comparisons(noisy, baseline)
    assert {t.verdict for t in timings} == {paired.UNDECIDED} and report.regressions(noisy, baseline) == []
    report.save(baseline, tmp_path / "base.json")
    report.save(noisy, tmp_path / "noisy.json")
    assert main(["report", str(tmp_path / "noisy.json"), "--baseline", str(tmp_path / "base.json"),
                 "-o", str(tmp_path / "noisy.md")]) == 0
    text = (tmp_path / "noisy.md").read_text()
    assert "no regressions against the baseline; 3 timings too noisy to decide" in text
    assert text.count("| too noisy to decide |") == 3
    err = capsys.readouterr().err
    assert "too noisy to decide: conformance/suite/test_benchmark.py::test_speed_beside_torch" in err


def test_linear_benchmarks_run_at_their_own_shapes_beside_the_composition(pytester):
    """A linear loss is timed beside torch's composition at --conformance-bench-linear-shape, and
    its record carries the logits the composition materialises."""
    result = pytester.runpytest_inprocess(*BENCH, "--benchmark-only", "--conformance-bench-linear-shape", "16x8x64",
                                          "--impl=torch.nn.functional:linear_cross_entropy",
                                          "--conformance-report=run.json")
    result.assert_outcomes(passed=4)
    benchmarks = json.loads((pytester.path / "run.json").read_text())["benchmarks"]
    assert {b["shape"] for b in benchmarks} == {"16x8x64"}
    assert all(b["logits_bytes"] == 16 * 64 * {"float32": 4, "bfloat16": 2}[b["dtype"]] for b in benchmarks)
    assert all(b["pairs"] == 6 and b["impl"]["peak_extra_bytes"] is not None for b in benchmarks)


def test_vocab_parallel_benchmark_times_the_ranks_beside_one_process(pytester):
    """The ranks' benchmark (``bench.ranks``) times blocks of calls on two ranks beside torch's
    loss in one process until the plan's fewest pairs, and records the ratio with its pairs."""
    result = pytester.runpytest_inprocess("--pyargs", "conformance.suite.test_vocab_parallel", *BENCH[2:],
                                          "--conformance-bench", "-k", "speed", "--conformance-world-size=2",
                                          "--impl=fixtures.correct.vocab_parallel_reference",
                                          "--conformance-report=run.json")
    result.assert_outcomes(passed=1)
    (timed,) = json.loads((pytester.path / "run.json").read_text())["benchmarks"]
    assert timed["group"].startswith("vocab parallel forward+backward float32 ") and timed["group"].endswith(" cpu ws2")
    assert timed["pairs"] >= 6 and timed["pairs"] % 5 == 0   # whole blocks of five calls
    assert timed["ratio_to_torch"] > 0 and timed["impl"]["median"] > 0 and timed["torch"]["median"] > 0

"""The benchmarks beside torch: the bytes model, the memory and bandwidth probes, and the plugin
wiring (off by default, on with --benchmark-only or --conformance-bench, pytest-benchmark's own
JSON, autosave and compare options intact)."""
import json

import pytest
import torch

from conformance import bench

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

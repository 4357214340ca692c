"""The run report: JSON round trip, the baseline diff, rendering, the CLI's exit status, and the
proof end to end: a slower implementation (fixtures/slow, three times torch's time) and one with
a planted accuracy bug each show their regressions and fail the report; identical runs pass it."""
import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from conformance import report
from conformance.__main__ import main
from conformance.records import Gap
from conformance.report import Benchmark, Check, Run, Side, rendering, tables
from suite_run import ROOT

# Every loss 2^-22 too large: far beyond float64's bound, inside float32's but several times
# torch's error there, and lost to rounding in float16 and bfloat16.
BUGGY_IMPL = """
import torch

def cross_entropy(input, target, **options):
    return torch.nn.functional.cross_entropy(input, target, **options) * (1 + 2.0 ** -22)
"""

# test_value.py's fixed checks (its covering design's rows are test_design.py's)
CHECKS = ("--pyargs", "conformance.suite.test_value", "-p", "no:cacheprovider", "-q", "-m", "not design")
WITH_BENCH = ("conformance.suite.test_benchmark", "--conformance-bench", "--conformance-bench-shape", "64x1000",
              "--conformance-bench-rounds", "20", "--conformance-bench-time", "0", "-k",
              "test_value_matches_truth or float32")


def _check(name, status="passed", ratio=0.1, **kw):
    return Check(id=f"suite/test_value.py::{name}", implementation="impl", feature="value", dtype="float32",
                 device="cpu", status=status, identity="value", ratio=ratio, **kw)


def _bench(ratio, best, spread=0.02):
    side = Side(median=best, min=best, bytes_per_second=1e9, roofline_percent=10.0, peak_extra_bytes=2**20)
    return Benchmark(id="suite/test_benchmark.py::t[8x300-cpu-float32-forward]", group="forward float32",
                     implementation="impl", op="forward", dtype="float32", device="cpu", shape="8x300", pairs=20,
                     ratio_to_torch=ratio, ratio_low=ratio * (1 - spread), ratio_high=ratio * (1 + spread),
                     precision=0.03, impl=side, torch=Side(median=best / ratio, min=best / ratio))


def _run(checks=(), benchmarks=()):
    return Run(environment={"implementation": "impl", "devices": ["cpu"]}, checks=list(checks),
               benchmarks=list(benchmarks))


def test_run_round_trips_through_json(tmp_path):
    run = _run([_check("a", collectives={"world_size": 2, "forward": [3, 288], "backward": [0, 0]}),
                _check("b", status="failed", ratio=float("inf"), reason="boom"),
                _check("c", status="unsupported", ratio=None),
                _check("m", memory={"measure": "peak", "bytes": 2**21, "limit": 2**24, "logits_bytes": 2**24})],
               [_bench(1.1, 1.1e-3)])
    report.save(run, tmp_path / "run.json")
    assert "Infinity" not in (tmp_path / "run.json").read_text()
    assert report.load(tmp_path / "run.json") == run


def test_collectives_per_call_span_the_checks_of_each_world_size():
    """The verdict's collectives table: per implementation and world size, the fewest to the most
    collectives of one forward and one backward, and the most bytes; no table without them."""
    def counted(name, world_size, forward, backward):
        return _check(name, collectives={"world_size": world_size, "forward": [forward, 96 * forward],
                                         "backward": [backward, 2048 * backward]})
    run = _run([counted("a", 2, 3, 0), counted("b", 2, 4, 2), counted("c", 4, 3, 0), _check("d")])
    table = next(t for t in report.verdict_tables(run) if t.title == "Collectives per call")
    assert table.rows == [["impl", "2", "2", "3-4", "0.4 KiB", "0-2", "4.0 KiB"],
                          ["impl", "4", "1", "3", "0.3 KiB", "0", "0.0 KiB"]]
    assert "Collectives per call" not in [t.title for t in report.verdict_tables(_run([_check("d")]))]


def test_memory_table_shows_each_measurement_beside_its_limit():
    """The verdict's memory table: a chunked loss's peak beside its logits, an undeclared one's
    peak reported, not judged, and what repeated calls left; no table without measurements."""
    run = _run([_check("peak[chunked]", memory={"measure": "peak", "bytes": 5 * 2**19, "limit": 2**24,
                                                "logits_bytes": 2**24}),
                _check("peak[composed]", status="skipped", memory={"measure": "peak", "bytes": 48 * 2**20,
                                                                   "limit": None, "logits_bytes": 2**24}),
                _check("growth", status="failed", memory={"measure": "growth", "bytes": 3484400, "limit": 100,
                                                          "logits_bytes": None}),
                _check("d")])
    rows = [["peak[chunked]", ("peak 2.50 MiB", "ok"), "< 16.00 MiB (logits 16.00 MiB)"],
            ["peak[composed]", ("peak 48.00 MiB", "ok"), "not judged (logits 16.00 MiB)"],
            ["growth", ("left 3.32 MiB", "fail"), "< 100 B"]]
    assert next(t for t in report.verdict_tables(run) if t.title == "Memory").rows == rows
    assert "Memory" not in [t.title for t in report.verdict_tables(_run([_check("d")]))]
    # the terminal counts the repeated-call checks that left nothing; the report file lists them
    clean = _check("clean", memory={"measure": "growth", "bytes": 0, "limit": 100, "logits_bytes": None})
    terminal = next(t for t in report.verdict_tables(_run([*run.checks, clean])) if t.title == "Memory")
    assert terminal.rows == rows and "(1 checks left nothing)" in terminal.note
    listed = next(t for t in tables.report_tables(_run([*run.checks, clean]), [], []) if t.title == "Memory")
    assert listed.rows == rows + [["clean", ("left 0 B", "ok"), "< 100 B"]]


def test_unreadable_files_say_why(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(report.ReportError, match="bench.json: not a conformance run"):
        report.load(tmp_path / "bench.json")
    with pytest.raises(report.ReportError, match="status='passd'"):
        _check("a", status="passd")
    for name, text in (("run.json", "nope"), ("missing.json", None)):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(report.ReportError) as raised:
            report.load(tmp_path / name)
        assert str(raised.value).count(name) == 1, str(raised.value)   # the file named once


def test_pytest_benchmark_json_is_read(tmp_path):
    entry = {"fullname": "x.py::t[forward]", "group": "g", "stats": {"median": 2.0, "min": 1.0, "rounds": 5},
             "extra_info": {"implementation": "i", "op": "forward", "dtype": "float32", "device": "cpu",
                            "shape": "8x300", "pairs": 5, "ratio_to_torch": 1.5, "ratio_low": None,
                            "ratio_high": None, "impl": {"median": 2.0, "min": 1.0}, "torch": {"median": 1.3}}}
    other = {"fullname": "y.py::unrelated", "group": None, "stats": {}, "extra_info": {}}
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": [entry, other]}))
    (b,) = report.load_benchmarks(tmp_path / "bench.json")
    assert (b.id, b.impl.min, b.torch.median, b.ratio_to_torch) == ("x.py::t[forward]", 1.0, 1.3, 1.5)
    assert b.interval.half_width == float("inf")


def test_regressions_newly_failing_less_accurate_slower():
    before = _run([_check("a"), _check("b", ratio=0.2), _check("c", ratio=0.01), _check("d", ratio=0.3),
                   _check("e", status="failed", ratio=3.0)], [_bench(1.0, 1e-3)])
    after = _run([_check("a", status="failed", ratio=2.0), _check("b", ratio=0.5), _check("c", ratio=0.09),
                  _check("d", ratio=0.5), _check("e", status="failed", ratio=9.0)], [_bench(1.4, 1.4e-4)])
    found = {(r.kind, r.id.rpartition(":")[2]) for r in report.regressions(after, before)}
    # c stays under the floor, d grew less than twice; e failed already but is three times worse;
    # the slowdown is relative to torch although the machine got ten times faster.
    assert found == {("newly failing", "a"), ("less accurate", "b"), ("less accurate", "e"),
                     ("slower", "t[8x300-cpu-float32-forward]")}
    assert report.regressions(before, before) == []
    assert report.regressions(after, before, slowdown=0.5, accuracy_factor=3) == [
        report.Regression("newly failing", "suite/test_value.py::a", "value", "float32", "passed", "failed")]
    with pytest.raises(ValueError, match="slowdown=-1"):
        report.regressions(after, before, slowdown=-1)


def test_markdown_and_html_show_matrix_accuracy_and_benchmarks():
    run = _run([_check("a", ratio=0.7), _check("b", status="xfailed", ratio=None, reason="declared"),
                _check("c", status="unsupported", ratio=None)],
               [_bench(1.4, 1.4e-3)])
    md = report.render(run, "md", plot_name="r.svg")
    assert "| value | pass 1 · 1 declared · 1 unsupported |" in md
    assert "| value | 0.7 |" in md and "1.40x | 1.37-1.43 (+-2.0%) | 20 |" in md
    assert "![implementation time over torch time](r.svg)" in md
    page = report.render(run, "html", baseline=run, found=[], timings=report.timing_comparisons(run, run))
    assert "<svg" in page and "no regressions against the baseline" in page
    assert '<td class="ok">not slower</td>' in page
    assert '<path d="M' in report.ratio_plot(run)   # the interval as an error bar
    with pytest.raises(ValueError, match="fmt='pdf'"):
        report.render(run, "pdf")


def test_cli_exit_status(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    report.save(_run([_check("a")]), good)
    report.save(_run([_check("a", status="failed", ratio=2.0)]), bad)
    assert main(["report", str(good), "--baseline", str(good), "-o", str(tmp_path / "r.html")]) == 0
    assert "<table>" in (tmp_path / "r.html").read_text()
    assert main(["report", str(bad), "--baseline", str(good), "--format", "md"]) == 1
    out, err = capsys.readouterr()
    assert "# Conformance report" in out and "regression: newly failing: suite/test_value.py::a" in err
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    with pytest.raises(SystemExit) as bad_arguments:
        main(["report", str(good), "--max-slowdown", "-0.1"])
    assert bad_arguments.value.code == 2


def test_cli_output_paths_create_their_folder_or_exit_2(tmp_path, capsys):
    """2, not 1 (regressions), when the report cannot be written: a CI gate tells a broken job
    from a regression. A missing folder is created, as --junitxml does."""
    good = tmp_path / "good.json"
    report.save(_run([_check("a")]), good)
    assert main(["report", str(good), "-o", str(tmp_path / "new" / "dir" / "x.html")]) == 0
    assert "<table>" in (tmp_path / "new" / "dir" / "x.html").read_text()
    capsys.readouterr()
    assert main(["report", str(good), "--baseline", str(good), "-o", str(good / "x.md")]) == 2
    assert f"error: {good / 'x.md'}: cannot create its folder {good}" in capsys.readouterr().err
    assert main(["report", str(good), "-o", str(tmp_path)]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "exit status: 0 no regressions; 1 regressions against the baseline; 2 the report could not be made" \
        in " ".join(capsys.readouterr().out.split())


def test_run_output_paths_are_checked_before_any_check_runs(pytester):
    """--conformance-report into a missing folder creates it; one that cannot be written and a
    baseline that cannot be read stop the run at start-up with a usage error naming the path."""
    pytester.makefile(".json", blocker="")
    fast = ("-k", "test_value_matches_truth and float32 and 1x10")
    written = pytester.runpytest_inprocess(*CHECKS, *fast, "--conformance-report=out2/run.json")
    assert written.ret == pytest.ExitCode.OK and report.load(pytester.path / "out2" / "run.json").checks
    for option, message in (("--conformance-report=blocker.json/run.json",
                             "--conformance-report: blocker.json/run.json: cannot create its folder blocker.json"),
                            ("--conformance-baseline=missing.json",
                             "--conformance-baseline: missing.json: No such file")):
        refused = pytester.runpytest_inprocess(*CHECKS, *fast, option)
        assert refused.ret == pytest.ExitCode.USAGE_ERROR and "passed" not in refused.stdout.str()
        refused.stderr.fnmatch_lines([f"ERROR: {message}*"])


def test_every_regression_report_names_its_baseline(tmp_path, capsys):
    """File, implementation, kit and torch versions, date and seed, in Markdown, HTML and on
    stderr; a warning where the baseline judged another loss or timed other shapes."""
    environment = {"implementation": "old_loss", "kit": "0.0.9", "torch": "2.12.0", "created": "2026-11-30T10:00:00",
                   "seed": 3}
    report.save(Run(environment=environment, checks=[_check("a")], benchmarks=[_bench(1.0, 1e-3)]),
                tmp_path / "old.json")
    moved = dataclasses.replace(_bench(1.0, 1e-3), shape="16x300")
    report.save(_run([_check("a")], [moved]), tmp_path / "new.json")
    assert main(["report", str(tmp_path / "new.json"), "--baseline", str(tmp_path / "old.json"),
                 "-o", str(tmp_path / "r.md")]) == 0
    named = f"baseline: {tmp_path / 'old.json'}: old_loss, kit 0.0.9, torch 2.12.0, created 2026-11-30T10:00:00, seed 3"
    other_loss = "warning: the baseline judged old_loss, this run impl: the regressions compare two different losses"
    other_shapes = "warning: the benchmark shapes differ: this run 16x300 cpu; the baseline 8x300 cpu"
    md = (tmp_path / "r.md").read_text()
    assert f"- {named}" in md and f"- **{other_loss}**" in md and other_shapes in md
    assert main(["report", str(tmp_path / "new.json"), "--baseline", str(tmp_path / "old.json"),
                 "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert f"<li>{named}</li>" in page and f'<li class="warn">{other_loss}</li>' in page
    err = capsys.readouterr().err
    assert named in err and other_loss in err and other_shapes in err
    same = report.render(report.load(tmp_path / "old.json"), "md", baseline=report.load(tmp_path / "old.json"))
    assert "baseline: " in same and "warning" not in same


def test_a_benchmark_only_report_says_what_it_measured():
    """No accuracy sections for a run that graded nothing; its headline counts the groups timed."""
    run = _run([Check(id="suite/test_benchmark.py::t[8x300-cpu-float32-forward]", implementation="impl",
                      feature="benchmark", dtype="float32", device="cpu", status="passed")], [_bench(1.1, 1e-3)])
    md = report.render(run, "md")
    assert "**benchmarks only: 1 of 1 groups timed beside torch; no conformance checks in this run**" in md
    assert "## Benchmarks beside torch" in md and "none" not in md and "Accuracy" not in md
    assert [t.title for t in report.verdict_tables(run)] == ["Verdict", "Speed beside torch"]


def _pytest_run(pytester, name, *args):
    result = pytester.runpytest_inprocess(*CHECKS, *args, f"--conformance-report={name}")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    return str(pytester.path / name)


def test_report_gates_ci_on_real_runs(pytester, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")   # the baseline's line names a long temporary path: one line, as matched
    pytester.makepyfile(buggy_impl=BUGGY_IMPL)
    pytester.syspathinsert()
    pytester.syspathinsert(ROOT)
    base = _pytest_run(pytester, "base.json", *WITH_BENCH)
    base_again = _pytest_run(pytester, "base_again.json", *WITH_BENCH)
    slow_gated = pytester.runpytest_inprocess(*CHECKS, *WITH_BENCH, "--impl=fixtures.slow.three_times",
                                              "--conformance-report=slow.json", f"--conformance-baseline={base}")
    slow = str(pytester.path / "slow.json")
    buggy_gated = pytester.runpytest_inprocess(*CHECKS, "--impl=buggy_impl", "--conformance-report=buggy.json",
                                               f"--conformance-baseline={base}")
    buggy = str(pytester.path / "buggy.json")
    again = _pytest_run(pytester, "again.json")
    assert report.load(base).checks[0].device == "cpu"

    assert main(["report", slow, "--baseline", base, "-o", str(pytester.path / "slow.html")]) == 1
    slow_found = [r.kind for r in report.regressions(report.load(slow), report.load(base))]
    assert slow_found == ["slower"] * 3   # forward, backward, forward+backward
    assert "<svg" in (pytester.path / "slow.html").read_text()
    # the same gate in one command: the pytest run against its baseline, named, exits 1 on the regressions
    assert slow_gated.ret == pytest.ExitCode.TESTS_FAILED and "failed" not in slow_gated.parseoutcomes()
    slow_gated.stdout.fnmatch_lines([f"baseline: {base}: torch.nn.functional:cross_entropy, kit *, torch *, "
                                     "created *, seed 0",
                                     "warning: the baseline judged torch.nn.functional:cross_entropy, this run "
                                     "fixtures.slow.three_times:cross_entropy: *",
                                     "Regressions against the baseline:*", "*slower*benchmark*3*float32*",
                                     "Speed beside torch:*", "*forward+backward float32 64x1000 cpu*x torch*slower",
                                     f"3 regressions against {base}"])
    buggy_gated.stdout.fnmatch_lines(["Regressions against the baseline:*", "*newly failing*value*9*float64*",
                                      f"* regressions against {base}"])
    # the same implementation timed again: never slower (at worst too noisy to decide)
    assert main(["report", base_again, "--baseline", base]) == 0

    assert main(["report", buggy, "--baseline", base, "-o", str(pytester.path / "buggy.md")]) == 1
    kinds = [r.kind for r in report.regressions(report.load(buggy), report.load(base))]
    assert kinds.count("newly failing") == 9 and kinds.count("less accurate") >= 3
    text = (pytester.path / "buggy.md").read_text()
    assert "| value | FAIL 9/9 | pass 9 | pass 9 | pass 9 |" in text and "differs from the float64 reference" in text

    assert main(["report", base, "--baseline", base]) == 0
    assert main(["report", again, "--baseline", base]) == 0
    capsys.readouterr()


def test_junit_xml_carries_readable_ids(pytester):
    result = pytester.runpytest_inprocess(*CHECKS, "-k", "test_value_matches_truth and float32", "--junitxml=j.xml")
    result.assert_outcomes(passed=9)
    names = [case.get("name") for case in ET.parse(pytester.path / "j.xml").iter("testcase")]
    assert "test_value_matches_truth[cross_entropy-cpu-float32-mean-7x3]" in names


def test_records_travel_as_json_both_ways():
    """A check's record, its gap and a measured comparison survive JSON (a run file, an xdist
    worker's report) unchanged, inf and nan included; a gap says how, not a reason's prefix."""
    from conformance.records import Check, Gap, Measured, Status
    gap = Gap("probed", ("vmap",), "torch.func.vmap over 4 problems raised RuntimeError: no batched launch")
    check = Check(id="suite/test_transforms.py::t[x]", implementation="impl", feature="transforms", dtype="float32",
                  device="cpu", status="unsupported", ratio=float("inf"), exact_ratio=float("nan"), gap=gap)
    again = Check.from_json(json.loads(json.dumps(check.to_json())))
    assert again.status is Status.UNSUPPORTED and again.probed and again.gap == gap
    assert again.ratio == float("inf") and again.exact_ratio != again.exact_ratio
    measured = Measured("value", float("inf"), 1.0, 0.0, float("nan"), "actual=1 expected=2")
    back = Measured.from_json(json.loads(json.dumps(measured.to_json())))
    assert ((back.identity, back.ratio, back.error, back.exact_worst)
            == ("value", float("inf"), 1.0, "actual=1 expected=2"))
    with pytest.raises(report.ReportError, match="how='guessed'"):
        Gap("guessed", ("vmap",), "")


def _wide_run():
    """Checks of several features and dtypes with long ids, messages and numbers, as a real run's."""
    checks = []
    for feature in ("boundaries", "document", "extremes", "features", "transforms"):
        for dtype in ("float64", "float32", "float16", "bfloat16", "-"):
            for i, status in enumerate(("passed", "failed", "xfailed", "unsupported")):
                checks.append(Check(
                    id=f"conformance/suite/test_{feature}.py::test_{feature}_with_a_long_name[cpu-{dtype}-{i}-sum]",
                    implementation="myce.bad_direction:cross_entropy", feature=feature, dtype=dtype, device="cpu",
                    status=status, identity=f"{feature} identity {i}", ratio=2.7834 + i, error=0.079739,
                    bound=0.0286481, exact_ratio=15.6254 + i, exact_identity="linear_weight gradient",
                    exact_worst=f"actual=2.3842e-07 expected=-0.00062{i}",
                    reason=(f"AssertionError: [value] myce.bad_direction:cross_entropy differs beyond the bound\n"
                            f"  params: case=well_conditioned shape=14x5 dtype={dtype}, weight=<5 classes>\n"
                            f"  worst value: actual=0.0823 expected=0.079739 error=0.00256 bound=0.00092")
                    if status == "failed" else "unsupported: softcap, z_loss (declared by myce)",
                    gap=Gap("declared", ("softcap", "z_loss"), "unsupported: softcap, z_loss (declared by myce)")
                    if status == "unsupported" else None))
    probed = "torch.func.vmap raised RuntimeError: " + "data-dependent " * 20
    checks.append(Check(id="test_transforms.py::test_vmap[cpu-float32]", implementation="myce", feature="transforms",
                        dtype="float32", device="cpu", status="unsupported",
                        reason=f"unsupported (probed): vmap: {probed}", gap=Gap("probed", ("vmap",), probed)))
    return _run(checks)


def test_the_terminal_verdict_takes_the_terminal_s_width(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = suite("--impl=fixtures.broken.small_bias", "-k", "test_value_matches_truth and (float64 or bfloat16)")
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "conformance verdict" in line)
    # the verdict's section, up to pytest's next one (its short summary is not cut on a CI machine)
    verdict = lines[start:next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))]
    assert max(map(len, verdict)) <= 80, verdict
    assert any(line.startswith("  value ") and "FAIL 9/9" in line for line in verdict), verdict


def test_runs_taken_to_hang_are_counted_apart_from_failures():
    hung = [_check(f"s{i}", status="failed", ratio=None) for i in range(2)]
    not_run = [_check(f"n{i}", status="not run", ratio=None, reason="not run: ... taken to hang") for i in range(3)]
    passed = [_check(f"p{i}") for i in range(4)]
    (row,) = report.verdict_tables(_run(hung + not_run + passed))[0].rows
    assert row[1] == ("FAIL 2/9 · 3 not run", "fail")
    (row,) = report.verdict_tables(_run(not_run + passed))[0].rows
    assert row[1] == ("pass 4 · 3 not run", "fail")
    assert "2 failing checks, 3 not run (taken to hang, or too slow at their size)" in \
        report.render(_run(hung + not_run + passed), "md")


def test_variants_a_loss_does_not_take_are_listed_as_not_taken():
    import dataclasses

    from conformance import impl
    from conformance.expectations import Expectations
    torch_loss = impl.load_implementation("torch.nn.functional:cross_entropy")
    expected = Expectations("standard").of("test_variants.py::test_x", ["softcap", "z_loss"], torch_loss)
    without_half = dataclasses.replace(torch_loss, unsupported=torch_loss.unsupported | {"float16"})
    declared = Expectations("standard").of("test_value.py::test_x", ["float16"], without_half)
    checks = [_check(name, status="unsupported", ratio=None, reason=e.reason, gap=e.gap)
              for name, e in (("a", expected), ("b", declared))]
    (table,) = [t for t in report.verdict_tables(_run(checks)) if t.title == "Unsupported features"]
    assert [row[:2] for row in table.rows] == [["declared", "float16"], ["not taken", "softcap, z_loss"]]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_terminal_verdict_fits_the_width_and_keeps_every_number_whole(width):
    """No line longer than the terminal; every number of every shown cell appears whole on one line,
    and every header word too (wrapped between words, never cut)."""
    import re
    tables = [t for t in report.verdict_tables(_wide_run()) if t.rows]
    lines = report.render_text(tables, width)
    assert max(map(len, lines)) <= width
    assert any(line.endswith("…") for line in lines)   # the probed reason, cut, says so
    assert [t.title for t in tables] == ["Verdict", "Failures by identity", "Unsupported features", "Accuracy grade",
                                         "Closest passes"]

    def whole(token: str) -> bool:
        return any(re.search(rf"(?<![\w.]){re.escape(token)}(?![\w.])", line) for line in lines)

    number = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]\d+)?(?![\w.])")
    for table in tables:
        for row in [table.columns] + table.rows:
            for cell in row:
                assert all(whole(n) for n in number.findall(rendering._cell_text(cell))), rendering._cell_text(cell)
        assert all(whole(word) for header in table.columns for word in header.split()), table.columns

"""Exact reruns and parallel runs: the same seed gives the same verdicts and the same reported
errors; pytest-xdist's ``-n 2`` gives the verdicts and errors of a serial run, merged into one
report and one summary on the controller."""
import json
from pathlib import Path

import pytest

from suite_run import ROOT, SUITE

# Cases drawn from the seed (value, gradient) and examples drawn by hypothesis (properties).
SEEDED = ("-k", "test_value_matches_truth or test_gradient_is_softmax_minus_target or test_properties")


def _measured(report: Path) -> dict:
    """Each check's verdict and reported error, keyed by test id (durations and dates left out)."""
    checks = json.loads(report.read_text())["checks"]
    return {c["id"]: (c["status"], c["identity"], c["ratio"], c["error"], c["bound"]) for c in checks}


def _run(suite, pytester, name: str, *args) -> dict:
    report = pytester.path / f"{name}.json"
    result = suite(f"--conformance-report={report}", *args)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    return _measured(report)


def test_same_seed_same_verdicts_and_errors(suite, pytester):
    first = _run(suite, pytester, "first", "--conformance-seed=7", *SEEDED)
    again = _run(suite, pytester, "again", "--conformance-seed=7", *SEEDED)
    other = _run(suite, pytester, "other", "--conformance-seed=8", *SEEDED)
    assert first == again
    assert first.keys() == other.keys()
    changed = [test_id for test_id in first if first[test_id][3] != other[test_id][3]]
    assert len(changed) > len(first) // 2  # another seed is other data, properties included
    assert any("test_properties" in test_id for test_id in changed)


def _fresh_process_run(pytester, name: str, *args):
    report = pytester.path / f"{name}.json"
    result = pytester.runpytest_subprocess(*SUITE, f"--conformance-report={report}", *args, timeout=300)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    return result, _measured(report)


def test_xdist_gives_the_serial_verdicts_in_one_report(pytester, monkeypatch):
    """Both runs in fresh processes, as a user makes them: hypothesis mixes constants from the
    loaded local modules into its draws, and an in-process run inherits every module the
    self-tests before it loaded."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    selection = ("-k", "test_value or test_structure or test_properties")
    _, serial = _fresh_process_run(pytester, "serial", *selection)
    result, parallel = _fresh_process_run(pytester, "parallel", "-n", "2", *selection)
    assert parallel == serial
    result.stdout.fnmatch_lines(["*conformance verdict*", "*structure*pass 24*", "Closest passes:*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_hypothesis_seed_chooses_the_property_examples(suite, pytester):
    """``--hypothesis-seed`` (hypothesis' own option) replays the property tests' examples of its
    seed, as ``--conformance-seed`` does: the kit's derandomized profile must not ignore it."""
    properties = ("-k", "test_implementation_matches_reference and float32")
    default = _run(suite, pytester, "default", *properties)
    first = _run(suite, pytester, "first", "--hypothesis-seed=5", *properties)
    again = _run(suite, pytester, "again", "--hypothesis-seed=5", *properties)
    other = _run(suite, pytester, "other", "--hypothesis-seed=6", *properties)
    assert len(first) == 1 and first == again
    # Other examples: another worst error, bound or both (a float64 error alone is quantised, and
    # two example sets can share their worst one).
    for test_id, measured in first.items():
        assert measured[2:] != other[test_id][2:] and measured[2:] != default[test_id][2:], (test_id, measured)

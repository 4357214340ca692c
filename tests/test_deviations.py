"""Declared deviations are data (``conformance.deviations``): one entry per name of the
vocabulary, applied by the judge where a check asks, with the table's reason."""
import ast
import json

import pytest
import torch

from conformance import cases
from conformance.deviations import TABLE
from conformance.impl import load_implementation
from conformance.judge import Judge
from conformance.vocabulary import DEVIATIONS
from suite_run import ROOT

SUITE = ROOT / "conformance" / "suite"


def _suite_functions_and_questions() -> tuple[set, set]:
    """The suite's function names, and the deviations its code asks the judge about."""
    names, asked = set(), set()
    for path in SUITE.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("deviation", "declares") and node.args
                  and isinstance(node.args[0], ast.Constant)):
                asked.add(node.args[0].value)
    return names, asked


def test_the_table_covers_every_deviation_and_names_real_checks():
    assert set(TABLE) == set(DEVIATIONS)
    names, asked = _suite_functions_and_questions()
    assert asked <= set(TABLE), asked - set(TABLE)
    for name, entry in TABLE.items():
        assert entry.name == name and entry.checks and entry.allows, name
        assert set(entry.checks) <= names, (name, set(entry.checks) - names)
        if entry.expected is not None or entry.explains is not None:
            assert entry.reason and name in asked, name


# fixture -> (the deviation it declares, the checks that report it)
DECLARING = {
    "all_ignored_zero": ("all_ignored_mean_zero", "(test_empty_batch or test_all_targets_ignored) and float32"),
    "float32_output_declared": ("float32_output", "test_output_shape_and_dtype"),
    "grad_into_input_declared": ("overwrites_logits", "test_inputs_never_modified and float32"),
    "vp_in_place_declared": ("overwrites_logits",
                             "test_vocab_parallel_leaves_its_arguments_unchanged and ws2 and float32"),
}


@pytest.mark.parametrize("fixture", DECLARING)
def test_a_declared_deviation_is_an_expected_failure_with_the_tables_reason(suite, pytester, fixture):
    name, selection = DECLARING[fixture]
    report = pytester.path / "run.json"
    result = suite(f"--impl=fixtures.correct.{fixture}", "-k", selection, f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    reasons = [check["reason"] for check in json.loads(report.read_text())["checks"] if check["status"] == "xfailed"]
    assert reasons, result.stdout.str()[-2000:]
    prefix = f"declared deviation {name}: {TABLE[name].reason.partition('{')[0]}"
    assert all(reason.startswith(prefix) for reason in reasons), (prefix, reasons)


DECLARES_BUT_IS_TORCH = """
import torch.nn.functional as F
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
cross_entropy.deviations = {"all_ignored_mean_zero", "overwrites_logits", "float32_output"}
"""


def test_a_deviation_declared_but_not_shown(suite, pytester):
    """torch's own loss declaring every deviation that makes an expected failure: a declaration
    that allows a change (the logits written, a float32 loss) is not owed; one that states the
    value the loss gives (mean over no kept position is 0) is, where it concerns the problem: the
    check holds the loss to it."""
    pytester.makepyfile(declares_torch=DECLARES_BUT_IS_TORCH)
    result = suite("--impl=declares_torch", "-rf", "-k", "(test_all_targets_ignored or test_empty_batch or "
                   "test_inputs_never_modified or test_output_shape_and_dtype) and float16 and not bfloat16")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 2 and "xfailed" not in outcomes, outcomes
    result.stdout.fnmatch_lines(["FAILED *test_empty_batch*mean*[[]empty batch[]]*",
                                 "FAILED *test_all_targets_ignored*mean*[[]all targets ignored[]]*"])


@pytest.mark.parametrize("name", [name for name, entry in TABLE.items() if entry.explains is None and
                                  entry.expected is None])
def test_a_deviation_that_changes_how_a_check_judges_is_never_an_expected_failure(request, name):
    """Asked about ``simplex_gradient`` or ``nondeterministic`` (their own bounds, no failure they
    explain), the judge returns and the check judges as usual."""
    impl = load_implementation("fixtures.correct.torch_default")
    judge = Judge(request.node, impl, deviations={name: TABLE[name]})
    problem = cases.problem(cases.well_conditioned(3, 5, torch.float32, "cpu"))
    assert judge.deviation(name, problem, "anything observed") is None

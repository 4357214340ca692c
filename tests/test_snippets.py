"""Every reproduce snippet runs and prints the mismatch its check saw: failures from every family
of the suite, planted by broken fixtures, are executed as they are printed."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from suite_run import ROOT

# family -> (broken fixture, the checks to run): at least one failure of each family.
FAMILIES = {
    "value": ("small_bias", "test_value_matches_truth and float32"),
    "gradient": ("grad_wrong_sign", "test_gradient_is_softmax_minus_target and float32 and 7x3"),
    "structure": ("wrong_shape_none", "test_output_shape_and_dtype"),
    "structure inputs modified": ("modifies_target", "test_inputs_never_modified and float32 and none"),
    "structure outputs reused": ("output_buffer_reused", "test_outputs_are_not_reused_between_calls and float32"),
    "features": ("ignored_rows_nonzero_grad", "test_ignore_index and float32 and sum"),
    "invalid input": ("accepts_out_of_range_target", "test_invalid_input_raises"),
    "extremes": ("neg_inf_nan", "test_leading_blocks_masked"),
    "layouts": ("noncontiguous_wrong", "test_noncontiguous_logits and float32"),
    "layouts target": ("strided_target_misread", "test_target_layouts and float32 and none"),
    "lifecycle": ("stale_cache", "test_in_place_change_gives_a_new_answer and float32"),
    "lifecycle backward twice": ("backward_rescales_in_place",
                                 "test_backward_twice_gives_the_same_gradient and float32"),
    "lifecycle caller tensors": ("mutates_weight", "test_caller_tensors_unchanged and float32 and none"),
    "transforms": ("double_backward_wrong", "test_hessian_vector_product and float64"),
    "document": ("small_bias", "test_document_example and float64"),
    "document training": ("small_bias", "test_network_learns_xor"),
    "properties": ("small_bias", "test_implementation_matches_reference and float64"),
    "variants": ("z_loss_uncapped", "test_variant_value_and_gradient and float32 and plain"),
    "returned auxiliaries": ("z_loss_gradient_dropped", "test_returned_auxiliary and float32"),
    "vocab parallel": ("vp_target_gather_plain_all_reduce",
                       "test_vocab_parallel_value_and_gradient and ws2 and float32 and mean-even"),
    "linear": ("linear_half_accumulator", "test_linear_at_scale and bfloat16"),
    "linear value": ("linear_no_grad_drops_bias", "test_linear_forward_without_autograd"),
    "linear frozen head": ("linear_needs_grad_misindexed", "test_linear_gradients_of_some_inputs and float32"),
    "softmax gradient": ("softmax_backward_drops_sum", "test_value_and_gradient and float32"),
    "softmax layouts": ("softmax_stride_blind", "test_strided_input and float32"),
    "softmax transforms": ("softmax_double_backward_detached_sum", "test_double_backward and float32 and rows"),
    "log_softmax non-finite rows": ("log_softmax_nan_dropped", "test_nonfinite_row_stays_in_its_row and float32"),
    "log_softmax document path": ("log_softmax_bf16_storage", "test_document_path_with_the_implementation and float32"),
    "softmax variants": ("softmax_mask_fill_finite", "test_masked_entries_take_no_part and float32"),
    "softmax causal": ("softmax_causal_top_left", "test_causal_mask and float32 and short_queries"),
    "log_softmax under a mask": ("log_softmax_masked_finite", "test_masked_entries_take_no_part and float32"),
    "memory peak": ("linear_materialises_logits", "test_chunked_linear_loss_never_holds_the_logits"),
    "memory growth": ("keeps_every_loss", "test_logits_loss_keeps_nothing_between_calls"),
}


def _snippets(report_path) -> list[tuple[str, str]]:
    checks = json.loads(report_path.read_text())["checks"]
    found = []
    for check in checks:
        if check["status"] == "failed" and "reproduce:\n" in check["reason"]:
            body = check["reason"].split("reproduce:\n", 1)[1]
            lines = []
            for line in body.splitlines():
                if not line.startswith("    "):
                    break
                lines.append(line)
            found.append((check["id"], textwrap.dedent("\n".join(lines))))
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_reproduce_snippets_print_the_mismatch(suite, pytester, family):
    fixture, selection = FAMILIES[family]
    report = pytester.path / "run.json"
    result = suite(f"--impl=fixtures.broken.{fixture}", "-k", selection, f"--conformance-report={report}",
                   checks=(selection.split()[0],))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    snippets = _snippets(report)
    assert snippets, "no failure carried a snippet"
    for test_id, snippet in snippets[:3]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(snippet, f"<snippet of {test_id}>", "exec"), {})
        match = re.search(r"actual (.*) expected (.*)", printed.getvalue())
        assert match, (test_id, printed.getvalue(), snippet)
        assert match.group(1).strip() != match.group(2).strip(), (test_id, printed.getvalue(), snippet)


BIASED = """
import torch
def cross_entropy(input, target, **options):
    return torch.nn.functional.cross_entropy(input, target, **options) * (1 + 1e-3)
"""

HOOKS = {  # what the hook returns -> the name the run gives it, the snippet's line that loads it
    "module_function": ("    from myce.bad_denom import cross_entropy\n    return cross_entropy",
                        "myce.bad_denom:cross_entropy", "impl = load_implementation('myce.bad_denom:cross_entropy')"),
    "closure": ("    from myce.bad_denom import cross_entropy\n    def biased(*args, **kwargs):\n"
                "        return cross_entropy(*args, **kwargs)\n    return biased",
                "conftest:pytest_conformance_impl.<locals>.biased", "from conftest import pytest_conformance_impl*"),
}


@pytest.mark.parametrize("returned", HOOKS)
def test_a_hook_loss_is_named_where_it_is_defined_and_its_snippet_loads_it(suite, pytester, returned):
    """The hook's object is named ``module:qualname`` (verdict, messages, snippet); a closure,
    which no name imports, is built again through the hook; either snippet runs."""
    code, name, load = HOOKS[returned]
    pytester.mkpydir("myce")
    pytester.path.joinpath("myce", "bad_denom.py").write_text(BIASED)
    pytester.makeconftest(f"def pytest_conformance_impl(config):\n{code}\n")
    report = pytester.path / "run.json"
    result = suite("-k", "test_value_matches_truth and float64 and none and 7x3", f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    result.stdout.fnmatch_lines([f"*[[]value[]] {name} differs*", f"*{load}", f"implementation: {name} (*"])
    (test_id, snippet), = _snippets(report)
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=pytester.path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    match = re.search(r"actual (.*) expected (.*)", ran.stdout)
    assert match and match.group(1) != match.group(2), (ran.stdout, ran.stderr, snippet)


def test_the_snippet_is_printed_as_is_to_be_copied(suite):
    """pytest prints the failure message with "E " prefixes; the snippet also comes in a section of
    its own, which runs as printed."""
    result = suite("--impl=fixtures.broken.small_bias", "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "reproduce (copy and run as is)" in line) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("---", "===")))
    snippet = "\n".join(lines[start:end])
    assert snippet.startswith("import torch") and "\nE " not in snippet
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "<printed snippet>", "exec"), {})
    assert re.search(r"actual (.*) expected (.*)", printed.getvalue()), printed.getvalue()


# A lifecycle check per broken fixture, each failing on a comparison: the snippet must print the
# very actual and expected the check's message names (mutates_weight: the truth of the call after
# an in-place change is taken on the caller's weights as given, not the ones the first call wrote).
LIFECYCLE_MISMATCHES = {
    "stale_cache": "test_in_place_change_gives_a_new_answer and float32",
    "mutates_weight": "test_in_place_change_gives_a_new_answer and float32 and weighted",
    "backward_rescales_in_place": "test_backward_twice_gives_the_same_gradient and float32",
    "no_grad_fast_path": "test_no_grad_and_inference_mode_agree and float32",
}


def _printed(snippet: str, test_id: str) -> tuple[str, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, f"<snippet of {test_id}>", "exec"), {})
    match = re.search(r"actual (.*) expected (.*)", printed.getvalue())
    assert match, (test_id, printed.getvalue(), snippet)
    return match.group(1).strip(), match.group(2).strip()


@pytest.mark.parametrize("fixture", LIFECYCLE_MISMATCHES)
def test_a_lifecycle_snippet_prints_the_mismatch_its_check_saw(suite, pytester, fixture):
    report = pytester.path / "run.json"
    result = suite(f"--impl=fixtures.broken.{fixture}", "-k", LIFECYCLE_MISMATCHES[fixture],
                   f"--conformance-report={report}", checks=(LIFECYCLE_MISMATCHES[fixture].split()[0],))
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    reasons = {check["id"]: check["reason"] for check in json.loads(report.read_text())["checks"]}
    snippets = _snippets(report)
    assert snippets
    for test_id, snippet in snippets:
        saw = re.search(r"worst (?:element \(.*?\)|value): actual=(\S+) expected=(\S+)", reasons[test_id])
        assert saw, reasons[test_id]
        assert _printed(snippet, test_id) == (saw.group(1), saw.group(2)), (test_id, snippet)


# Families whose checks run the form's own call as recorded steps (``Form.call_steps``): the
# snippet of a failure makes that call again and reproduces what the check saw.
VOCAB_PARALLEL_MISMATCHES = {
    "vp_target_gather_plain_all_reduce": "test_vocab_parallel_value_and_gradient and ws2 and float32 and mean-even",
    "vp_local_smoothing": "test_vocab_parallel_label_smoothing and ws2 and mean-even-unweighted",
}


@pytest.mark.parametrize("fixture", VOCAB_PARALLEL_MISMATCHES)
def test_a_vocab_parallel_snippet_prints_the_mismatch_its_check_saw(suite, pytester, fixture):
    report = pytester.path / "run.json"
    result = suite(f"--impl=fixtures.broken.{fixture}", "-k", VOCAB_PARALLEL_MISMATCHES[fixture],
                   f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    reasons = {check["id"]: check["reason"] for check in json.loads(report.read_text())["checks"]}
    snippets = _snippets(report)
    assert snippets
    for test_id, snippet in snippets:
        assert "results = groups.run(2, 'cpu', task)" in snippet.splitlines(), snippet
        saw = re.search(r"worst (?:element \(.*?\)|value): actual=(\S+) expected=(\S+)", reasons[test_id])
        assert saw, reasons[test_id]
        assert _printed(snippet, test_id) == (saw.group(1), saw.group(2)), (test_id, snippet)


MEMORY_FAILURES = {   # fixture -> the check, and what its snippet prints as expected
    "keeps_every_loss": ("test_logits_loss_keeps_nothing_between_calls", r"fewer than (\d+)"),
    "linear_materialises_logits": ("test_chunked_linear_loss_never_holds_the_logits", r"below (\d+)"),
}


@pytest.mark.parametrize("fixture", MEMORY_FAILURES)
def test_a_memory_snippet_measures_what_its_check_measured(suite, pytester, fixture):
    """The snippet measures the very call the check measured (its lines ran in the check) and
    finds the same breach of the limit."""
    check, limit = MEMORY_FAILURES[fixture]
    report = pytester.path / "run.json"
    result = suite(f"--impl=fixtures.broken.{fixture}", "-k", check, f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    (test_id, snippet), = _snippets(report)
    assert "def call():" in snippet.splitlines(), snippet
    actual, expected = _printed(snippet, test_id)
    assert int(actual) >= int(re.fullmatch(limit, expected).group(1)), (actual, expected, snippet)


LEAKY_CALL_LOG = """
import torch
CALLS, KEPT = [], []   # what each call was handed (its input's grad mode and gradient so far); every loss
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    CALLS.append((tuple(input.shape), input.requires_grad, input.grad is None, torch.is_grad_enabled(), reduction))
    KEPT.append(torch.nn.functional.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                                                  reduction=reduction, label_smoothing=label_smoothing))
    return KEPT[-1]
"""


def test_a_memory_snippet_makes_the_calls_its_check_made(suite, pytester):
    """A loss that keeps every result and logs what each call was handed: the snippet of its
    memory-growth failure makes exactly the calls the check measured (the same leaf, its gradient
    accumulating from the second call on), in order."""
    pytester.makepyfile(leaky_call_log=LEAKY_CALL_LOG)
    pytester.syspathinsert()
    import leaky_call_log  # imported before the run: the run and the snippet log into the same list
    report = pytester.path / "run.json"
    result = suite("--impl=leaky_call_log", "-k", "test_logits_loss_keeps_nothing_between_calls",
                   f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    made = list(leaky_call_log.CALLS)
    (test_id, snippet), = _snippets(report)
    leaky_call_log.CALLS.clear()
    _printed(snippet, test_id)
    # memory.growth: 100 calls, then 100 measured
    assert len(made) == 200 and leaky_call_log.CALLS == made, (made[:3], leaky_call_log.CALLS[:3], snippet)


CALL_LOG = """
import os
import torch
CALLS = []   # (the test running, the call)
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    CALLS.append((os.environ.get("PYTEST_CURRENT_TEST", ""), tuple(input.shape), input.requires_grad,
                  torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                  None if weight is None else weight.tolist(), ignore_index, reduction, label_smoothing))
    return torch.nn.functional.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                                             reduction=reduction, label_smoothing=label_smoothing) * (1 + 1e-2)
"""


@pytest.mark.parametrize("check", ["test_backward_twice_gives_the_same_gradient", "test_gradients_accumulate",
                                   "test_in_place_change_gives_a_new_answer",
                                   "test_no_grad_and_inference_mode_agree"])
def test_a_lifecycle_snippet_makes_the_calls_its_check_made(suite, pytester, check):
    """A biased loss that logs each call (its input's shape and grad mode, every option): the
    snippet of a failing check makes exactly the calls the check made, in order."""
    pytester.makepyfile(call_log=CALL_LOG)
    pytester.syspathinsert()
    import call_log  # imported before the run: the run and the snippet log into the same list
    report = pytester.path / "run.json"
    result = suite("--impl=call_log", "-k", f"{check} and float32 and weighted", f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-2000:]
    made = list(call_log.CALLS)
    snippets = _snippets(report)
    assert snippets
    for test_id, snippet in snippets:
        call_log.CALLS.clear()
        _printed(snippet, test_id)
        assert [call for _, *call in call_log.CALLS] == [call for test, *call in made if test_id in test], snippet

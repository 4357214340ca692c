"""The plugin machinery: --impl resolution, usage errors, the hook, unsupported features."""
import gc
import importlib.metadata
import re
import tomllib

import pytest

from suite_run import ROOT

SUITE = ("--pyargs", "conformance.suite", "-p", "no:cacheprovider", "-q")


def _run(pytester, *args):
    return pytester.runpytest_inprocess(*SUITE, *args)


def test_the_suites_runs_here_load_every_pytest_plugin_the_kit_depends_on():
    """The suite's runs in this repository load a list of plugins instead of autoloading them
    (pyproject.toml's addopts): a pytest plugin the kit comes to depend on, left off that list,
    would be missing from those runs alone."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, addopts = config["project"], config["tool"]["pytest"]["ini_options"]["addopts"]
    listed = {addopts[i + 1] for i, arg in enumerate(addopts[:-1]) if arg == "-p"}
    needed = {re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0] for requirement in project["dependencies"]}
    plugins = {entry.value for name in needed for entry in importlib.metadata.distribution(name).entry_points
               if entry.group == "pytest11"} | set(project["entry-points"]["pytest11"].values())
    assert "--disable-plugin-autoload" in addopts and plugins <= listed, sorted(plugins - listed)
    assert {"_hypothesis_pytestplugin", "pytest_benchmark.plugin", "xdist.plugin"} <= plugins


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz", "cannot import module 'no_such_module_xyz'"),
    ("conformance.reference:nothing_here", "has no attribute 'nothing_here'"),
    ("conformance.reference:INPUT_KINDS", "tuple object is not callable"),
    ("broken_import_mod", "raised ZeroDivisionError"),
])
def test_bad_impl_is_a_usage_error(pytester, spec, message):
    pytester.makepyfile(broken_import_mod="1 / 0")
    pytester.syspathinsert()
    result = _run(pytester, f"--impl={spec}", "-k", "test_value")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert "INTERNALERROR" not in result.stderr.str() + result.stdout.str()


def test_impl_imports_from_the_folder_pytest_was_started_in(pytester, monkeypatch):
    """Plain ``pytest`` (not ``python -m pytest``) started in the user's folder finds their module
    there; started elsewhere, the usage error says where it looked and what to do."""
    folder = pytester.mkdir("mylosses")
    folder.joinpath("myce.py").write_text("from torch.nn.functional import cross_entropy as good\n")
    elsewhere = _run(pytester, "--impl=myce:good", "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert elsewhere.ret == pytest.ExitCode.USAGE_ERROR
    elsewhere.stderr.fnmatch_lines(["*cannot import module 'myce'*start it from the folder that holds 'myce'*"])
    monkeypatch.chdir(folder)
    started_there = _run(pytester, "--impl=myce:good", "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert started_there.ret == pytest.ExitCode.OK, started_there.stderr.str()[-1000:]


@pytest.mark.parametrize("declaration,message", [
    ('cross_entropy.unsupported = {"label_smothing"}',
     "*unsupported names unknown ['label_smothing'] (did you mean 'label_smothing' -> 'label_smoothing'?)*"),
    ('cross_entropy.unsupported = "kdim"',
     "*unsupported='kdim' is a str; declare a set of names: unsupported = {'kdim'}*"),
    ('unsupported = {"kdim"}',
     "*module typo_impl declares unsupported at module level, where the kit does not read it: "
     "put it on the implementation: cross_entropy.unsupported = {'kdim'}*"),
], ids=["misspelt", "string", "module_level"])
def test_a_misread_declaration_is_a_usage_error(pytester, declaration, message):
    """A misspelt name, a string where a set is meant (read as its characters) and a declaration
    at module level (silently not read) each stop the run saying what was meant."""
    pytester.makepyfile(typo_impl=f"""
import torch
def cross_entropy(*a, **k):
    return torch.nn.functional.cross_entropy(*a, **k)
{declaration}
""")
    pytester.syspathinsert()
    result = _run(pytester, "--impl=typo_impl", "-k", "test_value")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message.replace("[", "[[]")])


def test_hook_in_conftest_supplies_the_implementation(pytester):
    pytester.makeconftest("""
import torch
def pytest_conformance_impl(config):
    def doubled(input, target, **options):
        return 2 * torch.nn.functional.cross_entropy(input, target, **options)
    return doubled
""")
    result = _run(pytester, "-k", "test_value_matches_truth and float64")
    result.stdout.fnmatch_lines(["*implementation: conftest:pytest_conformance_impl.<locals>.doubled *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_unsupported_features_are_reported_not_passed(pytester):
    pytester.makepyfile(partial_impl="""
import torch
def cross_entropy(input, target, **options):
    if input.dtype == torch.float16:
        raise NotImplementedError("no float16")
    return torch.nn.functional.cross_entropy(input, target, **options)
cross_entropy.unsupported = {"float16"}
""")
    pytester.syspathinsert()
    result = _run(pytester, "--impl=partial_impl", "-k", "test_value_matches_truth", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 27 and outcomes["skipped"] == 9
    result.stdout.fnmatch_lines(["*feature*float64 cpu*float32 cpu*float16 cpu*",
                                 "*value*pass 9*pass 9*unsupported*",
                                 "Unsupported features:*", "*declared*float16*9*"])
    result.stdout.fnmatch_lines(["*SKIPPED*unsupported: float16 (declared by partial_impl:cross_entropy)*"])


def test_failure_message_names_identity_worst_element_and_repro(pytester):
    pytester.makepyfile(biased_impl="""
import torch
def cross_entropy(input, target, **options):
    return torch.nn.functional.cross_entropy(input, target, **options) * (1 + 1e-3)
""")
    pytester.syspathinsert()
    result = _run(pytester, "--impl=biased_impl", "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*[[]value[]] biased_impl:cross_entropy differs from the float64 reference beyond the standard bound*",
        "*params: case=well_conditioned shape=7x3 dtype=float64 device=cpu, reduction='none'*",
        "*worst element (*,): actual=* expected=* error=* bound=* (error/bound=*)*",
        "*reproduce:*",
        "*impl = load_implementation('biased_impl:cross_entropy')*",
    ])


RAISES_COUNTING_CALLS = """
def cross_entropy(input, target, **options):
    with open("calls.txt", "a") as calls:
        calls.write("call\\n")
    raise RuntimeError("no kernel for this shape")
"""


@pytest.mark.parametrize("runxfail", [False, True])
def test_a_property_test_expected_to_fail_ends_at_its_first_failing_example(pytester, runxfail):
    """Listed as a known failure, the property test's first failing example is its expected failure:
    hypothesis does not shrink it. A loss that raises on every call is called once (the examples
    before it are drawn and rejected before any call: how many depends on hypothesis' draws, which
    mix in constants of the loaded modules); ``--runxfail``, which shows the failure, gets the
    shrunk example as ever, calling the loss again at least to replay the example it reports (11
    calls here, as on the kit before, without ``--runxfail`` too)."""
    pytester.makepyfile(raises_counting=RAISES_COUNTING_CALLS)
    pytester.syspathinsert()
    listed = pytester.path / "known.xfail"
    listed.write_text("test_properties.py::test_implementation_matches_reference[cpu-float64]  # no kernel\n")
    result = _run(pytester, "--impl=raises_counting", f"--conformance-xfail={listed}", *("--runxfail",) * runxfail,
                  "-k", "test_implementation_matches_reference and float64")
    calls = (pytester.path / "calls.txt").read_text().splitlines()
    if runxfail:
        assert result.parseoutcomes()["failed"] == 1, result.stdout.str()[-2000:]
        assert len(calls) > 1, len(calls)
    else:
        assert result.parseoutcomes()["xfailed"] == 1, result.stdout.str()[-2000:]
        assert len(calls) == 1, len(calls)


def test_default_run_pins_torch_failures_as_strict_xfail(pytester):
    result = _run(pytester, "-k", "test_confident_rows", "-rx")
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK
    assert outcomes["xfailed"] == 4
    result.stdout.fnmatch_lines(["*XFAIL*confident_rows_value*bfloat16-10*known failure, half exponential sum*"])


def test_a_pin_covers_the_cases_of_the_deep_run_where_its_mechanism_shows(pytester):
    """torch's float16 running sums, pinned by where they overflow, cover the deep run's cases the
    default run never generates (65535 rows 'mean', smoothing at 4099 classes 'mean'), and the
    cases beside them (65535 rows 'sum', whose truth itself overflows float16) stay judged."""
    result = _run(pytester, "--conformance-deep", "-rx", "-k",
                  "(test_row_count_boundaries and (65535-float16 or 65536-float16 or "
                  "65537-float16)) or (test_features_at_large_size and smoothed-float16)")
    assert result.ret == pytest.ExitCode.OK
    # cross_entropy's 8 and 7, and nll_loss's row counts (its 'mean' pinned as 'float16 nll sum');
    # smoothing, which nll_loss does not take, is unsupported there
    result.assert_outcomes(passed=8 + 6, xfailed=7 + 3, skipped=6, deselected=result.parseoutcomes()["deselected"])
    result.stdout.fnmatch_lines(["*XFAIL*test_row_count_boundaries?cross_entropy-cpu-65537-float16-mean?*"
                                 "float16 loss sum*",
                                 "*XFAIL*large_size?cross_entropy-cpu-smoothed-float16-mean?*float16 smoothing sum*"])
    result.stdout.fnmatch_lines(["*XFAIL*test_row_count_boundaries?nll_loss-cpu-65537-float16-mean?*float16 nll sum*"])


def _pin(**changes):
    import torch

    from conformance.known_failures import Pin
    return Pin(**{**dict(name="planted pin", reason="a planted defect", where="every float64 problem",
                         shows=lambda problem: True, dtypes=frozenset({torch.float64}),
                         reductions=frozenset({"none"}),
                         found_by="test_value.py::test_value_matches_truth[cpu-float64-none-7x3]"), **changes})


def test_a_pin_whose_defect_does_not_show_fails_the_check(pytester, monkeypatch):
    """A check that judges a problem a pin covers and passes fails, as a strict xfail would: the
    defect no longer shows where the pin says."""
    from conformance import known_failures
    monkeypatch.setattr(known_failures, "TORCH_CPU_PINS", (_pin(),))
    result = _run(pytester, "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] the known failure planted pin (cpu, float64, none, every "
                                 "float64 problem) did not show*"])


def test_a_pin_whose_defect_shows_as_the_data_falls_lets_a_passing_check_pass(pytester, monkeypatch):
    """A pin not strict (the defect shows on some of the problems it covers: torch's half
    log_softmax on the covering design's peaked rows, at any seed) lets a covered check that
    passes pass; its strict evidence is pinned by test id."""
    from conformance import known_failures
    monkeypatch.setattr(known_failures, "TORCH_CPU_PINS", (_pin(strict=False),))
    result = _run(pytester, "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=1, deselected=result.parseoutcomes()["deselected"])


def test_a_pin_covers_a_linear_loss_where_its_mechanism_shows(pytester):
    """torch's float16 smoothing sum, pinned by where it overflows, covers both linear paths'
    problems too (their logits h W^T + b, formed by the pin): the deep run's covering design meets
    it at 32000 classes; the rows beside it stay judged."""
    result = _run(pytester, "--conformance-deep", "-rx", "-k", "test_linear_over_the_design and float16-none-smoothed")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes["xfailed"] == 2 and outcomes["passed"] >= 2, outcomes
    result.stdout.fnmatch_lines(["*XFAIL*test_linear_over_the_design?linear_cross_entropy-cpu-14-float16-none-smoothed-"
                                 "*float16 smoothing sum*"])


def test_a_pin_that_covers_nothing_where_its_evidence_ran_warns(pytester, monkeypatch):
    from conformance import known_failures
    monkeypatch.setattr(known_failures, "TORCH_CPU_PINS", (_pin(shows=lambda problem: False),))
    result = _run(pytester, "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*PytestWarning: known failure planted pin * covered no problem although "
                                 "test_value.py::test_value_matches_truth[[]cpu-float64-none-7x3[]] ran*"])


def test_a_data_dependent_pin_applies_at_the_seeds_it_fails_at_only(pytester):
    """torch's float16 rows of very different scales fail at seed 16, not at the default seed: the
    default run passes the check (no xpassed), seed 16 xfails it strictly."""
    selection = ("-k", "test_rows_of_very_different_scales and float16")
    default = _run(pytester, *selection)
    assert default.ret == pytest.ExitCode.OK
    default.assert_outcomes(passed=2, deselected=default.parseoutcomes()["deselected"])
    seeded = _run(pytester, "--conformance-seed=16", *selection)
    assert seeded.ret == pytest.ExitCode.OK
    seeded.assert_outcomes(passed=1, xfailed=1, deselected=seeded.parseoutcomes()["deselected"])


FUNCTION_WITHOUT_TRANSFORMS = """
import torch

class Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        x = input.detach().requires_grad_()
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(x, target, weight=weight, ignore_index=ignore_index,
                                                     reduction=reduction, label_smoothing=label_smoothing)
        ctx.save_for_backward(x, loss)
        return loss.detach()

    @staticmethod
    def backward(ctx, grad):
        x, loss = ctx.saved_tensors
        return torch.autograd.grad(loss, x, grad)[0], None, None, None, None, None

def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    return Loss.apply(input, target, weight, ignore_index, reduction, label_smoothing)
"""


def test_missing_transforms_are_probed_and_reported(pytester):
    """An autograd.Function without setup_context, vmap or jvp: torch's own not-supported errors
    make those checks unsupported (probed), listed with the first line of the error."""
    pytester.makepyfile(no_transforms=FUNCTION_WITHOUT_TRANSFORMS)
    pytester.syspathinsert()
    result = _run(pytester, "--impl=no_transforms", "-k", "test_transforms and float64 and none", "-rs")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["Unsupported features:*", "*probed*forward_ad*2*torch.func.jvp raised*",
                                 "*probed*vmap*5*",
                                 "*SKIPPED*unsupported (probed): forward_ad: torch.func.jvp raised RuntimeError*",
                                 "*SKIPPED*unsupported (probed): vmap: torch.func.vmap*setup_context*"])


def test_required_capability_fails_instead(pytester):
    pytester.makepyfile(no_transforms=FUNCTION_WITHOUT_TRANSFORMS)
    pytester.syspathinsert()
    result = _run(pytester, "--impl=no_transforms", "--conformance-require=vmap",
                  "-k", "test_vmap and float64 and none and plain")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*required feature 'vmap' is not supported*"])


def test_require_names_only_probed_features(pytester):
    result = _run(pytester, "--conformance-require=weight", "-k", "test_value")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-require='weight': expected one of double_backward*"])


def _collected_files(result) -> set:
    return {line.split("::")[0].rpartition("/")[2] for line in result.outlines if "::" in line}


def test_a_run_judges_the_forms_of_its_implementations(pytester):
    """No implementation named: torch's logits loss and its two linear paths; a logits loss named:
    the linear checks are deselected; a linear loss named (through the hook): only test_linear."""
    # test_linear_loss_and_gradients' cases are the covering design's in the default run: the deep run poses them
    default = _run(pytester, "--collect-only", "--conformance-deep", "-k",
                   "test_value_matches_truth or test_linear_loss_and_gradients")
    assert {"test_value.py", "test_linear.py"} <= _collected_files(default)
    assert "chunked_linear_cross_entropy-cpu-float32-odd-mean" in default.stdout.str()
    named = _run(pytester, "--collect-only", "--conformance-deep", "--impl=torch.nn.functional:cross_entropy", "-k",
                 "test_value_matches_truth or test_linear_loss_and_gradients")
    assert _collected_files(named) == {"test_value.py"}
    pytester.makeconftest("""
import torch.nn.functional as F
def pytest_conformance_impl(config):
    def loss(input, linear_weight, target, *, linear_bias=None, **options):
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, **options)
    return loss
""")
    linear = _run(pytester, "--conformance-deep", "-k",
                  "test_value_matches_truth or (test_linear_loss_and_gradients and odd-mean)")
    assert linear.ret == pytest.ExitCode.OK
    linear.assert_outcomes(passed=4, deselected=linear.parseoutcomes()["deselected"])
    linear.stdout.fnmatch_lines(["*implementation: conftest:pytest_conformance_impl.<locals>.loss *",
                                 "*linear*pass 1*"])


REFERENCE_IDENTITIES = ("test_document_paths_agree_in_float64", "test_one_hot_probability_target_equals_index_target",
                        "test_reference_loss_is_nonnegative", "test_reference_is_shift_invariant")


def test_the_deep_run_adds_xor_dtypes_and_the_reference_identities(pytester):
    """The default run trains XOR in float32 and leaves out the reference's own
    identities; ``--conformance-deep`` (or an explicit ``--dtype``) trains in every dtype asked
    for, and the identities hold in the deep run."""
    selection = ("-k", "test_network_learns_xor or " + " or ".join(REFERENCE_IDENTITIES))
    default = _run(pytester, "--collect-only", *selection)
    assert sorted(line.rpartition("::")[2] for line in default.outlines if "::" in line) == \
        ["test_network_learns_xor[cross_entropy-cpu-float32]"]
    chosen = _run(pytester, "--collect-only", "--dtype=float16", *selection)
    assert [line.rpartition("::")[2] for line in chosen.outlines if "::" in line] == \
        ["test_network_learns_xor[cross_entropy-cpu-float16]"]
    deep = _run(pytester, "--conformance-deep", "-k", "test_network_learns_xor and float64 or "
                + " or ".join(REFERENCE_IDENTITIES))
    # the identities beside each of torch's two logits losses; XOR of nll_loss, which takes
    # log-probabilities, is unsupported: the claim is stated for logits
    deep.assert_outcomes(passed=1 + 2 * 4, skipped=1, deselected=deep.parseoutcomes()["deselected"])


def test_a_conftest_with_its_own_device_and_dtype_options_keeps_them(pytester):
    """An ML project's conftest that adds ``--device`` and ``--dtype`` itself: no clash (the kit's
    short aliases step aside), its options get their values, the kit's long names still work,
    and ``--impl``, which no one else took, is still the kit's."""
    pytester.makeconftest("""
def pytest_addoption(parser):
    parser.addoption("--device", default="cpu")
    parser.addoption("--dtype", default="float32")

def pytest_configure(config):
    with open("their_options.txt", "w") as f:
        f.write(f"device={config.getoption('device')} dtype={config.getoption('dtype')}")
""")
    result = _run(pytester, "--device=tpu", "--dtype=int8", "--conformance-device=cpu", "--conformance-dtype=float64",
                  "--impl=torch.nn.functional:cross_entropy", "--collect-only", "-k",
                  "test_value_matches_truth and none")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()[-2000:]
    assert (pytester.path / "their_options.txt").read_text() == "device=tpu dtype=int8"
    assert sorted(_collected_ids(result)) == ["test_value_matches_truth[cpu-float64-none-1x10]",
                                              "test_value_matches_truth[cpu-float64-none-67x130]",
                                              "test_value_matches_truth[cpu-float64-none-7x3]"]


def _collected_ids(result) -> list:
    return [line.rpartition("::")[2] for line in result.outlines if "::" in line]


def test_options_read_the_ini_file_and_the_command_line_wins(pytester):
    """``conformance_NAME`` in the ini file (here pytest.ini; pyproject's ``[tool.pytest.ini_options]``
    alike) sets an option; the command line, under either name, overrides it."""
    pytester.makepyfile(biased_impl="""
import torch
def cross_entropy(input, target, **options):
    return torch.nn.functional.cross_entropy(input, target, **options) * (1 + 1e-3)
""")
    pytester.syspathinsert()
    pytester.makeini("[pytest]\nconformance_impl = biased_impl\nconformance_dtype = float64 float32\n"
                     "conformance_seed = 3\n")
    selection = ("-k", "test_value_matches_truth and none and 7x3")
    from_ini = _run(pytester, *selection)
    assert from_ini.ret == pytest.ExitCode.TESTS_FAILED
    from_ini.assert_outcomes(failed=2, deselected=from_ini.parseoutcomes()["deselected"])   # float64, float32
    from_ini.stdout.fnmatch_lines(["*manual_seed(3)*", "implementation: biased_impl:cross_entropy *"])
    overridden = _run(pytester, "--conformance-impl=torch.nn.functional:cross_entropy", "--dtype=float64", *selection)
    assert overridden.ret == pytest.ExitCode.OK
    overridden.assert_outcomes(passed=1, deselected=overridden.parseoutcomes()["deselected"])
    bad = _run(pytester, "-o", "conformance_seed=three", *selection)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*conformance_seed (in *)='three': expected an integer*"])


def test_the_kit_provokes_no_warning_of_torch_s_chunked_linear_path(pytester):
    """With label smoothing torch's chunked linear path falls back to its reference path and warns
    that it ignored ``options``: the default (conformance.defaults) calls that path without them."""
    result = _run(pytester, "--conformance-deep", "-W", "error::UserWarning", "-k",
                  "test_linear_loss_and_gradients and chunked and weighted_ignored_smoothed")
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK and outcomes["passed"] == 4 and "warnings" not in outcomes, outcomes


def test_one_run_judges_an_implementation_of_each_form(pytester):
    """``--impl`` once per form: a package's loss and its softmax in one run, each check judging the
    implementation of its form; the log-softmax checks, of a form not named, do not run."""
    pytester.makepyfile(mypkg="""
import torch
def cross_entropy(input, target, **options):
    return 2 * torch.nn.functional.cross_entropy(input, target, **options)
def softmax(input, dim, dtype=None):
    return torch.softmax(input, dim, dtype=dtype)
""")
    pytester.syspathinsert()
    result = _run(pytester, "--impl=mypkg:cross_entropy", "--impl=mypkg:softmax", "-rA",
                  "-k", "(test_value_matches_truth and float64 and none and 7x3) or "
                        "(test_value_and_gradient and float32 and random)")
    result.stdout.fnmatch_lines(["implementation: mypkg:cross_entropy (input logits, target index)*",
                                 "implementation: mypkg:softmax (form softmax)*"])
    lines = result.stdout.str().splitlines()
    failed = [line for line in lines if line.startswith("FAILED")]
    passed = [line for line in lines if line.startswith("PASSED")]
    assert failed and all("test_value.py::test_value_matches_truth" in line for line in failed), failed
    assert passed and all("test_softmax.py::test_value_and_gradient[softmax-" in line for line in passed), passed


def test_a_hook_may_return_an_implementation_of_each_form(pytester):
    pytester.makeconftest("""
import torch
def pytest_conformance_impl(config):
    return [torch.nn.functional.cross_entropy, torch.nn.functional.log_softmax]
""")
    both = _run(pytester, "-k", "test_value_matches_truth and float64 and none and 7x3")
    assert both.ret == pytest.ExitCode.OK, both.stdout.str()[-2000:]
    both.stdout.fnmatch_lines(["implementation: torch.nn.functional:cross_entropy *",
                               "implementation: torch.nn.functional:log_softmax (form log_softmax)*"])


def test_two_implementations_of_one_form_are_a_usage_error(pytester):
    pytester.makepyfile(twin="""
import torch
def softmax(input, dim, dtype=None):
    return torch.softmax(input, dim, dtype=dtype)
""")
    pytester.syspathinsert()
    result = _run(pytester, "--impl=torch.nn.functional:softmax", "--impl=twin:softmax", "-k", "test_value")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*two implementations of the form 'softmax': torch.nn.functional:softmax and "
                                 "twin:softmax; a run judges one of each form*"])


class _FrozenObjectsSeen:
    """Records how many objects are frozen before collection, in a check and in a cleanup registered
    at configure time, where pytest's unraisable-exception plugin registers its five collections."""

    def __init__(self):
        self.before_collection, self.in_checks, self.in_cleanup = [], [], []

    def pytest_sessionstart(self, session):
        self.before_collection.append(gc.get_freeze_count())

    def pytest_configure(self, config):
        config.add_cleanup(lambda: self.in_cleanup.append(gc.get_freeze_count()))

    def pytest_runtest_call(self, item):
        self.in_checks.append(gc.get_freeze_count())


def test_the_run_freezes_the_heap_it_starts_with_until_after_its_last_collection(pytester):
    """torch's, hypothesis' and the kit's objects are frozen from the start of a run, and the
    collected items from the end of collection, until after pytest's collections at its end, so a
    full collection does not look through them; nothing stays frozen after the run."""
    seen = _FrozenObjectsSeen()
    result = pytester.runpytest_inprocess(*SUITE, "-k", "test_value_matches_truth and float64 and none and 7x3",
                                          plugins=[seen])
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    assert seen.in_checks and min(seen.in_checks) > 100_000, seen.in_checks
    # every item collected (one is selected), each a dozen objects or more
    assert min(seen.in_checks) - seen.before_collection[0] > 20_000, (seen.before_collection, seen.in_checks)
    assert seen.in_cleanup[0] > 100_000, seen.in_cleanup
    assert gc.get_freeze_count() == 0


def test_a_module_run_alone_from_the_users_folder_keeps_torchs_known_failures(pytester):
    """Collected alone from outside the rootdir (the user's folder), a suite module's check ids lack
    its file (``::test_extremes[...]``); torch's failures pinned by id still match there."""
    result = pytester.runpytest_inprocess("--pyargs", "conformance.suite.test_log_softmax", "-p", "no:cacheprovider",
                                          "-q", "-rx", "-k", "bfloat16")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    assert result.parseoutcomes()["xfailed"] >= 3, result.parseoutcomes()
    result.stdout.fnmatch_lines(["XFAIL ::test_extremes[[]log_softmax-cpu-bfloat16-neg_inf_entries[]] - torch 2.13*"])

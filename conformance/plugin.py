"""The pytest plugin: hooks only. Options live in ``options``, the run's state in ``session``,
expected outcomes in ``expectations``, the judge in ``judge``, the verdict's rendering in
``report`` (the same code renders the terminal verdict and the run report)."""
from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import warnings
from typing import Optional

import pytest
import torch
from hypothesis import seed as hypothesis_seed

from . import adapters, bench, cases, designed, hookspecs, memory, options, records, report
from .expectations import EXPECTED_TO_FAIL, Expectations, first_failure_ends
from .guards import GlobalState, HangLedger, crash_trampoline, time_limit, timeout_behind, truncate_sections
from .impl import Implementation, ImplementationError, implementation_of, load_implementation
from .judge import FIRST_FAILURE, PINNED, REPRODUCE, Judge
from .session import SESSION_KEY, ConformanceSession, is_check, item_dtype, item_form, item_size, small_to_large
from .vocabulary import DTYPES

VERDICT_KEY = pytest.StashKey[tuple]()   # ConformanceSession.judged(), taken once at the session's end
HANGS_KEY = pytest.StashKey[HangLedger]()
STACK_DUMP_FD_KEY = pytest.StashKey[Optional[int]]()

# A check function whose runs time out MAX_TIMEOUTS_PER_CHECK times is taken to hang on its
# remaining runs that share the hung runs' parameters, which are not run (one too slow at its
# size, only on its runs at least as large); after MAX_TIMEOUTS timeouts in all, no remaining
# check runs. So a hanging implementation costs at most MAX_TIMEOUTS * the limit (see
# guards.HangLedger).
MAX_TIMEOUTS_PER_CHECK = 2
MAX_TIMEOUTS = 10


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list):
    """The short option names, once the other plugins and the initial conftests (where an ML
    project's own ``--device`` lives) have added theirs and before the command line is parsed."""
    result = yield
    options.add_aliases(parser)
    return result


def pytest_addhooks(pluginmanager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _resolve(config: pytest.Config) -> tuple[list[Implementation], bool]:
    """The implementations under test, one per form, and whether the user named any.
    ``--conformance-impl`` (repeatable) imports from the folder pytest was started in, as
    ``python -m pytest`` would; the hook may return one object or a list of them."""
    framework = config.getoption("conformance_impl_framework")
    specs = config.getoption("conformance_impl")
    adapters.prepare(framework)
    if specs:
        started_in = str(config.invocation_params.dir)
        if started_in not in sys.path:
            sys.path.insert(0, started_in)
        return _one_per_form([load_implementation(spec, wrap=lambda obj: adapters.wrap(obj, framework))
                              for spec in specs]), True
    found = config.hook.pytest_conformance_impl(config=config)
    if found is None:
        return [load_implementation()], False
    objects = found if isinstance(found, (list, tuple)) else [found]
    return _one_per_form([implementation_of(obj, wrap=lambda obj: adapters.wrap(obj, framework))
                          for obj in objects]), True


def _one_per_form(implementations: list[Implementation]) -> list[Implementation]:
    """A run judges one implementation of each form: a second of a form is a usage error (judge it
    in a run of its own)."""
    seen = {}
    for impl in implementations:
        if impl.form in seen:
            raise ImplementationError(f"two implementations of the form {impl.form!r}: {seen[impl.form].spec} and "
                                      f"{impl.spec}; a run judges one of each form (--impl once per form)")
        seen[impl.form] = impl
    if not implementations:
        raise ImplementationError("the pytest_conformance_impl hook returned an empty list")
    return implementations


# tryfirst: the profile is loaded before hypothesis' own pytest_configure applies
# --hypothesis-verbosity and friends on top of the current profile; and the heap is frozen before
# pytest's unraisable-exception plugin registers its cleanup, so it is unfrozen after that runs.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # What exists when the run starts (torch's, hypothesis' and the kit's objects) lives as long as
    # the run: frozen, it is not looked through by every full collection, among them pytest's five
    # at the session's end (a seventh of a second each through the unfrozen heap, here).
    config.add_cleanup(memory.freeze_for_run())
    options.resolve(config)
    options.load_hypothesis_profile(config)
    options.register_markers(config)
    try:
        (impl, *also), named = _resolve(config)
    except ImplementationError as exc:
        raise pytest.UsageError(str(exc)) from None
    devices = options.devices(config)
    contract = config.getoption("conformance_contract")
    session = ConformanceSession(impl=impl, devices=devices, contract=contract,
                                 expectations=Expectations(contract, config.getoption("conformance_xfail"),
                                                           seed=config.getoption("conformance_seed")),
                                 seed=config.getoption("conformance_seed"), named=named, also=also,
                                 deep=config.getoption("conformance_deep"),
                                 baseline=_checked_at_start(config))
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "conformance-session")
    config.stash[HANGS_KEY] = HangLedger(MAX_TIMEOUTS_PER_CHECK, MAX_TIMEOUTS)
    config.stash[STACK_DUMP_FD_KEY] = _stack_dump_fd(config)


def _checked_at_start(config: pytest.Config) -> Optional[report.Run]:
    """Refuse, before any check runs, what would only fail at the end: benchmarks under xdist
    (pytest-benchmark disables itself there, and a speed gate would pass on nothing timed), a
    report path that cannot be written (its folder is created if missing), a baseline that cannot
    be read. Returns the baseline run (on xdist's controller; workers need none)."""
    if hasattr(config, "workerinput"):
        return None
    benchmarks = config.getoption("benchmark_only", False) or config.getoption("conformance_bench")
    if benchmarks and config.getoption("dist", "no") != "no":
        raise pytest.UsageError("benchmarks (--conformance-bench, --benchmark-only) cannot run under pytest-xdist "
                                "(-n, --dist): pytest-benchmark times nothing there, and the speed gate would pass "
                                "on no timings. Drop -n for a benchmark run (run the checks under -n in a run of "
                                "their own)")
    path, baseline = config.getoption("conformance_report"), config.getoption("conformance_baseline")
    try:
        if path:
            report.writable(path)
    except report.ReportError as exc:
        raise pytest.UsageError(f"--conformance-report: {exc}") from None
    try:
        return report.load(baseline) if baseline else None
    except report.ReportError as exc:
        raise pytest.UsageError(f"--conformance-baseline: {exc}") from None


def _stack_dump_fd(config: pytest.Config) -> Optional[int]:
    """A copy of the real stderr for the stacks of a hang in native code (see ``guards.time_limit``),
    taken now, before pytest captures fd 2 around each test; ``None`` where pytest's own
    ``faulthandler_timeout`` owns faulthandler's single timer."""
    if float(config.getini("faulthandler_timeout") or 0) > 0:
        return None
    try:
        return os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        return None


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(STACK_DUMP_FD_KEY, None)
    if fd is not None:
        os.close(fd)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = metafunc.config.stash[SESSION_KEY]
    form = item_form(metafunc.definition)
    # A logits check is parametrized by implementation only where it judges several (torch's two in
    # the default run): a named loss's test ids stay those its xfail file and baseline name.
    implementations = session.implementations(form)
    if "impl" in metafunc.fixturenames and (len(implementations) > 1 or implementations and form != "logits"):
        metafunc.parametrize("impl", implementations, ids=[impl.name for impl in implementations])
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", session.devices)
    if "world_size" in metafunc.fixturenames:
        metafunc.parametrize("world_size", options.world_sizes(metafunc.config), ids=lambda w: f"ws{w}")
    sweep = metafunc.definition.get_closest_marker("sweep")
    if sweep is not None:
        name, values = sweep.args
        metafunc.parametrize(f"{name},dtype,reduction",
                             cases.sweep(values, deep=metafunc.config.getoption("conformance_deep"),
                                         features=sweep.kwargs.get("features", {})))
    elif metafunc.definition.get_closest_marker("design") is not None:
        family, = metafunc.definition.get_closest_marker("design").args
        config = metafunc.config
        metafunc.parametrize(*designed.design_params(family, deep=config.getoption("conformance_deep"),
                                                  seed=config.getoption("conformance_seed")))
    elif "dtype" in metafunc.fixturenames and not _parametrized(metafunc, "dtype"):
        metafunc.parametrize("dtype", _dtypes(metafunc), ids=lambda d: str(d).removeprefix("torch."))


def _dtypes(metafunc: pytest.Metafunc) -> tuple:
    """Every dtype, or a costly check's ``default_dtypes`` in a default run (neither
    ``--conformance-deep`` nor ``--conformance-dtype``), which must stay within 20 s on two cores."""
    marker = metafunc.definition.get_closest_marker("default_dtypes")
    config = metafunc.config
    if marker is None or config.getoption("conformance_deep") or config.getoption("conformance_dtype"):
        return DTYPES
    return marker.args


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    memory.freeze_collected()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Deselect dtypes not asked for, benchmarks not asked for, deep checks outside a deep run and
    checks of a form no implementation of the run has (``session.implementations``); run each
    check function's sized runs from small to large; describe every check and apply its expected
    outcome; seed the property tests."""
    wanted = config.getoption("conformance_dtype")
    deep = config.getoption("conformance_deep")
    only = config.getoption("benchmark_only", False)
    bench_wanted = only or config.getoption("conformance_bench")

    session = config.stash[SESSION_KEY]

    # Explicit logits shapes narrow the benchmarks to them, unless linear shapes are given too.
    linear_bench_wanted = bool(config.getoption("conformance_bench_linear_shape")
                               or not config.getoption("conformance_bench_shape"))

    def unwanted(item) -> bool:
        is_bench = item.get_closest_marker("conformance_bench") is not None
        if is_bench and item_form(item) == "linear" and not linear_bench_wanted:
            return True
        judged = not is_check(item) or bool(session.implementations(item_form(item)))
        return ((wanted and item_dtype(item) not in (None, *wanted)) or (is_bench and not bench_wanted)
                or (only and "benchmark" not in getattr(item, "fixturenames", ())) or not judged
                or (not deep and (item.get_closest_marker("deep") is not None
                                  or is_check(item) and session.beyond_default_run(item))))

    dropped = [item for item in items if unwanted(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not unwanted(item)]
    small_to_large(items)
    for item in items:
        if is_check(item):
            session.describe(item)
    for test_id in session.expectations.unmatched():
        warnings.warn(pytest.PytestWarning(f"--conformance-xfail {session.expectations.xfail_path}: {test_id!r} "
                                           "matches no test"), stacklevel=1)
    _seed_property_tests(items, options.property_seed(config))


def _seed_property_tests(items: list, seed) -> None:
    """Seed the property tests (``options.property_seed``): hypothesis' ``seed`` decorator takes
    precedence over the profile's ``derandomize``, so with no seed the profile's fixed examples
    run and every seed replays its own set exactly."""
    if seed is not None:
        for function in {item.obj for item in items if getattr(item.obj, "is_hypothesis_test", False)}:
            hypothesis_seed(seed)(function)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Run a check under the guards against hostile implementations (``guards``): a time limit,
    and global state that must be as the check found it. Checks run single-threaded: their
    problems are small, and handing them to a thread pool costs more than it saves (on a loaded
    2-core CI machine, 30x per check). Benchmarks keep the configured threads and no limit."""
    if item.get_closest_marker("conformance_bench") or not is_check(item):
        return (yield)
    hangs = item.config.stash[HANGS_KEY]
    function = item.nodeid.partition("[")[0]
    params = {name: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
              for name, value in getattr(getattr(item, "callspec", None), "params", {}).items()}
    size = item_size(item)
    reason = hangs.not_run(function, params, size)
    if reason is not None:
        records.attach(item.user_properties, "not_run", reason)
        pytest.skip(reason)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = GlobalState(include_random=False)  # the checks' own recipes seed the generator
    timed_out = slow = False
    try:
        with time_limit(item.config.getoption("conformance_timeout"), item.config.stash[STACK_DUMP_FD_KEY]):
            result = yield
        state.check("during the check (its backward, or outside the guarded calls)")
        pin = item.stash.get(PINNED, None)
        if pin is not None and pin.strict:
            raise AssertionError(f"[XPASS(strict)] the known failure {pin.describe()} did not show: the check judged "
                                 f"a problem it covers and passed; revisit the pin ({pin.reason})")
        return result
    except BaseException as error:
        timeout = timeout_behind(error)
        if timeout is None:
            raise
        found = item.stash.get(FIRST_FAILURE, None)
        if found is not None:  # hypothesis was shrinking a failure it had already found
            limit = item.config.getoption("conformance_timeout")
            raise AssertionError(f"{found}\n  (hypothesis found this failing example; shrinking it ran past the "
                                 f"{limit:g} s time limit (--conformance-timeout): the example as found, not "
                                 "the smallest)") from None
        timed_out = True
        slow = hangs.too_slow(function, params, size)
        if slow:
            raise timeout.too_slow(size) from error
        if timeout is error:
            raise
        raise timeout from error
    finally:
        hangs.record(function, params, item.nodeid, timed_out=timed_out, size=size, slow=slow)
        state.restore_changes()
        torch.set_num_threads(threads)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Call each check through a frame named after it: if the implementation crashes the process
    (a segfault, an abort), the fatal-error traceback that pytest's faulthandler prints names the
    check and its parameters. A property test expected to fail ends at its first failing example
    (``expectations.first_failure_ends``), unless ``--runxfail`` asks to see its failure."""
    if not is_check(pyfuncitem):
        return (yield)
    original = pyfuncitem.obj
    pyfuncitem.obj = crash_trampoline(original, pyfuncitem.nodeid)
    ends = (getattr(original, "is_hypothesis_test", False) and EXPECTED_TO_FAIL in pyfuncitem.stash
            and not pyfuncitem.config.option.runxfail)
    try:
        with first_failure_ends(original) if ends else contextlib.nullcontext():
            return (yield)
    finally:
        pyfuncitem.obj = original


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Captured output of a check is cut short: a loss that prints megabytes must not flood the report.
    A failed check's reproduce snippet is added as a section of its own, printed without pytest's
    "E " prefixes, to be copied and run as is. An expected failure's traceback is cut to the frame
    that raised it before pytest formats it: pytest reports an xfail by its reason and shows no
    traceback (unless ``--runxfail``), and formatting the check's whole stack took 13 ms each, a
    quarter of a second of a default run."""
    if (call.excinfo is not None and call.excinfo.errisinstance(pytest.xfail.Exception) and is_check(item)
            and not item.config.option.runxfail):
        call.excinfo.traceback = call.excinfo.traceback[-1:]
    report = yield
    if is_check(item):
        report.sections = truncate_sections(report.sections)
        if report.when == "call" and report.failed and REPRODUCE in item.stash:
            report.sections.append(("reproduce (copy and run as is)", item.stash[REPRODUCE]))
    return report


@pytest.fixture
def impl(request) -> Implementation:
    """The implementation under test (of the check's form: ``ConformanceSession.judged_by``)."""
    return request.config.stash[SESSION_KEY].judged_by(request.node)


@pytest.fixture
def judge(request, impl) -> Judge:
    session = request.config.stash[SESSION_KEY]
    return Judge(request.node, impl, contract=request.config.getoption("conformance_contract"),
                 required=frozenset(request.config.getoption("conformance_require") or ()),
                 pins=session.expectations.pins(impl), deviations=session.expectations.deviations(impl),
                 seed=session.seed)


@pytest.fixture
def seed(pytestconfig) -> int:
    """The case seed: the run's ``--conformance-seed`` offset (read from the session's config:
    a fixture asking for ``request`` has pytest build a fixture definition for it at every check)."""
    return pytestconfig.getoption("conformance_seed")


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    judged = config.stash.get(VERDICT_KEY, None)
    if session is None or judged is None or not judged[0].checks:
        return
    run, found, timings = judged
    tr = terminalreporter
    tr.section("conformance verdict")
    width = tr._tw.fullwidth
    for line in session.header_lines():
        for wrapped in textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False):
            tr.write_line(wrapped)
    if session.baseline is not None:
        for text, tone in report.baseline_lines(run, session.baseline):
            for wrapped in textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False):
                tr.write_line(wrapped, yellow=bool(tone))
    for line in report.render_text(report.verdict_tables(run, found, timings), width):
        tr.write_line(line)
    if session.baseline is not None:
        tr.write_line(f"{len(found)} regressions against {session.baseline.source}", red=bool(found), green=not found)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record in pytest-benchmark's JSON what changes the numbers: threads, allocator settings."""
    machine_info["conformance"] = bench.machine_info()


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    """Judge the run once (under pytest-xdist, on the controller, from every worker's checks):
    write the run report, and fail the run on a regression against ``--conformance-baseline``."""
    config = session.config
    if SESSION_KEY not in config.stash or hasattr(config, "workerinput"):
        return
    config.stash[VERDICT_KEY] = run, found, _ = config.stash[SESSION_KEY].judged()
    for pin in config.stash[SESSION_KEY].unshown_pins():
        warnings.warn(pytest.PytestWarning(f"known failure {pin.describe()} covered no problem although "
                                           f"{pin.found_by} ran: revisit the pin ({pin.reason})"), stacklevel=1)
    path = config.getoption("conformance_report")
    if path:
        report.save(run, path)
    if found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

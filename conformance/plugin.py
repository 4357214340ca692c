"""The pytest plugin: options, the implementation under test, parametrization, the summary."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, seed as hypothesis_seed, settings as hypothesis_settings

from . import adapters, bench, hookspecs
from .guards import CheckTimeout, GlobalState, time_limit, truncate_sections
from .checks import Judge
from .impl import FEATURES, Implementation, ImplementationError, adapt, load_implementation
from .known_failures import pinned_failures, read_xfail_file
from .tolerance import CONTRACTS
from .cases import dtype_name
from .report import Benchmark, Check, Run, save as save_run

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
IMPL_KEY = pytest.StashKey[Implementation]()
RESULTS_KEY = pytest.StashKey["RunResults"]()
TIMEOUTS_KEY = pytest.StashKey[list]()
STACK_DUMP_FD_KEY = pytest.StashKey[Optional[int]]()
ITEM_PROPERTY = "conformance_item"

# A check takes well under a second; 30 s is 10x the slowest (XOR training) on a loaded 2-core
# machine. A check function whose runs time out MAX_TIMEOUTS_PER_CHECK times is taken to hang
# on its cases, and its remaining runs fail at once; after MAX_TIMEOUTS timeouts in all, every
# remaining check does. So a hanging implementation costs at most MAX_TIMEOUTS * the limit.
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUTS_PER_CHECK = 2
MAX_TIMEOUTS = 10

# Hypothesis profiles of the property-based suite (test_properties.py). "conformance-ci" is loaded
# by default (see pytest_configure): a fixed, replayable set of examples that keeps the run short;
# "conformance-deep" searches 500 fresh examples per test (--hypothesis-profile=conformance-deep).
# A failing example prints its repro snippet (the judge's message) and hypothesis' reproduce blob.
HYPOTHESIS_CI_PROFILE = "conformance-ci"
hypothesis_settings.register_profile(
    HYPOTHESIS_CI_PROFILE, derandomize=True, database=None, max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
hypothesis_settings.register_profile(
    "conformance-deep", parent=hypothesis_settings.get_profile(HYPOTHESIS_CI_PROFILE), max_examples=500,
    derandomize=False)


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _device_option(value: str) -> str:
    if value not in ("cpu", "cuda", "mps"):
        raise pytest.UsageError(f"--device={value!r}: expected cpu, cuda or mps")
    return value


def _shape_option(value: str) -> tuple:
    n, sep, c = value.lower().partition("x")
    if not (sep and n.isdigit() and c.isdigit() and int(n) > 0 and int(c) > 0):
        raise pytest.UsageError(f"--conformance-bench-shape={value!r}: expected NxC, e.g. 4096x32000")
    return int(n), int(c)


def _seconds_option(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise pytest.UsageError(f"--conformance-timeout={value!r}: expected seconds >= 0")
    return seconds


def _rounds_option(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"--conformance-bench-rounds={value!r}: expected a positive integer")
    return int(value)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "cross-entropy conformance kit")
    group.addoption("--impl", default=None, metavar="MODULE[:ATTR]",
                    help="implementation to judge: a module (attribute cross_entropy) or module:attribute; "
                         "default: the pytest_conformance_impl hook, else torch.nn.functional.cross_entropy")
    group.addoption("--impl-framework", choices=adapters.FRAMEWORKS, default="torch",
                    help="the framework the implementation is written in: torch (default), numpy or jax "
                         "(conformance.adapters: torch's keywords, or a per-example loss like optax's)")
    group.addoption("--device", action="append", type=_device_option, default=None, metavar="DEVICE",
                    help="device to test on (repeatable); default: every available device")
    group.addoption("--dtype", action="append", choices=[dtype_name(d) for d in DTYPES], default=None,
                    help="dtype to test (repeatable); default: float64, float32, float16 and bfloat16")
    group.addoption("--conformance-xfail", default=None, metavar="FILE",
                    help="known, tracked failures: a file of test ids (suffixes), one per line, "
                         "'# reason' after the id; they become strict xfails ('~' before the id: not "
                         "strict, for failures that show on some seeds' data only); unmatched ids warn")
    group.addoption("--conformance-contract", choices=CONTRACTS, default="strict",
                    help="strict (default): float16/bfloat16 as accurate as float32 inside; "
                         "parity: no worse than torch on the same device and dtype")
    group.addoption("--conformance-seed", type=int, default=0, metavar="SEED",
                    help="offset added to every case's seed, for exact reruns with other data (default 0)")
    group.addoption("--conformance-timeout", type=_seconds_option, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help=f"time limit per check (default {DEFAULT_TIMEOUT:g}; 0: none). After "
                         f"{MAX_TIMEOUTS} timeouts the remaining checks fail at once")
    group.addoption("--conformance-report", default=None, metavar="PATH.json",
                    help="write every check of the run (and its benchmarks) as JSON, for "
                         "'python -m conformance report'")
    group.addoption("--conformance-bench", action="store_true",
                    help="also run the benchmarks beside torch (they run only with this or --benchmark-only)")
    group.addoption("--conformance-bench-shape", action="append", type=_shape_option, default=None, metavar="NxC",
                    help="benchmark logits shape (repeatable); default 4096x32000 and 1024x128256, "
                         "plus 8192x128256 on cuda")
    group.addoption("--conformance-bench-rounds", type=_rounds_option, default=3, metavar="N",
                    help="timed rounds per benchmark, after one untimed warm-up (default 3)")


def pytest_addhooks(pluginmanager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _resolve(config: pytest.Config) -> Implementation:
    framework = config.getoption("impl_framework")
    spec = config.getoption("impl")
    if spec:
        return load_implementation(spec, wrap=lambda obj: adapters.wrap(obj, framework))
    obj = config.hook.pytest_conformance_impl(config=config)
    if obj is None:
        return load_implementation()
    return adapt(adapters.wrap(obj, framework),
                 f"pytest_conformance_impl:{getattr(obj, '__qualname__', type(obj).__name__)}")


def _load_hypothesis_profile(config: pytest.Config) -> None:
    """Load "conformance-ci" unless the user chose a profile: ``--hypothesis-profile`` (hypothesis'
    pytest plugin, option dest ``hypothesis_profile``) or one loaded by their own conftest."""
    if config.getoption("hypothesis_profile", None) is None \
            and hypothesis_settings.get_current_profile_name() == "default":
        hypothesis_settings.load_profile(HYPOTHESIS_CI_PROFILE)


# tryfirst: the profile is loaded before hypothesis' own pytest_configure applies
# --hypothesis-verbosity and friends on top of the current profile.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _load_hypothesis_profile(config)
    config.addinivalue_line("markers", "feature(name): the checks need this feature of the implementation")
    config.addinivalue_line("markers", "conformance_bench: a benchmark beside torch; runs only with "
                                       "--benchmark-only or --conformance-bench")
    try:
        config.stash[IMPL_KEY] = _resolve(config)
    except ImplementationError as exc:
        raise pytest.UsageError(str(exc)) from None
    devices = config.getoption("device") or available_devices()
    missing = [d for d in devices if d not in available_devices()]
    if missing:
        raise pytest.UsageError(f"--device {', '.join(missing)}: not available here (available: "
                                f"{', '.join(available_devices())})")
    config.stash[RESULTS_KEY] = RunResults(impl=config.stash[IMPL_KEY], devices=devices)
    config.pluginmanager.register(config.stash[RESULTS_KEY], "conformance-results")
    config.stash[TIMEOUTS_KEY] = []
    config.stash[STACK_DUMP_FD_KEY] = _stack_dump_fd(config)


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
    results = metafunc.config.stash[RESULTS_KEY]
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", results.devices)
    if "dtype" in metafunc.fixturenames and not _parametrized(metafunc, "dtype"):
        metafunc.parametrize("dtype", DTYPES, ids=dtype_name)


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))


def item_features(item: pytest.Item) -> list[str]:
    """The feature names a test needs: its ``feature`` markers, its dtype and its reduction."""
    names = [name for marker in item.iter_markers("feature") for name in marker.args]
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    if isinstance(params.get("dtype"), torch.dtype):
        names.append(dtype_name(params["dtype"]))
    if params.get("reduction") in ("none", "sum"):
        names.append(f"reduction_{params['reduction']}")
    return names


def _is_check(item: pytest.Item) -> bool:
    return item.module.__name__.startswith("conformance.suite.")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Describe the check in its reports (they reach the summary and the run report, also from
    pytest-xdist workers), then skip it if it needs an unsupported feature."""
    if not _is_check(item):
        return
    features = item_features(item)
    params = getattr(item, "callspec", None)
    item.user_properties.append((ITEM_PROPERTY, {
        "feature": item.module.__name__.rpartition(".")[2].removeprefix("test_"),
        "dtype": _item_dtype(item) or "-",
        "device": params.params.get("device", "-") if params else "-",
        "features": features}))
    impl = item.config.stash[IMPL_KEY]
    missing = [name for name in features if name in impl.unsupported]
    if missing:
        pytest.skip(f"unsupported: {', '.join(missing)} (declared by {impl.spec})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Run a check under the guards against hostile implementations (``guards``): a time limit,
    and global state that must be as the check found it. Checks run single-threaded: their
    problems are small, and handing them to a thread pool costs more than it saves (on a loaded
    2-core CI machine, 30x per check). Benchmarks keep the configured threads and no limit."""
    if item.get_closest_marker("conformance_bench") or not _is_check(item):
        return (yield)
    timeouts = item.config.stash[TIMEOUTS_KEY]
    same_check = [nodeid for nodeid in timeouts if nodeid.partition("[")[0] == item.nodeid.partition("[")[0]]
    for earlier, limit, which in ((same_check, MAX_TIMEOUTS_PER_CHECK, "runs of this check"),
                                  (timeouts, MAX_TIMEOUTS, "checks")):
        if len(earlier) >= limit:
            pytest.fail(f"not run: the implementation already ran past the time limit in {len(earlier)} {which} "
                        f"(first: {earlier[0]}); it is taken to hang", pytrace=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = GlobalState(include_random=False)  # the checks' own recipes seed the generator
    try:
        with time_limit(item.config.getoption("conformance_timeout"), item.config.stash[STACK_DUMP_FD_KEY]):
            result = yield
        state.check("during the check (its backward, or outside the guarded calls)")
        return result
    except CheckTimeout:
        timeouts.append(item.nodeid)
        raise
    finally:
        state.restore_changes()
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def impl(request) -> Implementation:
    """The implementation under test."""
    return request.config.stash[IMPL_KEY]


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Deselect dtypes not asked for; mark pinned and user-listed known failures as xfails."""
    wanted = config.getoption("dtype")
    if wanted:
        kept = [item for item in items if _item_dtype(item) in (None, *wanted)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    pins = pinned_failures(config.stash[IMPL_KEY].call, config.getoption("conformance_contract"))
    xfail_file = config.getoption("conformance_xfail")
    listed = read_xfail_file(xfail_file) if xfail_file else {}
    pins.update(listed)
    matched = set()
    for item in items:
        test_id = next((test_id for test_id in pins if item.nodeid.endswith(test_id)), None)
        if test_id:
            matched.add(test_id)
            reason, strict = pins[test_id]
            item.add_marker(pytest.mark.xfail(reason=reason, strict=strict))
    for test_id in sorted(set(listed) - matched):
        warnings.warn(pytest.PytestWarning(f"--conformance-xfail {xfail_file}: {test_id!r} matches no test"))
    _seed_property_tests(items, config.getoption("conformance_seed"))


def _seed_property_tests(items: list, offset: int) -> None:
    """``--conformance-seed`` also chooses the property tests' examples: hypothesis' ``seed``
    decorator takes precedence over the profile's ``derandomize``, so seed 0 keeps the profile's
    fixed examples and every other seed replays its own set exactly."""
    if offset:
        for function in {item.obj for item in items if getattr(item.obj, "is_hypothesis_test", False)}:
            hypothesis_seed(offset)(function)


def _item_dtype(item: pytest.Item):
    params = getattr(item, "callspec", None)
    dtype = params.params.get("dtype") if params else None
    return dtype_name(dtype) if isinstance(dtype, torch.dtype) else None


@pytest.fixture
def judge(request, impl) -> Judge:
    return Judge(request.node, impl, contract=request.config.getoption("conformance_contract"))


@pytest.fixture
def seed(request) -> int:
    """The case seed: the run's ``--conformance-seed`` offset."""
    return request.config.getoption("conformance_seed")


@dataclass(eq=False)  # hashed by identity: pluggy registers it as a plugin
class RunResults:
    """What the run found, per check: kept for the summary and the report. Registered as a plugin,
    it reads every check's reports in ``pytest_runtest_logreport``, which sees all of them in a
    plain run and, under pytest-xdist, on the controller, where the workers' reports arrive."""

    impl: Implementation
    devices: list
    outcomes: dict = field(default_factory=dict)      # nodeid -> (feature, dtype, outcome)
    worst: tuple = (0.0, "")                            # (error/bound, nodeid) among passed checks
    unsupported: dict = field(default_factory=lambda: defaultdict(int))
    details: dict = field(default_factory=dict)        # nodeid -> device, comparisons, benchmark, reason, duration

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        info = next((value for key, value in report.user_properties if key == ITEM_PROPERTY), None)
        if info is None:  # not a check of the suite, or skipped before the kit described it
            return
        self._note(report, info)
        if report.when == "call" or report.outcome == "skipped" or report.failed:
            self._judge(report, info)

    def _judge(self, report: pytest.TestReport, info: dict) -> None:
        if report.skipped and isinstance(report.longrepr, tuple) and "unsupported:" in report.longrepr[2]:
            outcome = "unsupported"
            for name in info["features"]:
                if name in self.impl.unsupported:
                    self.unsupported[name] += 1
        elif hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        if report.passed:
            for key, value in report.user_properties:
                if key == "conformance" and value["ratio"] > self.worst[0]:
                    self.worst = (value["ratio"], f"{report.nodeid} [{value['identity']}]")
        if report.when == "call" or outcome in ("unsupported", "failed", "skipped"):
            self.outcomes[report.nodeid] = (info["feature"], info["dtype"], outcome)

    def _note(self, report: pytest.TestReport, info: dict) -> None:
        """Keep what the run report needs beyond the outcome, from each phase's report."""
        detail = self.details.setdefault(report.nodeid, {"device": info["device"], "duration": 0.0})
        detail["duration"] += report.duration
        if report.when == "call":
            detail["comparisons"] = [value for key, value in report.user_properties if key == "conformance"]
            detail["benchmark"] = next((value for key, value in report.user_properties if key == "benchmark"), None)
        if hasattr(report, "wasxfail"):
            detail.setdefault("reason", report.wasxfail)
        elif report.skipped and isinstance(report.longrepr, tuple):
            detail.setdefault("reason", report.longrepr[2].removeprefix("Skipped: "))
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            detail.setdefault("reason", crash.message if crash else str(report.longrepr).strip().splitlines()[-1])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Captured output of a check is cut short: a loss that prints megabytes must not flood the report."""
    report = yield
    if _is_check(item):
        report.sections = truncate_sections(report.sections)
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, None)
    if results is None or not results.outcomes:
        return
    tr = terminalreporter
    tr.section("conformance verdict")
    tr.write_line(f"implementation: {results.impl.spec} (input {results.impl.input_kind}, "
                  f"target {results.impl.target_kind}); devices: {', '.join(results.devices)}")
    table = defaultdict(lambda: defaultdict(int))
    for feature, dtype, outcome in results.outcomes.values():
        table[(feature, dtype)][outcome] += 1
    for (feature, dtype), counts in sorted(table.items()):
        verdict = "FAIL" if counts.get("failed") else ("unsupported" if set(counts) == {"unsupported"} else "ok")
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        tr.write_line(f"  {feature:<14} {dtype:<9} {verdict:<11} ({detail})")
    if results.unsupported:
        tr.write_line("unsupported (declared): " + ", ".join(
            f"{name} ({FEATURES[name]}): {n} checks" for name, n in sorted(results.unsupported.items())))
    if results.worst[1]:
        tr.write_line(f"closest pass: error/bound = {results.worst[0]:.3g} at {results.worst[1]}")


@pytest.hookimpl(specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_benchmarks(config: pytest.Config, items: list) -> None:
    """Benchmarks run only when asked; ``--benchmark-only`` deselects the checks instead of
    skipping each one, so the verdict and the report hold only what ran."""
    only = config.getoption("benchmark_only", False)
    wanted = only or config.getoption("conformance_bench")
    keep, drop = [], []
    for item in items:
        is_bench = item.get_closest_marker("conformance_bench") is not None
        unwanted = (is_bench and not wanted) or (only and "benchmark" not in getattr(item, "fixturenames", ()))
        (drop if unwanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record in pytest-benchmark's JSON what changes the numbers: threads, allocator settings."""
    machine_info["conformance"] = bench.machine_info()


def _kit_version() -> str:
    try:
        return importlib.metadata.version("ce-conformance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_data(config: pytest.Config) -> Run:
    """The run as data: every check with its status and worst error over bound, the benchmarks,
    and the environment they ran in."""
    results = config.stash[RESULTS_KEY]
    impl = results.impl
    checks, benchmarks = [], []
    for nodeid, (feature, dtype, outcome) in results.outcomes.items():
        detail = results.details.get(nodeid, {})
        worst = max(detail.get("comparisons", []), key=lambda c: c["ratio"], default={})
        checks.append(Check(
            id=nodeid, implementation=impl.spec, feature=feature, dtype=dtype, device=detail.get("device", "-"),
            status=outcome, identity=worst.get("identity", ""), ratio=worst.get("ratio"), error=worst.get("error"),
            bound=worst.get("bound"), reason=detail.get("reason", ""), duration=detail.get("duration", 0.0)))
        if detail.get("benchmark"):
            benchmarks.append(Benchmark.from_dict(dict(detail["benchmark"], id=nodeid)))
    environment = {
        "implementation": impl.spec, "input_kind": impl.input_kind, "target_kind": impl.target_kind,
        "unsupported": sorted(impl.unsupported), "deviations": sorted(impl.deviations),
        "torch": torch.__version__, "kit": _kit_version(), "devices": results.devices,
        "seed": config.getoption("conformance_seed"), "threads": torch.get_num_threads(),
        "python": platform.python_version(), "platform": platform.platform(), "machine": bench.machine_info(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return Run(environment=environment, checks=checks, benchmarks=benchmarks)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    """Write the run report (under pytest-xdist, once, on the controller, from every worker's checks)."""
    path = session.config.getoption("conformance_report")
    if path and RESULTS_KEY in session.config.stash and not _is_xdist_worker(session.config):
        save_run(run_data(session.config), path)

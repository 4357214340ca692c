"""The self-tests run the suite in-process with pytester, which restores ``sys.modules`` after
each run. torch registers its C++ operator libraries once per process when a lazily imported
module first loads (``torch.func`` and ``torch.optim`` pull in dynamo and sympy); a second load after pytester
dropped the module fails with "Only a single TORCH_LIBRARY can be used". Loading them when the
session is configured, before any snapshot is taken, keeps them loaded for every in-process run."""
import atexit
import gc
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis.internal import constants_ast

from suite_run import ROOT, SUITE, suite_of

pytest_plugins = ["pytester"]   # allowed here: the conftest of the self-tests' rootdir (tests/pytest.ini)


def _load_lazy_torch_modules() -> None:
    """torch's first jvp imports ``torch._decomp.decompositions_for_jvp``, which scripts 18 of its
    decompositions with ``torch.jit.script`` and so warns 18 times that it is deprecated: torch's
    own doing, at its import, silenced here where the self-tests force that import."""
    logits, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    torch.func.vmap(F.cross_entropy)(logits, target)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
        torch.func.jvp(lambda z: F.cross_entropy(z, target[0]), (logits[0],), (logits[0],))
    weight = torch.zeros(1, requires_grad=True)
    (2 * weight).sum().backward()
    torch.optim.SGD([weight], lr=0.1).step()


def pytest_configure(config) -> None:
    """A pytest-xdist worker (``pytest tests -n 2``) computes on one intra-op thread: two workers
    on two cores each splitting small ops over two threads wait for a core the other holds (the
    kit's checks already run on one, plugin; the self-tests' own torch work did not: the flexible
    loss's gradchecks took 17 s of a run, 2 s on one thread), and ends without the interpreter's
    shutdown (``_end_worker``). xdist's controller runs no test: it does not load what the runs
    need (1.4 s before it starts the workers)."""
    worker = hasattr(config, "workerinput")
    if worker:
        torch.set_num_threads(1)
        atexit.register(_end_worker)   # run after the handlers of the libraries the tests load
    if worker or getattr(config.option, "dist", "no") == "no":
        _load_lazy_torch_modules()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """A worker's heap holds what the in-process runs loaded (torch's modules, the kit's,
    hypothesis') and, through the loaders of the suite modules they imported, the sessions of the
    first and the last of them (``_inner_runs_are_let_go``). pytest's unraisable-exception plugin
    ends the session with five full collections through it: frozen now, they are not looked
    through (each inner run collected its own garbage at its end). An xdist worker then ends at
    once (``_end_worker``). Without the two, seven correct-fixture runs under ``-n 2`` took 38 to 39 s
    of pytest's time, against 33 to 34 s."""
    gc.freeze()


def _end_worker() -> None:
    """A worker's interpreter shutdown frees those objects and collects them once more while
    xdist's controller waits for it (at most 10 s, then it kills it: every self-test run ended 10 s
    after its last test when the worker kept every run's session). By its exit the worker has sent
    all it found, and the controller does not read how a finished worker ends: it skips the shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(autouse=True)
def _inner_runs_are_let_go():
    """Hypothesis caches the source constants of each module it meets by the module object
    (``constants_ast.constants_from_module``, 4096 entries): every in-process run's re-imported
    suite modules, and through each one's loader, pytest's assertion rewriter, that run's config and
    its session, every item and report in it. A worker kept them all: its heap grew by 190,000
    objects a run, and each full collection of the self-tests looked through them (2.25 s each,
    13.5 s of the 39 correct-fixture runs in a row). Emptied after each self-test: the constants
    hypothesis drew from those modules stay in its own set (``providers._local_constants``)."""
    yield
    constants_ast.constants_from_module.cache_clear()


@pytest.fixture
def suite(pytester):
    """Run the suite in-process with the repository (its fixtures) importable; extra pytest args;
    ``checks=`` collects only the modules that define those checks (``suite_run.suite_of``)."""
    pytester.syspathinsert(ROOT)
    return lambda *args, checks=(): pytester.runpytest_inprocess(*(suite_of(*checks) if checks else SUITE), *args)


@pytest.fixture(autouse=True)
def _inner_runs_have_a_wide_terminal(monkeypatch):
    """Every run a self-test makes (in-process or in a subprocess) has a 200-column terminal, so
    that the verdict's rows and lines, which the self-tests match, are one line each (the verdict
    wraps to the terminal's width; tests/test_report.py sets narrower ones on purpose)."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch):
    """Under ``pytest tests -n 2`` a run of the suite made by a self-test (in-process or in a
    subprocess) inherits the worker's PYTEST_XDIST_WORKER, and pytest-benchmark then disables
    itself in that run as if it were the worker: the run is its own session, not a worker."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


# Self-tests that time real runs and must see a 3x slowdown, and self-tests that start groups of
# rank processes (two to four busy processes on this 2-core machine): under ``--dist loadgroup``
# one worker runs them one after another, so no timing is taken while ranks load both cores.
_TIMING_TESTS = ("test_report_gates_ci_on_real_runs", "test_benchmark_compare_fail_still_gates")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        spawns_ranks = item.path.name == "test_distributed.py" or "vocab_parallel" in item.nodeid.replace(" ", "_") \
            or "vp_" in item.nodeid
        if spawns_ranks or item.originalname in _TIMING_TESTS:
            item.add_marker(pytest.mark.xdist_group("exclusive"))


@pytest.fixture(autouse=True)
def _timing_on_one_thread(request):
    """The other xdist worker still runs its tests beside a timing self-test. A torch op split
    over two intra-op threads waits for both, and one thread descheduled for a time slice (ms)
    stalls a 0.2 ms op tenfold on either side of a pair at random: in CI a 3x slowdown once
    read 2.01x [0.10, 8.34] and went undecided. On one thread a disturbance only costs the
    time it takes, which the paired ratio cancels."""
    if request.node.originalname not in _TIMING_TESTS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

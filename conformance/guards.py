"""Keep a hostile implementation from taking the run down with it.

A loss under test may change process-wide torch state (default dtype, grad mode, the random
generator, deterministic algorithms), hang, or print without end. Each of those would corrupt or
stall every later check, so the kit watches for them around each call and each check: a change
of global state fails the check that caused it and is undone; a check that runs past the time
limit is interrupted and fails; a check too slow at one size has its larger runs not run, and
after a few timeouts the remaining runs taken to hang are not run instead of waiting for each
(``HangLedger``); captured output is cut short in failure reports.
"""
from __future__ import annotations

import contextlib
import faulthandler
import gc
import signal
import threading
import time
import types
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

__all__ = ["ImplementationFault", "CheckTimeout", "GlobalState", "time_limit", "truncate_sections", "calling",
           "crash_trampoline", "bits", "storage_bits", "HangLedger", "Size", "NOT_RUN_PREFIX", "Call"]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A bitwise copy of a caller's tensor (NaN-safe equality), 0-dim tensors included: what a
    check compares after a call to tell whether the implementation wrote into it."""
    return t.detach().clone().contiguous().reshape(-1).view(torch.uint8) if t.numel() else t.detach().clone()


def storage_bits(t: torch.Tensor, *, skipped_only: bool = False) -> torch.Tensor:
    """A bitwise copy of a caller's tensor's whole storage, the elements its view skips included
    (a kernel that reads a view as if contiguous writes past it); ``skipped_only``: with the
    view's own elements zeroed (what a loss that declares ``overwrites_logits`` must leave alone)."""
    copy = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage().clone())
    if skipped_only:
        copy.as_strided(t.shape, t.stride(), t.storage_offset()).zero_()
    return copy.view(torch.uint8)


class ImplementationFault(AssertionError):
    """The implementation broke the calling contract itself: not a numerical error, a conduct one
    (returned a non-tensor, changed global state). Checks that expect the implementation to raise
    must not mistake this for the implementation's own exception."""


class CheckTimeout(BaseException):
    """Raised into a check that ran past ``--conformance-timeout`` (``limit`` seconds) ``where``
    says. A ``BaseException``, so that no ``except Exception`` in the check and no hypothesis
    shrinking re-runs the hanging call."""

    def __init__(self, limit: float, where: str, message: Optional[str] = None) -> None:
        self.limit, self.where = limit, where
        super().__init__(message or f"the check ran past the {limit:g} s time limit (--conformance-timeout): {where}")

    def too_slow(self, size: "Size") -> "CheckTimeout":
        """The same timeout, judged slowness at ``size`` (``HangLedger.too_slow``), not a hang."""
        where = self.where.replace(HANG, "")
        return CheckTimeout(self.limit, where, f"too slow at this size ({size}): the check ran past the "
                            f"{self.limit:g} s time limit (--conformance-timeout) {where}; its runs at smaller sizes "
                            "finished within the limit, so it is not taken to hang (a longer --conformance-timeout "
                            "judges it)")


def _deterministic() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def _set_deterministic(value: tuple[bool, bool]) -> None:
    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


# name -> (read, restore, compare). The random state is read as a tensor and compared by value.
_STATE: dict[str, tuple[Callable, Callable, Callable]] = {
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype, None),
    "default device": (torch.get_default_device, torch.set_default_device, None),
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled, None),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled, None),
    "deterministic algorithms (enabled, warn_only)": (_deterministic, _set_deterministic, None),
    "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, None),
    "intra-op threads": (torch.get_num_threads, torch.set_num_threads, None),
    "random generator state (torch.manual_seed or random draws)":
        (torch.random.get_rng_state, torch.random.set_rng_state, torch.equal),
}
if torch.cuda.is_available():
    _STATE["cuda random generator state"] = (torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all,
                                             lambda a, b: all(map(torch.equal, a, b)))


class GlobalState:
    """A snapshot of the process-wide torch state a loss has no business changing."""

    def __init__(self, include_random: bool = True) -> None:
        self.values = {name: read() for name, (read, _, _) in _STATE.items()
                       if include_random or "random" not in name}

    def restore_changes(self) -> list[str]:
        """Undo every change since the snapshot; describe each one."""
        changes = []
        for name, before in self.values.items():
            read, restore, same = _STATE[name]
            after = read()
            if not (same(before, after) if same else before == after):
                changes.append(name if same else f"{name}: {before!r} -> {after!r}")
                restore(before)
        return changes

    def check(self, during: str) -> None:
        """Raise ``ImplementationFault`` naming what changed (after undoing it)."""
        changes = self.restore_changes()
        if changes:
            raise ImplementationFault("the implementation changed global state: " + "; ".join(changes)
                                      + f" (restored by the kit), {during}")


@dataclass
class Call:
    """A call of the implementation in progress, or a long run of calls (``steps`` of them, such as
    a training run, which sets ``done`` as it goes): a timeout names it."""

    description: str
    started: float
    steps: Optional[int] = None
    done: int = 0


# The calls in progress, outermost first.
_current_call: list = []


@contextlib.contextmanager
def calling(description: str, *, steps: Optional[int] = None) -> Iterator[Call]:
    """Mark the block as a call of the implementation, or, with ``steps``, as a run of that many
    steps that updates ``done`` (``description`` names it in a timeout)."""
    _current_call.append(Call(description, time.monotonic(), steps))
    try:
        yield _current_call[-1]
    finally:
        _current_call.pop()


def _in_gc_callback(frame) -> bool:
    """Whether ``frame`` runs inside a garbage-collector callback (hypothesis installs one): an
    exception raised there is printed and dropped by the interpreter, never seen by the check, and
    one raised while the interpreter builds objects in C (``ast.parse``) leaves it inconsistent."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks:
            return True
        frame = frame.f_back
    return False


HANG = "the implementation hangs or is far too slow "   # what a timeout in a call says, unless judged slow


def _interrupt(limit: float) -> Callable:
    def handler(signum, frame):
        if _in_gc_callback(frame):   # interrupt once the callback has returned
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        now = time.monotonic()
        outer = _current_call[0] if _current_call else None
        inner = _current_call[-1] if _current_call else None
        if outer is not None and outer.steps is not None:
            where = (f"{outer.description} had done {outer.done} of its {outer.steps} steps in "
                     f"{now - outer.started:.1f} s")
            if inner is not outer:
                where += f" (in the call {inner.description} at the time)"
        elif inner is not None:
            where = f"{HANG}in the call {inner.description}, running for {now - inner.started:.1f} s"
        else:
            where = ("outside the implementation's forward calls (in its backward, or in the check's own work "
                     "around them)")
        raise CheckTimeout(limit, where)
    return handler


@contextlib.contextmanager
def time_limit(seconds: float, stack_dump_fd: Optional[int]) -> Iterator[None]:
    """Interrupt the block after ``seconds`` with ``CheckTimeout`` (SIGALRM, main thread). A hang
    in native code never returns to the interpreter to see the signal: then, after twice the limit
    plus 10 s, faulthandler writes every thread's stack to ``stack_dump_fd`` (a copy of the real
    stderr: pytest captures fd 2) and ends the process with exit code 1, so the run's time stays
    bounded (under pytest-xdist only that worker ends, and is replaced). ``None`` leaves the
    faulthandler timer to its owner (pytest's own ``faulthandler_timeout``)."""
    if seconds <= 0:
        yield
        return
    soft = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if soft:
        previous = signal.signal(signal.SIGALRM, _interrupt(seconds))
        signal.setitimer(signal.ITIMER_REAL, seconds)
    if stack_dump_fd is not None:
        faulthandler.dump_traceback_later(2 * seconds + 10, exit=True, file=stack_dump_fd)
    try:
        yield
    finally:
        if stack_dump_fd is not None:
            faulthandler.cancel_dump_traceback_later()
        if soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def timeout_behind(error: BaseException) -> Optional[CheckTimeout]:
    """The ``CheckTimeout`` that ``error`` is, or that it was raised from: hypothesis turns a
    timeout during its data generation into ``FlakyStrategyDefinition``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CheckTimeout):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


NOT_RUN_PREFIX = "not run: "


@dataclass(frozen=True)
class Size:
    """How large a run of a check is: ``elements`` (the product of the parameters that size it),
    and those parameters, ``((name, value in words), ...)``."""

    elements: int
    parameters: tuple

    def __str__(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.parameters) + f": {self.elements} elements"


class HangLedger:
    """Which runs of the checks ran past the time limit and which finished, and so which of
    the remaining runs are not run (reported apart, as not run): too slow at their size, or
    taken to hang.

    Slow is not hung: a run that times out where a run of the same check function at a smaller
    ``Size`` finished, outside the parameters it hangs on (``too_slow``), is too slow at its size;
    the function's remaining runs at least as large are not run, the smaller ones are (the plugin
    runs each function's sized runs from small to large). Any other timeout is taken for a hang:
    after ``per_check`` of them in one check function, its remaining runs that share the hung
    runs' parameters are not run: those parameters on which every hung run agrees and that some
    finished run of the function did not have (a loss that hangs on reduction='sum' has its
    remaining 'sum' runs not run, the others run). Where no parameter tells them apart, every
    remaining run of the function is not run; a run outside them that hangs too narrows the
    shared parameters. After ``in_all`` timeouts of either kind no check runs: a hanging or slow
    implementation costs at most ``in_all`` times the limit."""

    def __init__(self, per_check: int, in_all: int) -> None:
        self.per_check = per_check
        self.in_all = in_all
        self.hung: list = []            # (function, params, nodeid) of each run taken to hang
        self.slow: dict = {}            # function -> (Size, nodeid) of its smallest run too slow at its size
        self.timeouts: list = []        # nodeid of every run that timed out
        self.finished: dict = {}        # function -> (params, Size or None) of each run within the limit

    def too_slow(self, function: str, params: dict, size: Optional[Size]) -> bool:
        """Whether a run that timed out is too slow at its size rather than hung: a run of the same
        function at a smaller size finished within the limit (its smallest runs come first), and
        the run does not share the parameters on which the function's runs taken to hang agree
        (a loss that hangs on reduction='sum' at the smallest size hangs on it at every size)."""
        if size is None or not any(other is not None and other.elements < size.elements
                                   for _, other in self.finished.get(function, ())):
            return False
        hung = [p for f, p, _ in self.hung if f == function]
        sizing = {name for name, _ in size.parameters}
        shared = {k: v for k, v in (hung[0] if hung else {}).items()
                  if k not in sizing and all(p.get(k) == v for p in hung)}
        return not hung or any(params.get(k) != v for k, v in shared.items())

    def record(self, function: str, params: dict, nodeid: str, *, timed_out: bool, size: Optional[Size] = None,
               slow: bool = False) -> None:
        """A run that finished, or that timed out (``slow``: too slow at ``size``, else taken to hang)."""
        if not timed_out:
            self.finished.setdefault(function, []).append((params, size))
            return
        self.timeouts.append(nodeid)
        if slow:
            if function not in self.slow or size.elements < self.slow[function][0].elements:
                self.slow[function] = (size, nodeid)
        else:
            self.hung.append((function, params, nodeid))

    def not_run(self, function: str, params: dict, size: Optional[Size] = None) -> Optional[str]:
        """Why the run of ``function`` with ``params`` at ``size`` is not run, or ``None`` to run it."""
        if len(self.timeouts) >= self.in_all:
            return (f"{NOT_RUN_PREFIX}the implementation already ran past the time limit in {len(self.timeouts)} "
                    f"checks (first: {self.timeouts[0]}); every remaining check is taken to hang")
        if function in self.slow and size is not None and size.elements >= self.slow[function][0].elements:
            slowest, nodeid = self.slow[function]
            return (f"{NOT_RUN_PREFIX}too slow at this size ({size}): this check ran past the time limit at "
                    f"{slowest} ({nodeid}); its runs at least as large are not run, the smaller ones are")
        hung = [(p, nodeid) for f, p, nodeid in self.hung if f == function]
        if len(hung) < self.per_check:
            return None
        finished = [p for p, _ in self.finished.get(function, ())]
        shared = {k: v for k, v in hung[0][0].items() if all(p.get(k) == v for p, _ in hung)}
        telling = {k: v for k, v in shared.items() if any(p.get(k) != v for p in finished)}
        if any(params.get(k) != v for k, v in telling.items()):
            return None
        which = ", ".join(f"{k}={v}" for k, v in telling.items())
        return (f"{NOT_RUN_PREFIX}this check already ran past the time limit in {len(hung)} runs"
                + (f" with {which}" if which else "") + f" (first: {hung[0][1]}); it is taken to hang"
                + (f" with {which}" if which else " on every run"))


SECTION_LIMIT = 4000


def truncate_sections(sections: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Captured output cut to its first ``SECTION_LIMIT`` characters: an implementation that
    prints megabytes per call must not flood the failure report."""
    return [(title, content if len(content) <= SECTION_LIMIT else
             content[:SECTION_LIMIT] + f"\n[... {len(content) - SECTION_LIMIT} more characters cut by the "
                                       "conformance kit]\n") for title, content in sections]


def _trampoline(function: Callable, kwargs: dict):
    return function(**kwargs)


def crash_trampoline(function: Callable, nodeid: str) -> Callable:
    """``function`` called through a frame whose file name is the check's id: a crash of the
    process (segfault, abort) prints it in the fatal-error traceback (pytest's faulthandler), so
    the crashing check is named with its parameters even when no report can be written. (The
    frame's code is ``_trampoline``'s renamed, not compiled again for every check.)"""
    code = _trampoline.__code__.replace(co_filename=f"<conformance check {nodeid}>", co_name="check")
    trampoline = types.FunctionType(code, {})
    return lambda **kwargs: trampoline(function, kwargs)

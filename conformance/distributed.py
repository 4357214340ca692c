"""The worker group behind the vocab-parallel checks: ``world_size`` processes joined in a
torch.distributed process group, each running the implementation on its shard of the classes.

One group per world size lives for the session (``Groups``), started on first use: processes
forked from multiprocessing's fork server (which imports torch once, so a group costs a fork and
a rendezvous, not a torch import per rank), joined through a ``FileStore`` in a private temporary
folder, gloo over the loopback interface on cpu (nccl on cuda, a device per rank). A check sends
one ``Task`` (the full problem's tensors and the split of the classes) to every rank; each rank
calls the implementation on its slice, backpropagates its copy of the replicated loss with the
task's upstream gradient and answers with a ``RankResult``: its loss, its gradient slice and the
collectives it ran in forward and in backward (counted by a dispatch mode, so ``dist.all_reduce``,
the functional collectives and DTensor's are all seen).

Time limits: every collective of the group times out after ``collective_timeout`` seconds (the
process group's own timeout), and every task has a deadline; a rank that hangs past it, dies,
or raises fails the task with ``RankFailure`` naming the rank, and the group is torn down (its
processes killed) and started afresh for the next task.

Under a launcher (``torchrun``: ``WORLD_SIZE`` and ``RANK`` in the environment) the processes
already exist, each running the whole suite: ``LaunchedGroup`` joins the launcher's group
(``env://``), runs this rank's part of every task in this process and all-gathers the results, so
every rank judges the same results in the same order.
"""
from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from .guards import bits

__all__ = ["Task", "RankResult", "RankFailure", "WorkerGroup", "LaunchedGroup", "Groups", "launched_world_size",
           "collective_ops"]

# The namespaces of torch's collective operators: c10d's (``dist.all_reduce``), the functional
# collectives' (``torch.distributed._functional_collectives``, DTensor's redistributions) and
# their autograd variants. ``wait_tensor`` completes a functional collective and
# ``_wrap_tensor_autograd`` wraps its result: neither is another one.
_COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional", "_c10d_functional_autograd")
_NOT_COLLECTIVES = ("wait_tensor", "_wrap_tensor_autograd", "barrier", "monitored_barrier")


@dataclass(frozen=True)
class Task:
    """One call on every rank: the full problem (as fed: logits, target, the full class weights),
    the loss's keywords, the upstream gradient (``None``: forward only) and each rank's classes
    ``[start, stop)``."""

    logits: Tensor
    target: Tensor
    shards: tuple
    weight: Optional[Tensor] = None
    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    upstream: Optional[Tensor] = None
    repeats: int = 1   # calls timed on each rank (benchmarks); the results are the last call's


@dataclass(frozen=True)
class RankResult:
    """What one rank computed, on the cpu: its loss, its gradient slice (``None`` for forward
    only), the collectives of one forward and of one backward (``{operator: (count, bytes)}``,
    bytes of the tensors handed to each), the seconds of each timed call and the arguments the
    calls changed (``ARGUMENTS`` names)."""

    rank: int
    loss: Tensor
    grad: Optional[Tensor]
    forward: dict = field(default_factory=dict)
    backward: dict = field(default_factory=dict)
    seconds: tuple = ()
    changed: tuple = ()


# The arguments a rank hands the implementation, every one the caller's: compared bitwise after each call.
ARGUMENTS = ("logits shard", "target", "class weights", "upstream gradient")


class RankFailure(AssertionError):
    """A rank raised, hung past the task's deadline or died."""


def collective_ops(counts: dict) -> tuple[int, int]:
    """The number of collectives and the bytes they were handed, over every operator."""
    return sum(c for c, _ in counts.values()), sum(b for _, b in counts.values())


class _CollectiveCounter(TorchDispatchMode):
    """Counts the collective operators dispatched inside it, and the bytes of their tensors. A
    DTensor operation is let through first (``NotImplemented``) so that its collectives are seen
    as DTensor desugars into them (torch's ``CommDebugMode`` does the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        if any(t.__name__ == "DTensor" for t in types):
            return NotImplemented
        namespace, name = func.namespace, func._overloadpacket.__name__
        if namespace in _COLLECTIVE_NAMESPACES and name not in _NOT_COLLECTIVES:
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, Tensor)]
            count, size = self.counts.get(f"{namespace}.{name}", (0, 0))
            self.counts[f"{namespace}.{name}"] = (count + 1, size + sum(t.numel() * t.element_size() for t in tensors))
        return func(*args, **kwargs)


def _device_of(rank: int, backend: str) -> torch.device:
    return torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")


def execute(call: Callable, task: Task, rank: int, group: Any, device: torch.device) -> RankResult:
    """This rank's part of ``task``: ``call`` on its slice, then backward with the upstream gradient."""
    start, stop = task.shards[rank]
    local = task.logits[:, start:stop].to(device)
    target = task.target.to(device)
    weight = None if task.weight is None else task.weight.to(device)
    upstream = None if task.upstream is None else task.upstream.to(device)
    seconds, forward, backward, changed = [], {}, {}, set()
    for _ in range(task.repeats):
        x = local.detach().clone().requires_grad_(upstream is not None)
        handed = dict(zip(ARGUMENTS, (x, target, weight, upstream)))
        before = {name: bits(t) for name, t in handed.items() if t is not None}
        began = time.perf_counter()
        with _CollectiveCounter() as counter:
            loss = call(x, target, weight=weight, ignore_index=task.ignore_index, reduction=task.reduction,
                        label_smoothing=task.label_smoothing, group=group, vocab_start=start)
        if not isinstance(loss, Tensor) or type(loss).__name__ == "DTensor":
            raise TypeError(f"the implementation returned {type(loss).__module__}.{type(loss).__qualname__}, "
                            "expected a torch.Tensor (of a replicated DTensor loss: its to_local())")
        forward = counter.counts
        if upstream is not None:
            with _CollectiveCounter() as counter:
                loss.backward(upstream)
            backward = counter.counts
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - began)
        changed |= {name for name, kept in before.items() if not torch.equal(bits(handed[name]), kept)}
    grad = None if x.grad is None else x.grad.detach().cpu()
    if upstream is not None and grad is None:
        grad = torch.zeros_like(x, device="cpu")  # nothing reached this rank's logits
    return RankResult(rank=rank, loss=loss.detach().cpu(), grad=grad, forward=forward, backward=backward,
                      seconds=tuple(seconds), changed=tuple(name for name in ARGUMENTS if name in changed))


def _failure_text(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(lines[-6:])


def _serve(rank: int, world_size: int, store_path: str, backend: str, collective_timeout: float,
           payload: bytes, connection) -> None:
    """A worker's life: join the group, load the implementation, answer tasks until told to stop."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    device = _device_of(rank, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=collective_timeout))
    try:
        call = pickle.loads(payload)
        connection.send(("ready", None))
    except BaseException as exc:
        connection.send(("error", f"loading the implementation raised {_failure_text(exc)}"))
        return
    while True:
        task = connection.recv()
        if task is None:
            break
        try:
            connection.send(("result", execute(call, task, rank, dist.group.WORLD, device)))
        except BaseException as exc:
            connection.send(("error", _failure_text(exc)))
    dist.destroy_process_group()


def _context() -> multiprocessing.context.BaseContext:
    """The fork server, with torch imported once in it (every worker is forked from it); torch._dynamo
    too, which a dispatch mode imports on first use (2 s a rank otherwise)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "conformance.distributed"])
    return context


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """multiprocessing re-imports the main module in every worker it starts (a script without a
    main guard would run again, a program read from stdin cannot be found); the workers need
    nothing of it (their target and the implementation are importable), so it is hidden while
    they start."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class WorkerGroup:
    """``world_size`` worker processes in one process group, running ``call`` (pickled by reference:
    an importable module-level function)."""

    def __init__(self, call: Callable, world_size: int, *, backend: str, collective_timeout: float,
                 deadline: float, start_deadline: Optional[float] = None) -> None:
        self.world_size, self.deadline = world_size, deadline
        try:
            payload = pickle.dumps(call)
        except Exception as exc:
            raise RankFailure(f"the implementation cannot be sent to the worker processes ({type(exc).__name__}: "
                              f"{exc}): a vocab-parallel loss must be importable there (--conformance-impl "
                              "module:attr, or a module-level function from the hook)") from None
        self._folder = tempfile.mkdtemp(prefix="conformance-vp-")
        context = _context()
        self._connections, self._processes = [], []
        with _main_module_hidden():
            for rank in range(world_size):
                ours, theirs = context.Pipe()
                process = context.Process(target=_serve, name=f"conformance-rank-{rank}", daemon=True,
                                          args=(rank, world_size, os.path.join(self._folder, "store"), backend,
                                                collective_timeout, payload, theirs))
                process.start()
                theirs.close()
                self._connections.append(ours)
                self._processes.append(process)
        try:
            self._gather("starting the group", f"the {backend} process group and the implementation's import",
                         start_deadline or deadline)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def run(self, task: Task) -> list[RankResult]:
        """Every rank's result for ``task`` (``RankFailure`` after tearing the group down if any rank
        raised, hung past the deadline or died)."""
        try:
            for connection in self._connections:
                connection.send(task)
            return self._gather("the task", "the call and its backward", self.deadline)
        except OSError as exc:
            self.close()
            raise RankFailure(f"the worker group broke while sending the task: {exc}") from None
        except BaseException:  # a failure, or the check's own time limit: the group's state is unknown
            self.close()
            raise

    def _gather(self, what: str, doing: str, deadline: float) -> list:
        answers: dict = {}
        pending = dict(enumerate(self._connections))
        ends = time.monotonic() + deadline
        dead: dict = {}
        while pending:
            waiting = list(pending.values()) + [self._processes[r].sentinel for r in pending]
            ready = multiprocessing.connection.wait(waiting, timeout=max(0.0, ends - time.monotonic()))
            if not ready:
                break
            for rank in list(pending):
                if pending[rank] in ready or pending[rank].poll():
                    try:
                        answers[rank] = pending.pop(rank).recv()
                    except (EOFError, OSError):
                        pending.pop(rank, None)
                        dead[rank] = self._processes[rank]
                elif self._processes[rank].sentinel in ready:
                    pending.pop(rank)
                    dead[rank] = self._processes[rank]
        problems = []
        for rank, process in sorted(dead.items()):
            process.join(1)
            problems.append(f"rank {rank} died (exit code {process.exitcode}) during {what}")
        if pending:
            problems.append(f"rank{'s' if len(pending) > 1 else ''} {', '.join(map(str, sorted(pending)))} did not "
                            f"answer within the {deadline:g} s deadline of {what} ({doing}): "
                            "it hangs or is far too slow")
        errors = {rank: text for rank, (kind, text) in answers.items() if kind == "error"}
        problems += [f"rank {rank} raised {text.strip()}" for rank, text in sorted(errors.items())]
        if problems:
            raise RankFailure(f"world size {self.world_size}: " + "\n".join(problems))
        return [answers[rank][1] for rank in range(self.world_size)]

    def close(self) -> None:
        """Stop every worker (politely, then by force) and remove the rendezvous folder."""
        for connection in self._connections:
            try:
                connection.send(None)
            except OSError:
                pass
        ends = time.monotonic() + 2  # for all of them: a hung rank never reads the stop
        for process in self._processes:
            process.join(max(0.0, ends - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for connection in self._connections:
            connection.close()
        self._connections, self._processes = [], []
        shutil.rmtree(self._folder, ignore_errors=True)


def launched_world_size() -> Optional[int]:
    """The launcher's world size when this process was started by one (``torchrun``), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


class LaunchedGroup:
    """The launcher's processes: this one runs its own rank's part of each task and all-gathers the
    results (every rank runs the same checks in the same order)."""

    def __init__(self, call: Callable, *, backend: str, collective_timeout: float) -> None:
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=collective_timeout))
        self.call, self.world_size, self.rank = call, dist.get_world_size(), dist.get_rank()
        self.device = _device_of(int(os.environ.get("LOCAL_RANK", self.rank)), backend)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def run(self, task: Task) -> list[RankResult]:
        try:
            mine = ("result", execute(self.call, task, self.rank, dist.group.WORLD, self.device))
        except Exception as exc:
            mine = ("error", _failure_text(exc))
        answers: list = [None] * self.world_size
        dist.all_gather_object(answers, mine)
        errors = [f"rank {rank} raised {text.strip()}" for rank, (kind, text) in enumerate(answers) if kind == "error"]
        if errors:
            raise RankFailure(f"world size {self.world_size}: " + "\n".join(errors))
        return [result for _, result in answers]

    def close(self) -> None:
        """The launcher's group outlives the checks: its processes end it."""


class Groups:
    """The session's worker groups, one per world size and device, started on first use and
    restarted after a failure; ``close`` ends them all."""

    def __init__(self, call: Callable, *, collective_timeout: float, deadline: float,
                 start_deadline: Optional[float] = None) -> None:
        self.call, self.collective_timeout, self.deadline = call, collective_timeout, deadline
        self.start_deadline = start_deadline
        self._groups: dict = {}

    def run(self, world_size: int, device: str, task: Task) -> list[RankResult]:
        key = (world_size, device)
        group = self._groups.get(key)
        backend = "nccl" if device == "cuda" else "gloo"
        if group is None:
            if launched_world_size() is not None:
                group = LaunchedGroup(self.call, backend=backend, collective_timeout=self.collective_timeout)
            else:
                group = WorkerGroup(self.call, world_size, backend=backend, collective_timeout=self.collective_timeout,
                                    deadline=self.deadline, start_deadline=self.start_deadline)
            self._groups[key] = group
        try:
            return group.run(task)
        except BaseException:
            if isinstance(group, WorkerGroup):
                del self._groups[key]  # torn down: the next task starts a fresh group
            raise

    def close(self) -> None:
        for group in self._groups.values():
            group.close()
        self._groups.clear()

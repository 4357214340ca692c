"""The memory a call allocates: the most it holds at once beyond what was allocated when it
started (its peak), and what it leaves allocated when it returns (what it retains).

cuda: the caching allocator's own counters (``memory_allocated``, ``max_memory_allocated``).
cpu: torch 2.13 keeps no statistics of its CPU allocator (there is no ``torch.cpu.memory_stats``,
and ``torch.accelerator``'s counters are for accelerators), so the call runs under the autograd
profiler with ``profile_memory=True``, which records each allocation and free of the CPU
allocator with its size, in the calling thread and in the threads torch hands its work to;
summed in time order they give the bytes allocated at every moment. The profiler does not know
the size of a block allocated before it started, so freeing one counts 0 (and torch warns): the
measured function frees only what it allocated, as a loss call does, or what an earlier
measurement saw allocated (``growth``). Its state is per thread: a free on a thread torch did not
start (another framework's runtime, a Python thread) is not recorded, and reads as kept (torch
2.13's ``profile_all_threads`` records no memory events at all); the adapters hand other
frameworks copies, not torch's memory, for this. Unlike the process's resident set, this counts
what torch allocated, not what the C allocator kept or the kernel mapped. Other devices: ``None``.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["Footprint", "footprint", "growth", "freeze_for_run", "freeze_collected"]

# Whether a run froze what existed at its start (``freeze_for_run``): ``gc.get_freeze_count``
# would say as much, but it counts the frozen objects one by one (40 ms in a run's heap, 0.4 s of
# a default run's memory checks).
_run_frozen = False


@dataclass(frozen=True)
class Footprint:
    """Bytes beyond those allocated when the call started: the most at once, and those left at its end."""

    peak: int
    retained: int


def footprint(fn: Callable[[], object], device: str) -> Optional[Footprint]:
    """What ``fn()`` allocates on ``device``, its result dropped and the reference cycles it made
    collected before the end is read (a tensor a loss keeps only through a cycle is freed by the
    next collection, not leaked); ``None`` where the device keeps no account. The objects that
    exist when it starts are frozen meanwhile (``gc.freeze``), so that collection only looks
    through what the call made: a full one takes a quarter of a second in a pytest process."""
    if device == "cuda":
        gc.collect()   # garbage from before, freed during the call, would offset what the call keeps
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _frozen(fn)
        torch.cuda.synchronize()
        return Footprint(torch.cuda.max_memory_allocated() - start, torch.cuda.memory_allocated() - start)
    if device != "cpu":
        _frozen(fn)
        return None
    with torch.autograd.profiler.profile(profile_memory=True) as profile:
        _frozen(fn)
    now = peak = 0
    events = [e for e in profile.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    for event in sorted(events, key=lambda e: e.start_ns()):
        now += event.nbytes()
        peak = max(peak, now)
    return Footprint(peak, now)


def growth(fn: Callable[[], object], calls: int, device: str) -> Optional[Footprint]:
    """What ``calls`` calls of ``fn`` leave allocated, measured (``footprint``) after as many calls
    measured the same way. Those first calls fill any cache of at most ``calls`` entries; and
    what a call frees late (the previous call's tensors, dropped by the next call) is freed within
    the measured calls as much as it is left after them, counted with its size because the
    profiler saw it allocated. A call that keeps anything keeps it in the measured calls too.
    ``None`` where the device keeps no account."""
    def repeated():
        for _ in range(calls):
            fn()

    footprint(repeated, device)
    return footprint(repeated, device)


def freeze_for_run() -> Callable[[], None]:
    """Freeze what exists now for the rest of a run (``plugin.pytest_configure``): it lives as long
    as the run, and full collections need not look through it. Returns what ends the freeze."""
    global _run_frozen
    gc.freeze()
    _run_frozen = True
    return _end_run_freeze


def freeze_collected() -> None:
    """Freeze, for the rest of the run, what collection built (``plugin.pytest_collection_finish``):
    the checks' items live as long as the run, and every full collection while the checks run would
    look through them again (26 of them, 0.86 s of a default run). Its garbage is collected first."""
    if _run_frozen:
        gc.collect()
        gc.freeze()


def _end_run_freeze() -> None:
    global _run_frozen
    gc.unfreeze()
    _run_frozen = False


def _frozen(fn: Callable[[], object]) -> None:
    """``fn()`` and a collection with what exists frozen; unfrozen after unless the run froze
    objects before (``freeze_for_run``), a freeze that ends with the run."""
    gc.freeze()
    try:
        fn()
        gc.collect()
    finally:
        if not _run_frozen:
            gc.unfreeze()

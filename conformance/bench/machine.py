"""The machine a benchmark runs on: waiting for a device's queued work, its copy bandwidth (the
roofline a loss's bytes per second are held against), the extra memory a call takes, and the
settings that change all of these (recorded with every run)."""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

__all__ = ["SETTINGS", "synchronize", "copy_bandwidth", "peak_extra_memory", "machine_info"]

# Environment variables that change what the benchmarks measure. THP_MEM_ALLOC_ENABLE=1 backs
# torch's large CPU allocations with transparent huge pages, so a fresh buffer is not zero-filled
# one 4 KiB page fault at a time: torch's CPU loss on 4096 x 32000 logits runs about twice as fast.
SETTINGS = ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY", "LD_PRELOAD",
            "MALLOC_CONF", "MALLOC_ARENA_MAX", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF",
            "CUDA_VISIBLE_DEVICES")


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer around a call measures the call."""
    if device != "cpu":
        getattr(torch, device).synchronize()


def copy_bandwidth(device: str, *, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second that ``dst.copy_(src)`` moves (read plus write), best of ``repeats``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_extra_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Bytes that ``fn()`` needs beyond what is allocated when it starts: its peak minus its start.

    cuda: the caching allocator's ``max_memory_allocated``. cpu: the process's peak resident set
    (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), which counts the pages a call
    actually touches; ``None`` where that is not available.
    """
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - start
    if device != "cpu":
        fn()
        return None
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current VmRSS
        start = _status_kib("VmRSS")
    except OSError:
        fn()
        return None
    fn()
    return max(0, _status_kib("VmHWM") - start) * 1024


def machine_info() -> dict:
    """What changes the numbers besides the hardware: threads, allocator settings, torch's build."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "environment": {name: os.environ[name] for name in SETTINGS if name in os.environ},
    }
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(), "version": torch.version.cuda}
    return info

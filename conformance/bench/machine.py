"""The machine a benchmark runs on: waiting for a device's queued work, its copy bandwidth (the
roofline a loss's bytes per second are held against), and the settings that change these
(recorded with every run). The extra memory a call takes is ``conformance.memory``'s."""
from __future__ import annotations

import os
import time

import torch

__all__ = ["SETTINGS", "synchronize", "copy_bandwidth", "machine_info"]

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

"""What a benchmark beside torch needs besides a timer: the inputs, the bytes a loss must move,
the machine's copy bandwidth to hold them against, the extra memory a call takes, and the
settings that change all of these.

The bytes model is the roofline's floor, what a fused kernel cannot avoid: the forward reads
the logits once; the backward reads them once more (or something their size that the forward
saved) and writes the gradient once; forward and backward together read the logits once and
write the gradient once. Achieved bytes per second over the copy bandwidth (a copy reads and
writes every byte, the cheapest way to move memory there is) says how far a loss is from the
memory bound it is on at these sizes.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["OPS", "ACCELERATOR_SHAPES", "CPU_SHAPES", "LARGE_SHAPE", "shapes_for", "synchronize", "inputs",
           "LINEAR_OPS", "LINEAR_CPU_SHAPES", "LINEAR_ACCELERATOR_SHAPES", "linear_shapes_for", "linear_inputs",
           "linear_traffic_bytes", "traffic_bytes", "copy_bandwidth", "peak_extra_memory", "machine_info"]

OPS = ("forward", "backward", "forward+backward")

# Language-model shapes: a 32k vocabulary (Llama 2) with a 4k-token batch, and a 128k vocabulary
# (Llama 3) with 1k tokens; on cuda also 8k tokens of the 128k vocabulary. A cpu gets the same
# vocabularies with a sixteenth of the tokens (33 MB of float32 logits): on a loaded 2-core
# machine 4096 x 32000 takes half a second a call, and a paired interval that survives rounds
# doubled by other processes needs 40 to 60 pairs per group (tests/test_bench.py), which only
# calls of tens of milliseconds fit into a run of three minutes.
ACCELERATOR_SHAPES = ((4096, 32000), (1024, 128256))
CPU_SHAPES = ((256, 32000), (64, 128256))
LARGE_SHAPE = (8192, 128256)

# Environment variables that change what the benchmarks measure. THP_MEM_ALLOC_ENABLE=1 backs
# torch's large CPU allocations with transparent huge pages, so a fresh buffer is not zero-filled
# one 4 KiB page fault at a time: torch's CPU loss on 4096 x 32000 logits runs about twice as fast.
SETTINGS = ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY", "LD_PRELOAD",
            "MALLOC_CONF", "MALLOC_ARENA_MAX", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF",
            "CUDA_VISIBLE_DEVICES")


# Linear cross entropy (N, H, V): hidden states of a small model's width at the same token counts
# and vocabularies (the cpu's a sixteenth again); the composition materialises N x V logits.
LINEAR_ACCELERATOR_SHAPES = ((4096, 2048, 32000), (1024, 2048, 128256))
LINEAR_CPU_SHAPES = ((256, 128, 32000), (64, 128, 128256))
LINEAR_OPS = ("forward", "forward+backward")


def linear_shapes_for(device: str) -> tuple:
    return LINEAR_CPU_SHAPES if device == "cpu" else LINEAR_ACCELERATOR_SHAPES


@functools.lru_cache(maxsize=1)
def linear_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int) -> tuple:
    """Hidden states, a classifier weight (scaled for unit-sized logits) and bias, and targets."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=generator).to(dtype)
    weight = (torch.randn(v, h, generator=generator) / h ** 0.5).to(dtype)
    bias = (torch.randn(v, generator=generator) / 4).to(dtype)
    target = torch.randint(v, (n,), generator=generator)
    return tuple(t.to(device) for t in (hidden, weight, bias, target))


def linear_traffic_bytes(op: str, n: int, h: int, v: int, dtype: torch.dtype) -> int:
    """What a linear loss must move at least: the hidden states and the weight read once (forward),
    and their gradients written once more (forward and backward); the logits need never exist."""
    inputs = (n * h + v * h + v) * dtype.itemsize
    return inputs if op == "forward" else 2 * inputs


def shapes_for(device: str) -> tuple:
    """The default benchmark shapes on ``device``."""
    if device == "cpu":
        return CPU_SHAPES
    return ACCELERATOR_SHAPES + ((LARGE_SHAPE,) if device == "cuda" else ())


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer around a call measures the call."""
    if device != "cpu":
        getattr(torch, device).synchronize()


@functools.lru_cache(maxsize=1)
def inputs(n: int, c: int, dtype: torch.dtype, device: str, seed: int) -> tuple[Tensor, Tensor]:
    """Standard-normal logits (N, C) in ``dtype`` and uniform targets, generated once per shape.

    The cache holds one problem: the benchmarks of one shape and dtype run one after the other,
    and a second 4096 x 32000 copy would only cost memory.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator, dtype=torch.float32).to(dtype)
    target = torch.randint(c, (n,), generator=generator)
    return logits.to(device), target.to(device)


def traffic_bytes(op: str, n: int, c: int, dtype: torch.dtype) -> int:
    """The bytes ``op`` must move at least (see the module docstring); targets are negligible."""
    if op not in OPS:
        raise ValueError(f"op={op!r}: expected one of {OPS}")
    logits = n * c * dtype.itemsize
    return logits if op == "forward" else 2 * logits


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

"""What a benchmark times: its ops and shapes, its inputs, and the bytes a loss must move at least.

The bytes model is the roofline's floor, what a fused kernel cannot avoid: the forward reads
the logits once; the backward reads them once more (or something their size that the forward
saved) and writes the gradient once; forward and backward together read the logits once and
write the gradient once. Achieved bytes per second over the copy bandwidth (a copy reads and
writes every byte, the cheapest way to move memory there is) says how far a loss is from the
memory bound it is on at these sizes.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["OPS", "ACCELERATOR_SHAPES", "CPU_SHAPES", "LARGE_SHAPE", "shapes_for", "inputs", "traffic_bytes",
           "LINEAR_OPS", "LINEAR_CPU_SHAPES", "LINEAR_ACCELERATOR_SHAPES", "linear_shapes_for", "linear_inputs",
           "linear_traffic_bytes", "SOFTMAX_OPS", "softmax_traffic_bytes"]

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


# Linear cross entropy (N, H, V): a small model's hidden width at language-model token counts and
# vocabularies; the composition materialises N x V logits. A cpu gets far smaller ones: torch
# 2.13's chunked path runs 64 and 32 row chunks there, each a handful of small ops that a loaded
# 2-core machine delays by scheduler ticks (seconds a call at 256 x 128 x 32000).
LINEAR_ACCELERATOR_SHAPES = ((4096, 2048, 32000), (1024, 2048, 128256))
LINEAR_CPU_SHAPES = ((128, 64, 4096), (32, 64, 32768))
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


# A softmax form is timed on the loss benchmarks' logits shapes, along the classes.
SOFTMAX_OPS = ("forward", "forward+backward")


def softmax_traffic_bytes(op: str, n: int, c: int, dtype: torch.dtype) -> int:
    """What a softmax form must move at least: the forward reads the input and writes the output;
    the backward reads the output (or the input) and the upstream gradient and writes the input's
    gradient, so forward and backward together move five times the input's bytes."""
    if op not in SOFTMAX_OPS:
        raise ValueError(f"op={op!r}: expected one of {SOFTMAX_OPS}")
    return (2 if op == "forward" else 5) * n * c * dtype.itemsize


def shapes_for(device: str) -> tuple:
    """The default benchmark shapes on ``device``."""
    if device == "cpu":
        return CPU_SHAPES
    return ACCELERATOR_SHAPES + ((LARGE_SHAPE,) if device == "cuda" else ())


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

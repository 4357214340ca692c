"""Limits that are not the error bound of one result: how far two runs of a loss that declares
``nondeterministic`` may differ (``rerun_*``), and the memory a linear loss may hold at its peak
and keep after its calls (``conformance.memory`` measures it; the suite's ``test_memory`` applies
these).

Run to run. A loss that declares ``nondeterministic`` (atomic adds: its sums take their terms in
the order the scheduler picks) is held to the difference of two such orders, not to bitwise
equality. A sum of n terms in any order errs by gamma_{n-1} sum_i |x_i| (Higham (4.4)), so two
orders differ by at most twice that. The loss sums C exponentials per position, whose log then
moves by at most 2 gamma_C (the terms are positive: a relative change of s), weighted by the
position's a; and N position losses, non-negative, so sum_i |x_i| is the result itself. The
gradient's softmax shares its row's sum (2 gamma_C relative, times the row's scale |upstream| a),
and the mean's divisor is a sum of N weights (2 gamma_N relative). A half result is rounded once
more in each run: 2 u_o |result|.

Memory: each limit's reasoning is at its function.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import Evaluation
from .ground import (
    DEFAULT_CONTRACT,
    _check_contract,
    _gamma,
    _is_half,
    _rows_shaped_like,
    compute_dtype,
    underflow_floor,
    unit_roundoff,
)


def rerun_value_bound(ev: Evaluation, first: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable difference of two runs' losses where the sums' order may change."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    n_rows, first = ev.row_loss.shape[0], first.detach().double().cpu().abs()
    per_position = 2 * _gamma(ev.num_classes, u) * ev.weighted_target.sum(1)
    if ev.reduction == "none":
        compute = per_position.reshape(first.shape)
    else:
        compute = per_position.sum() / (ev.denominator.abs() if ev.reduction == "mean" else 1)
        compute = compute + 2 * _gamma(n_rows, u) * first
    rounding = 2 * u_o * first if _is_half(dtype) else torch.zeros_like(first)
    return compute + rounding + underflow_floor(dtype)


def rerun_gradient_bound(ev: Evaluation, grad_output: Tensor, first: Tensor, dtype: torch.dtype,
                         contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable difference of two runs' logit gradients where the sums' order may change."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    first = first.detach().double().cpu().abs()
    scale = ev.upstream_rows(grad_output).abs() * ev.weighted_target.sum(1)
    shared = _rows_shaped_like(scale[:, None].expand(-1, ev.num_classes), first)
    compute = 2 * _gamma(ev.num_classes, u) * (first + shared) + 2 * _gamma(ev.row_loss.shape[0], u) * first
    rounding = 2 * u_o * first if _is_half(dtype) else torch.zeros_like(first)
    return compute + rounding + underflow_floor(dtype)


def chunked_peak_limit(n: int, v: int, dtype: torch.dtype) -> int:
    """Bytes a linear loss that declares ``memory = "chunked"`` must stay below, forward and backward
    together: the size of its ``n x v`` logits in the input's dtype.

    A loss that forms the logits holds all ``n v`` of them at once, in the input's dtype at the
    least (most hold them in float32, with their softmax or gradient beside them: torch's
    composition peaks at three times their float32 size), so its peak reaches ``n v itemsize``.
    One that chunks holds a chunk's logits (Liger-Kernel and torch's chunked path size a chunk to
    about ``n h`` elements), the three gradients (``n h + v h + v``) and what it saves for
    backward, all of order ``(n + v) h``. A case with ``n v`` well above ``(n + v) h`` tells the
    two apart at this line: at ``test_memory``'s 1024 x 64 x 4096 ('mean'),
    ``n v / ((n + v) h) = 12.8``, and torch 2.13's chunked path peaks at 2.5 MiB in float32 (5.1
    MiB in float16 and bfloat16, its float32 copies of the weight and its gradient), the chunked
    fixture at 2.6 MiB (4.2), the composition at 48 MiB (24), against 16 MiB of float32 logits
    (8 MiB in a half dtype)."""
    return n * v * dtype.itemsize


def growth_limit(calls: int) -> int:
    """Bytes that ``calls`` identical calls, after ``calls`` others measured the same way
    (``memory.growth``), may leave allocated: fewer than one byte a call. A call that keeps nothing
    leaves the allocated bytes as it found them, whatever its sizes (its output, its graph and its
    saved tensors are freed with it; a cache of at most ``calls`` entries is full after the first
    calls; what a call frees late, such as the previous call's tensors dropped by the next call,
    is freed within the measured calls as much as it is left after them; reference cycles are
    collected before the end is read); one that keeps anything of each call (its output, its
    graph, a saved tensor of one element) keeps at least one byte a call, ``calls`` bytes in all
    (cuda rounds each block up to 512)."""
    return calls

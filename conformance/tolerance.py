"""The tolerance policy: every bound the kit applies, derived here and nowhere else.

Notation: ``u`` is the unit roundoff of the precision an implementation computes in, ``u_o`` that
of the dtype it returns, ``n`` the number of classes, ``N`` the number of positions reduced. The
reference (``reference.Evaluation``) is exact float64 arithmetic on the *same rounded inputs*
the implementation saw, so input rounding never enters a bound.

Contract ``strict`` (the default):
  * float64 and float32 implementations compute in their own dtype (``u = u_o``);
  * float16 and bfloat16 implementations must be *as accurate as computing in float32 and
    rounding the result faithfully to the dtype* (``u = u(float32)``; result error below one ulp,
    ``2 * u_o * |result|``). A kernel that rounds a per-row statistic such as the logsumexp to
    the dtype breaks this for confident rows (FIELD.md: torch's CPU bf16 loss returns -0.0 where
    the true loss is 4e-4).

Forward error of one position, logits input (loss = sum_c a_c (lse - z_c)):
  * ``lse = m + log(sum_j exp(z_j - m))``: each ``z_j - m`` rounds (error ``u|z_j - m|``, which
    enters ``log s`` weighted by ``p_j``: ``u * spread``); the sum of ``n`` positive terms is
    relatively accurate to ``(n - 1) u`` in the worst case of any summation order (Higham,
    *Accuracy and Stability*, 4.2); ``exp`` and ``log`` to a few ulp (we allow 4 u); the final
    add rounds ``u|lse|``. Hence ``d_lse = u (|lse| + spread + n + 4)``.
  * each term ``a_c (lse - z_c)`` rounds twice and the ``n`` terms are summed: the error is at
    most ``A d_lse + (n + 2) u sum_c |a_c log p_c|`` with ``A = sum_c a_c``.
  log-probability input: ``(n + 1) u sum_c |a_c log p_c|``; probability input: the log adds
  ``u`` absolute per unit weight, ``(n + 2) u sum_c |a_c log p_c| + 2 u A``.

Reductions: a sum of ``N`` terms adds ``(N + 1) u sum_i |loss_i|``; the mean's divisor is itself
a sum (relative error ``(N + 1) u``) and the division rounds once more.

Gradient, logits input (g_j = s (A p_j - a_j), ``s`` the upstream gradient over the divisor):
  ``p_j = exp((z_j - m) - log s)`` is relatively accurate to
  ``d_lse + u(|z_j - m| + |log p_j|) + 4u``; forming ``A p_j - a_j`` and scaling rounds three
  more times. For float16/bfloat16 the result rounds faithfully (``2 u_o |g_j|``) and, because
  the gradient is a vector whose small components are numerically dominated by its largest one
  (every kernel computes ``p_j`` from a shared row statistic), each component may also be off by
  one rounding at the scale of the row's largest component: ``u_o max_k |g_k|``. That term still
  catches cancellation in the target component of a confident row (Liger#1268), because there
  the largest component is the tiny ``1 - p_y`` itself.

Every bound adds an underflow floor: the dtype's smallest subnormal plus float32's smallest
normal (kernels may flush subnormals in float32), times the magnitude of the scale.

Contract ``parity``: an implementation passes if its error is no worse than
``PARITY_FACTOR`` times torch's own error on the same device and dtype, plus the strict bound of
an exactly-rounded result (for users who only need parity with torch).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .reference import Evaluation

__all__ = ["CONTRACTS", "PARITY_FACTOR", "unit_roundoff", "compute_dtype", "value_bound", "grad_bound",
           "underflow_floor"]

CONTRACTS = ("strict", "parity")

# Parity mode: an implementation may be up to twice as far from the truth as torch on the same
# device and dtype (two independent roundings of the same size), never more.
PARITY_FACTOR = 2.0

_EXP_LOG_ULPS = 4


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next representable number (``eps / 2``)."""
    return torch.finfo(dtype).eps / 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the strict contract expects an implementation to compute in."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def underflow_floor(dtype: torch.dtype) -> float:
    """Absolute error allowed for results that underflow: subnormal spacing and float32 flush-to-zero."""
    info = torch.finfo(dtype)
    return info.tiny * info.eps + torch.finfo(torch.float32).tiny


def _abs_sum(a: Tensor, log_probs: Tensor) -> Tensor:
    return torch.where(a == 0, torch.zeros_like(a), (a * log_probs).abs()).sum(1)


def _lse_error(ev: Evaluation, u: float) -> Tensor:
    return u * (ev.logsumexp.abs() + ev.spread + ev.num_classes + _EXP_LOG_ULPS)


def _row_value_error(ev: Evaluation, u: float) -> Tensor:
    """Forward error of each position's loss when computed at unit roundoff ``u``."""
    a, n = ev.weighted_target, ev.num_classes
    terms = _abs_sum(a, ev.log_probs)
    if ev.input_kind == "logits":
        return a.sum(1) * _lse_error(ev, u) + (n + 2) * u * terms
    if ev.input_kind == "log_probs":
        return (n + 1) * u * terms
    return (n + 2) * u * terms + 2 * u * a.sum(1)


def value_bound(ev: Evaluation, dtype: torch.dtype) -> Tensor:
    """Largest acceptable ``|loss - reference|``, shaped like the reduced loss."""
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    row_err = _row_value_error(ev, u)
    expected = ev.loss.abs()
    if ev.reduction == "none":
        compute = row_err.reshape(expected.shape)
    else:
        n_rows = ev.row_loss.shape[0]
        compute = row_err.sum() + (n_rows + 1) * u * ev.row_loss.abs().sum()
        if ev.reduction == "mean":
            compute = compute / ev.denominator.abs() + (n_rows + 2) * u * expected
    faithful = 2 * u_o * expected if u_o > u else torch.zeros_like(expected)
    return compute + faithful + underflow_floor(dtype)


def grad_bound(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest acceptable ``|grad - reference grad|`` per input element, shaped like the input."""
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    s = ev.upstream_rows(grad_output).abs()[:, None]
    a = ev.weighted_target
    g = ev.grad(grad_output)
    g_rows = g.movedim(1, -1).reshape(a.shape) if g.dim() > 1 else g.reshape(a.shape)
    divisor_err = (ev.row_loss.shape[0] + 1) * u if ev.reduction == "mean" else 0.0
    if ev.input_kind == "logits":
        A = a.sum(1, keepdim=True)
        p = ev.log_probs.exp()
        z_minus_m = (ev.inputs - ev.inputs.amax(1, keepdim=True)).abs().nan_to_num(0.0, 0.0, 0.0)
        rel_p = _lse_error(ev, u)[:, None] + u * (z_minus_m + ev.log_probs.abs().nan_to_num(0.0, 0.0, 0.0)) \
            + _EXP_LOG_ULPS * u
        p_err = torch.where(p == 0, torch.zeros_like(p), p * rel_p)
        compute = s * (A * p_err + 3 * u * (A * p + a.abs()))
    else:
        compute = 4 * u * g_rows.abs()
    compute = compute + (2 * u + divisor_err) * g_rows.abs()
    if u_o > u:
        row_scale = g_rows.abs().amax(1, keepdim=True) if g_rows.numel() else g_rows.abs()
        compute = compute + 2 * u_o * g_rows.abs() + u_o * row_scale
    bound = compute + underflow_floor(dtype) * torch.clamp(s, min=1.0)
    if g.dim() > 1:
        return bound.reshape(g.movedim(1, -1).shape).movedim(-1, 1)
    return bound.reshape(g.shape)

"""The tolerance policy: every bound the kit applies, derived here and nowhere else.

Notation: ``u`` is the unit roundoff of the precision an implementation computes in, ``u_o`` that
of the dtype it returns, ``n`` the number of classes, ``N`` the number of positions reduced. The
reference (``reference.Evaluation``) is exact float64 arithmetic on the *same rounded inputs*
the implementation saw, so input rounding never enters a bound.

Contract ``strict`` (the default):
  * float64 and float32 implementations compute in their own dtype (``u = u_o``);
  * float16 and bfloat16 implementations must be *as accurate as computing in float32 and
    rounding to the dtype* (``u = u(float32)``), where the rounding may happen up to
    ``HALF_PRECISION_ROUNDINGS`` times, each to a quantity no larger than the result: the
    op-by-op composition torch's CPU kernels use for smoothing and weights (nll, smoothing term,
    their scaling and sum, each rounded) costs ``u_o |result|`` per step. Rounding anything
    *larger* than the result, such as the logsumexp of a confident row, is not allowed: that is
    the cancellation that makes torch's CPU bf16 loss return -0.0 where the true loss is 4e-4
    (FIELD.md), and no count of roundings of the result's size covers it.

Forward error of one position, logits input (loss = sum_c a_c (lse - z_c)):
  * ``log s = log(sum_j exp(z_j - m))``: each ``z_j - m`` rounds (error ``u|z_j - m|``, which
    enters ``log s`` weighted by ``p_j``: ``u * spread``); the sum of ``n`` positive terms is
    relatively accurate to ``(n - 1) u`` in the worst case of any summation order (Higham,
    *Accuracy and Stability*, 4.2); ``exp`` and ``log`` to a few ulp (we allow 4 u) and the log
    rounds ``u log s``. Hence ``d = u (log s + spread + n + 4)``.
  * each term ``a_c ((m - z_c) + log s)`` rounds twice and the ``n`` terms are summed: the error
    is at most ``A d + (n + 2) u sum_c |a_c log p_c|`` with ``A = sum_c a_c``.
  The bound is shift-invariant on purpose: it has no ``|m|`` or ``|lse|`` term, so a kernel that
  forms ``lse = m + log s`` and subtracts ``z_y`` afterwards (losing ``log s`` under a large
  common shift, or rounding ``lse`` to a half dtype) fails on shifted and confident rows.
  log-probability input: ``(n + 1) u sum_c |a_c log p_c|``; probability input: the log adds
  ``u`` absolute per unit weight, ``(n + 2) u sum_c |a_c log p_c| + 2 u A``.

Reductions: a sum of ``N`` terms adds ``(N + 1) u sum_i |loss_i|``; the mean's divisor is itself
a sum (relative error ``(N + 1) u``) and the division rounds once more.

Gradient, logits input (g_j = s (A p_j - a_j), ``s`` the upstream gradient over the divisor):
  ``p_j = exp((z_j - m) - log s)`` is relatively accurate to
  ``d + u(|z_j - m| + |log p_j|) + 4u``; forming ``A p_j - a_j`` and scaling rounds three
  more times. For float16/bfloat16 the result may round ``HALF_PRECISION_ROUNDINGS`` times as
  above (``u_o |g_j|`` each), and two more sources are allowed because every correct half kernel
  has them:
  * the log-probabilities saved in the dtype for backward (torch's log_softmax output, rounded
    up to ``SAVED_LOG_PROB_ROUNDINGS`` times on its way): each rounding perturbs ``p_j`` by
    ``u_o |log p_j|`` relative, i.e. ``u_o s A p_j |log p_j|``;
  * target coefficients ``a_j`` that the dtype cannot represent (smoothing ``eps/C``, soft
    targets times weights), formed in the dtype like the weights they multiply:
    ``u_o |a_j|`` per rounding. An index target without smoothing has ``a_y = w[y]``, exact.
  Neither covers rounding ``p_y`` near 1 before subtracting the one-hot target: in a confident
  row ``|log p_y|`` is tiny, so the target component's cancellation (Liger#1268) still fails.

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

# Roundings to a half dtype of quantities no larger than the result (see the contract above).
HALF_PRECISION_ROUNDINGS = 4
# Roundings of a saved log-probability in a half dtype (its value and the row statistic it is
# formed from; measured on torch's CPU bf16 log_softmax for 131073 classes).
SAVED_LOG_PROB_ROUNDINGS = 2


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
    """Error of ``log p_j = (z_j - m) - log s`` apart from its own last rounding (shift-invariant)."""
    log_s = (ev.logsumexp - ev.inputs.amax(1)).nan_to_num(0.0, 0.0, 0.0) if ev.num_classes else ev.logsumexp
    return u * (log_s + ev.spread + ev.num_classes + _EXP_LOG_ULPS)


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
    rounding = HALF_PRECISION_ROUNDINGS * u_o * expected if u_o > u else torch.zeros_like(expected)
    return compute + rounding + underflow_floor(dtype)


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
        compute = compute + HALF_PRECISION_ROUNDINGS * u_o * g_rows.abs()
        unrepresentable = a.to(dtype).to(torch.float64) != a
        compute = compute + HALF_PRECISION_ROUNDINGS * u_o * s * torch.where(unrepresentable, a.abs(), 0.0)
        if ev.input_kind == "logits":
            saved = s * a.sum(1, keepdim=True) * p * ev.log_probs.abs()
            compute = compute + SAVED_LOG_PROB_ROUNDINGS * u_o * torch.where(p == 0, torch.zeros_like(p), saved)
    bound = compute + underflow_floor(dtype) * torch.clamp(s, min=1.0)
    if g.dim() > 1:
        return bound.reshape(g.movedim(1, -1).shape).movedim(-1, 1)
    return bound.reshape(g.shape)

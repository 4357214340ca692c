"""Cross entropy on logits (and on log-probabilities and probabilities): the value, the gradient,
the variants' logsumexp and z-loss, and the terms of the classes sharded over ranks. The notation
and the contracts are ``ground``'s.

Forward error of one position, logits input (loss = sum_c a_c (lse - z_c)), ``exact``:
  * ``log s = log(sum_j exp(z_j - m))``: each ``z_j - m`` rounds (error ``u|z_j - m|``, which
    enters ``log s`` weighted by ``p_j``: ``u * spread``); the sum of ``n`` positive terms is
    relatively accurate to ``(n - 1) u`` in the worst case of any summation order (Higham,
    *Accuracy and Stability*, 4.2); ``exp`` and ``log`` to a few ulp (we allow 4 u) and the log
    rounds ``u log s``. Hence ``d = u (log s + spread + n + 4)``.
  * each term ``a_c ((m - z_c) + log s)`` rounds twice and the ``n`` terms are summed: the error
    is at most ``A d + (n + 2) u sum_c |a_c log p_c|`` with ``A = sum_c a_c``.
  log-probability input: ``(n + 1) u sum_c |a_c log p_c|``; probability input: the log adds
  ``u`` absolute per unit weight, ``(n + 2) u sum_c |a_c log p_c| + 2 u A``.

Gradient, logits input (g_j = s (A p_j - a_j), ``s`` the upstream gradient over the divisor):
  ``p_j = exp((z_j - m) - log s)`` is relatively accurate to
  ``d + u(|z_j - m| + |log p_j|) + 4u``; forming ``A p_j - a_j`` and scaling rounds three
  more times. For float16/bfloat16 the result may round ``HALF_PRECISION_ROUNDINGS`` times as
  ``exact`` allows (``ground``; ``u_o |g_j|`` each), and two more sources are allowed because every
  correct half kernel has them:
  * the log-probabilities saved in the dtype for backward (torch's log_softmax output, rounded
    up to ``SAVED_LOG_PROB_ROUNDINGS`` times on its way): each rounding perturbs ``p_j`` by
    ``u_o |log p_j|`` relative, i.e. ``u_o s A p_j |log p_j|``;
  * target coefficients ``a_j`` that the dtype cannot represent (smoothing ``eps/C``, soft
    targets times weights), formed in the dtype like the weights they multiply:
    ``u_o |a_j|`` per rounding. An index target without smoothing has ``a_y = w[y]``, exact.
  Neither covers rounding ``p_y`` near 1 before subtracting the one-hot target: in a confident
  row ``|log p_y|`` is tiny, so the target component's cancellation (Liger#1268) still fails.

Variants (``reference.Variant``). The loss sees ``z = c tanh(s x / c)`` (or ``s x``) formed at
the compute precision, each ``z_c`` off by ``delta_c`` (``ground``, Transformed inputs). That
perturbs a position's loss by ``sum_c |A' p_c - a_c| delta_c``, with ``A' = A + 2 lam k lse`` the
z-loss's share of the softmax term, and every probability relatively by ``delta_c + sum_j p_j
delta_j``. The z-loss ``lam lse^2`` errs by ``2 lam |lse| e + lam e^2`` from the logsumexp's
error ``e = u (log s + spread + n + 4) + u |lse|`` (its last rounding is in every contract: the
z-loss is not shift-invariant) and by three roundings of its own. The chain rule multiplies the
gradient with respect to ``z`` (and its bound) by ``d = s (1 - t^2)``, formed by a kernel within
the error of ``ground``'s Transformed inputs. The returned auxiliaries: the logsumexp
within ``e`` (plus the transform's ``sum_j p_j delta_j``), the z-loss within its term above,
each reduced as the value is.

Vocab parallel (the classes sharded over ``W`` ranks, ``test_vocab_parallel``). The logsumexp is
combined from the shards, ``s = sum_r exp(m_r - m) s_r`` with ``s_r`` a shard's sum relative to
its own max ``m_r`` (or directly to the global ``m``). Against one process: ``z_j - m_r`` rounds
by no more than ``z_j - m`` does (``m_r`` lies between them); ``m_r - m`` rounds once more, at
most ``u |z_j - m|`` for every ``j`` of the shard, so ``u * spread`` once more; the rescaling
``exp`` (2 ulp) and its product add ``_RESCALE_ULPS u``; the two-level sum, ``V_r - 1`` additions
in a shard and one per other non-empty shard, stays within the ``(n - 1) u`` of any summation
order. So ``d`` gains ``u (spread + _RESCALE_ULPS)`` (``shards`` > 1), and everything built on
``d`` (the value, the probabilities in the gradient) with it. The target logit all-reduced is
one value plus zeros (exact); the smoothing part ``sum_c a_c (z_c - m)`` is ``n`` products summed
in some order, within ``(n + 2) u sum_c |a_c log p_c|`` since ``|z_c - m| <= |log p_c|``. The
loss is the same on every rank *exactly* (bound 0): the all-reduced statistics are bitwise
identical on every rank (gloo and nccl reduce each element once and broadcast it), and what a
rank computes afterwards from them and the replicated target and weights is the same
arithmetic on the same values; a rank whose loss differs used something only it holds.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..reference import Evaluation, to_rows
from .ground import (
    _EXP_LOG_ULPS,
    _RESCALE_ULPS,
    DEFAULT_CONTRACT,
    EXACT,
    HALF_PRECISION_ROUNDINGS,
    _chain_factor_error,
    _check_contract,
    _is_half,
    _reduced_bound,
    _rows_shaped_like,
    _transform_error,
    compute_dtype,
    underflow_floor,
    unit_roundoff,
)

# Roundings of a saved log-probability in a half dtype (its value and the row statistic it is
# formed from; measured on torch's CPU bf16 log_softmax for 131073 classes).
SAVED_LOG_PROB_ROUNDINGS = 2


def _abs_products(a: Tensor, values: Tensor) -> Tensor:
    """``sum_c |a_c v_c|`` per row, with ``0 * inf`` taken as 0."""
    return (a * values).abs_().masked_fill_(a == 0, 0.0).sum(1)


def _log_sum(ev: Evaluation) -> Tensor:
    return (ev.logsumexp - ev.inputs.amax(1)).nan_to_num(0.0, 0.0, 0.0) if ev.num_classes else ev.logsumexp


def _lse_error(ev: Evaluation, u: float, shards: int = 1) -> Tensor:
    """Error of ``log p_j = (z_j - m) - log s`` apart from its own last rounding (shift-invariant);
    with the classes over ``shards`` ranks, the rescaling of each shard's sum (Vocab parallel)."""
    sharded = u * (ev.spread + _RESCALE_ULPS) if shards > 1 else 0.0
    return u * (_log_sum(ev) + ev.spread + ev.num_classes + _EXP_LOG_ULPS) + sharded


def _abs_lse(ev: Evaluation) -> Tensor:
    return ev.logsumexp.abs().nan_to_num(0.0, 0.0, 0.0)


def _logit_error(ev: Evaluation, u: float) -> Tensor:
    """``delta_c``: the error of each logit the loss sees, formed from the given ones (Variants)."""
    return _transform_error(ev.inputs, ev.variant.logit_scale != 1.0, ev.variant.softcap is not None, u)


def _logsumexp_error(ev: Evaluation, u: float) -> Tensor:
    """``e``: the error of the logsumexp itself, its last rounding ``u |lse|`` included (Variants)."""
    return _lse_error(ev, u) + u * _abs_lse(ev)


def _z_loss_scale(ev: Evaluation) -> Tensor:
    """``|lam k|`` per position: the z-loss's weight, its position's weight and share of the divisor."""
    return (ev.variant.z_loss * ev.z_weight * ev.z_loss_share).abs()


def _z_loss_error(ev: Evaluation, u: float) -> Tensor:
    """Per position, the error of the z-loss term (its share of the loss included)."""
    if ev.z_weight is None:
        return torch.zeros_like(ev.row_loss)
    e = _logsumexp_error(ev, u)
    return _z_loss_scale(ev) * (2 * _abs_lse(ev) * e + e * e) + 3 * u * ev.row_z_loss.abs()


def _variant_value_error(ev: Evaluation, u: float) -> Tensor:
    """What the variants add to a position's forward error (see Variants)."""
    p, a = ev.probabilities, ev.weighted_target
    sensitivity = ((a.sum(1, keepdim=True) + ev.z_coefficient).abs() * p + a.abs())
    return torch.where(sensitivity == 0, 0.0, sensitivity * _logit_error(ev, u)).sum(1) + _z_loss_error(ev, u)


def _row_value_error(ev: Evaluation, u: float, contract: str, shards: int = 1) -> Tensor:
    """Forward error of each position's loss when computed at unit roundoff ``u`` (both contracts'
    formed at once and kept on ``ev``: the value bounds of the logits and of the linear form share it)."""
    return _kept(ev, ("value row errors", u, shards), lambda: _row_value_errors(ev, u, shards))[contract == EXACT]


def _row_value_errors(ev: Evaluation, u: float, shards: int = 1) -> tuple[Tensor, Tensor]:
    """``_row_value_error`` under ``standard`` and under ``exact`` (which leaves out the ``|lse|`` terms)."""
    a, n = ev.weighted_target, ev.num_classes
    terms = _abs_products(a, ev.log_probs)
    if ev.input_kind == "logits":
        exact = a.sum(1) * _lse_error(ev, u, shards) + (n + 2) * u * terms
        standard = exact + u * (3 * a.sum(1) * _abs_lse(ev) + (n + 1) * _abs_products(a, ev.inputs))
        if ev.variant.active:
            variants = _variant_value_error(ev, u)
            standard, exact = standard + variants, exact + variants
        # an idle position's NaN statistics weigh nothing
        return torch.where(ev.idle, 0.0, standard), torch.where(ev.idle, 0.0, exact)
    if ev.input_kind == "log_probs":
        return ((n + 1) * u * terms,) * 2
    return ((n + 2) * u * terms + 2 * u * a.sum(1),) * 2


def _kept(ev: Evaluation, key: tuple, compute, upstream: Optional[Tensor] = None):
    """``compute()`` once for ``ev`` and ``key`` (and the same unchanged ``upstream`` gradient): a
    bound forms both contracts' values at once, and the judge asks for its contract's and for
    ``exact``'s (the accuracy grade)."""
    kept = ev.__dict__.setdefault("_bounds_kept", {})
    found = kept.get(key)
    version = None if upstream is None else upstream._version
    if found is None or found[0] is not upstream or found[1] != version:
        found = kept[key] = (upstream, version, compute())
    return found[2]


def value_bound(ev: Evaluation, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT, shards: int = 1) -> Tensor:
    """Largest acceptable ``|loss - reference|``, shaped like the reduced loss (the classes over
    ``shards`` ranks: Vocab parallel)."""
    _check_contract(contract)
    u = unit_roundoff(compute_dtype(dtype))
    return _reduced_bound(ev, _row_value_error(ev, u, contract, shards), ev.row_loss, ev.loss, dtype)


def z_loss_bound(ev: Evaluation, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """A returned z-loss (reduced as the loss): its positions' errors (Variants), reduced."""
    _check_contract(contract)
    u = unit_roundoff(compute_dtype(dtype))
    p = ev.probabilities
    through_logits = torch.where(p == 0, 0.0, ev.z_coefficient.abs() * p * _logit_error(ev, u)).sum(1)
    return _reduced_bound(ev, _z_loss_error(ev, u) + through_logits, ev.row_z_loss, ev.z_loss_value, dtype)


def lse_bound(ev: Evaluation, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """A returned logsumexp per position: ``e`` plus the transform's ``sum_j p_j delta_j``, and
    its rounding to a half dtype."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    p = ev.probabilities
    rows = _logsumexp_error(ev, u) + torch.where(p == 0, 0.0, p * _logit_error(ev, u)).sum(1)
    if _is_half(dtype):
        rows = rows + HALF_PRECISION_ROUNDINGS * u_o * _abs_lse(ev)
    return rows.reshape(ev.position_shape) + underflow_floor(dtype)


def _derivative_error(ev: Evaluation, u: float) -> Tensor:
    return _chain_factor_error(ev.logit_derivative, ev.cap_tanh, ev.variant.logit_scale, u)


def grad_bound(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT,
               shards: int = 1) -> Tensor:
    """Largest acceptable ``|grad - reference grad|`` per input element, shaped like the input
    (the classes over ``shards`` ranks: Vocab parallel)."""
    _check_contract(contract)
    return _kept(ev, ("gradient bounds", dtype, shards), lambda: _grad_bounds(ev, grad_output, dtype, shards),
                 grad_output)[contract == EXACT]


def _grad_bounds(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype, shards: int) -> tuple[Tensor, Tensor]:
    """``grad_bound`` under ``standard`` and under ``exact``."""
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    per_row = ev.upstream_rows(grad_output)
    s = per_row.abs()[:, None]
    a = ev.weighted_target
    g = ev.grad(grad_output)
    g_rows = to_rows(g, class_dim=True)
    divisor_err = (ev.row_loss.shape[0] + 1) * u if ev.reduction == "mean" else 0.0
    g_abs = g_rows.abs()
    if ev.input_kind == "logits":
        computes = _logits_grad_errors(ev, s, a, dtype, shards)
    else:
        computes = (4 * u * g_abs,) * 2
    tail = (2 * u + divisor_err) * g_abs
    upstream = per_row * (ev.denominator if bool(ev.denominator != 0) else 1.0)
    floor = underflow_floor(dtype) * upstream.abs().clamp(min=1.0)[:, None]
    if _is_half(dtype):
        unrepresentable = a.to(dtype).to(torch.float64) != a
        d = ev.logit_derivative.abs() if ev.logit_derivative is not None else 1.0
        half = (HALF_PRECISION_ROUNDINGS * u_o * g_abs,
                HALF_PRECISION_ROUNDINGS * u_o * s * d * a.abs().masked_fill_(~unrepresentable, 0.0))
    bounds = []
    for compute in computes:
        compute = compute + tail   # a new tensor (the two of another input kind are one), then in place
        if _is_half(dtype):
            compute.add_(half[0]).add_(half[1])
        bounds.append(_rows_shaped_like(compute.add_(floor), g))
    return tuple(bounds)


def _logits_grad_errors(ev: Evaluation, s: Tensor, a: Tensor, dtype: torch.dtype, shards: int) -> tuple:
    """The error of a logits gradient's computation per element, under ``standard`` and ``exact``."""
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    A = (a.sum(1, keepdim=True) + ev.z_coefficient).abs()  # the z-loss adds to the softmax term
    p = ev.probabilities
    p_zero = p == 0
    # In place on the tensors formed here: the same values with fewer (M, C) temporaries.
    rel_p_exact = (ev.inputs - ev.inputs.amax(1, keepdim=True)).abs_().nan_to_num_(0.0, 0.0, 0.0)   # |z - m|
    rel_p_exact.add_(ev.log_probs.abs().nan_to_num_(0.0, 0.0, 0.0)).mul_(u)
    rel_p_exact.add_(_lse_error(ev, u, shards)[:, None]).add_(_EXP_LOG_ULPS * u)
    rel_p_standard = rel_p_exact + torch.expm1(u * _abs_lse(ev))[:, None]
    if ev.variant.active:
        delta = _logit_error(ev, u)
        moved = (p * delta).masked_fill_(p_zero, 0.0).sum(1, keepdim=True)
        rel_p_standard, rel_p_exact = (rel_p + delta + moved for rel_p in (rel_p_standard, rel_p_exact))
    rounded = (A * p).add_(a.abs()).mul_(3 * u)
    added = []   # terms both contracts add, in this order
    if ev.z_weight is not None:  # the z-loss's coefficient 2 lam k lse, off by 2 lam k e
        added.append(s * p * (2 * _z_loss_scale(ev) * _logsumexp_error(ev, u))[:, None])
    if _is_half(dtype):
        saved = (s * A * p).mul_(ev.log_probs.abs()).masked_fill_(p_zero, 0.0)
        added.append(saved.mul_(SAVED_LOG_PROB_ROUNDINGS * u_o))
    if ev.logit_derivative is not None:  # the chain rule through scale and cap
        z_grad = s * ((a.sum(1, keepdim=True) + ev.z_coefficient) * p - a)
        chained = z_grad.abs() * _derivative_error(ev, u)
    computes = []
    for rel_p, capped in ((rel_p_standard, True), (rel_p_exact, False)):
        p_err = (p * rel_p).masked_fill_(p_zero, 0.0)
        if capped:
            p_err.clamp_(max=1.0)
        compute = p_err.mul_(A).add_(rounded).mul_(s)
        for term in added:
            compute.add_(term)
        if ev.logit_derivative is not None:
            compute.mul_(ev.logit_derivative.abs()).add_(chained)
        computes.append(compute.masked_fill_(ev.idle[:, None], 0.0))   # an idle position's gradient is exactly 0
    return tuple(computes)

"""Bounds of derived identities of cross entropy on logits, each from the value or gradient bound
(``logits``): sums of two bounds, the gradient along the simplex, row sums, the seed document's
paths and its XOR trajectory, soft targets' gradient, Hessian-vector products and directional
derivatives, each derivation at its function; the simplex's here.

Gradient along the simplex (a probability input that declares ``simplex_gradient``): a loss
that normalises its probabilities first, ``g(p) = f(p / S)`` with ``S = sum_k p_k`` (Keras'), has
``grad g = (grad f(p/S) - (p/S . grad f(p/S)) 1) / S``. Every loss of the family,
``f(q) = -sum_c a_c log q_c``, has ``grad f(p/S) = S grad f(p)``, so ``grad g = grad f(p) - c 1``
with ``c = (p . grad f(p)) / S``: the kit's truth ``grad f(p)`` plus a multiple of the all-ones
vector per position, at any ``S``, not only 1. Only the component in the sum-zero subspace (the
directions that stay on the simplex) is defined by the loss, so the judge compares
``P v = v - mean(v) 1`` of both sides: the gradient against the truth plus the multiple of the
all-ones vector that brings it nearest (``reference.Evaluation.grad_along_simplex``, the mean of
their difference), whose difference is exactly that of the projections. A kernel forms
``h_j = g_j - c``: ``g_j`` within the gradient bound ``G_j`` (``logits``); ``c`` an inner product of
``n`` terms, each ``p_k g_k`` off by ``p_k G_k`` and the sum and its rounding by
``(n + 1) u sum_k p_k |g_k|``, then divided by ``S`` (one rounding, ``u |c|``); the difference
rounds once (``u (|g_j| + |c|)``) and a half result up to ``HALF_PRECISION_ROUNDINGS`` times more
(``u_o (|g_j| + |c|)`` each: ``G_j`` covers ``|g_j|`` only, and off the target ``|h_j| = |c|``).
So ``|e_j| <= E_j = G_j + E_c + u (|g_j| + |c|)`` with
``E_c = (sum_k p_k (G_k + (n + 1) u |g_k|)) / S + u |c|``, and the projection, linear, gives
``|P e|_j <= E_j + mean_k E_k``. A class whose ``|h_j|`` passes the dtype's largest finite value
is judged as every overflow is (the infinity is the right answer there) and left out of the
mean, over the ``n'`` classes left. The check forms the mean and the subtraction in float64:
``(n + 2) u_64 (|h_j| + mean_k |h_k|)`` on each side, at ``|h_j| <= |g_j| + |c|``. A gradient
whose component along the simplex is wrong (a normalisation's derivative written as ``p`` for
``1``) fails.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import Evaluation, to_rows
from .ground import (
    _TRUTH_U,
    DEFAULT_CONTRACT,
    HALF_PRECISION_ROUNDINGS,
    _check_contract,
    _is_half,
    _rows_shaped_like,
    compute_dtype,
    unit_roundoff,
)
from .logits import grad_bound, value_bound

# XOR trajectory (test_document): the two training runs share every operation but the loss. An
# error made at step s stays in the weights, so step t is judged against the largest step bound
# so far, and SGD's contraction near the minimum keeps the accumulated drift to a few such steps
# (measured: at most 2 roundings of the early loss in every dtype). We allow 8.
XOR_TRAJECTORY_BOUNDS = 8


def value_pair_bound(ev: Evaluation, other: Evaluation, dtype: torch.dtype, contract: str) -> Tensor:
    """Two evaluations of the same mathematical problem (a shifted row, a one-hot target): each
    may err by its own bound, so they may differ by the sum."""
    return value_bound(ev, dtype, contract) + value_bound(other, dtype, contract)


def grad_pair_bound(ev: Evaluation, other: Evaluation, grad_output: Tensor, dtype: torch.dtype,
                    contract: str) -> Tensor:
    return grad_bound(ev, grad_output, dtype, contract) + grad_bound(other, grad_output, dtype, contract)


def simplex_grad_bound(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype,
                       contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable ``|P grad - P reference grad|`` per input element of a probability input
    whose gradient is defined along the simplex only (the module docstring, Gradient along the
    simplex), shaped like the input."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    grad = ev.grad(grad_output)
    g = to_rows(grad, class_dim=True).abs()
    full = to_rows(grad_bound(ev, grad_output, dtype, contract), class_dim=True)
    n = g.shape[1]
    p = ev.inputs.abs()
    total = p.sum(1, keepdim=True)
    weighted = torch.where(p == 0, 0.0, p * (full + (n + 1) * u * g))   # 0 inf = 0: a class of p = 0 adds no term
    c = torch.where(p == 0, 0.0, p * g).sum(1, keepdim=True) / total
    c_error = weighted.sum(1, keepdim=True) / total + u * c
    element = full + c_error + u * (g + c)
    if _is_half(dtype):
        element = element + HALF_PRECISION_ROUNDINGS * u_o * (g + c)
    overflows = g + c > torch.finfo(dtype).max        # judged as any overflow, left out of the mean
    kept = (n - overflows.sum(1, keepdim=True)).clamp(min=1)
    shift = torch.where(overflows, 0.0, element).sum(1, keepdim=True) / kept
    magnitude = torch.where(overflows, 0.0, g + c)
    projection = 2 * (n + 2) * _TRUTH_U * (magnitude + magnitude.sum(1, keepdim=True) / kept)
    return _rows_shaped_like(element + shift + projection, grad)


def row_sum_bound(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype, contract: str) -> Tensor:
    """A row of ``softmax - y`` sums to zero: its computed sum errs by at most the sum of its
    elements' bounds (the float64 summation of the check itself is exact to far below them)."""
    return to_rows(grad_bound(ev, grad_output, dtype, contract), class_dim=True).sum(1)


def document_path_bound(ev: Evaluation, dtype: torch.dtype, contract: str, *, logs_rounded_probability: bool) -> Tensor:
    """The seed document's paths in the case's dtype. ``log(softmax(z))`` takes the log of a
    probability rounded to the dtype: one rounding of ``p`` is ``u`` absolute in log space, per
    position summed (``sum``) or averaged (``mean``, ``none``)."""
    bound = value_bound(ev, dtype, contract)
    if logs_rounded_probability:
        rows = ev.row_loss.shape[0] if ev.reduction == "sum" else 1
        bound = bound + unit_roundoff(dtype) * rows
    return bound


def soft_target_gradient_bound(row_ev: Evaluation, dtype: torch.dtype, contract: str) -> Tensor:
    """``d loss / d target = -log softmax(z)`` (reduction 'sum', unit upstream): each element is a
    position's log-probability, whose error is at most the position's loss bound (``row_ev`` is
    the same problem with reduction 'none'), plus its rounding to the dtype (twice: formed and
    returned)."""
    per_position = value_bound(row_ev, dtype, contract).reshape(-1, 1)
    rows = per_position + 2 * unit_roundoff(dtype) * row_ev.log_probs.abs()
    return _rows_shaped_like(rows, torch.empty(row_ev.input_shape))


def xor_trajectory_bound(step_evaluations: list, dtype: torch.dtype, contract: str) -> Tensor:
    """Step ``t`` of the XOR training run is judged against the largest step bound so far, times
    ``XOR_TRAJECTORY_BOUNDS`` (see there)."""
    steps = torch.stack([value_bound(ev, dtype, contract) for ev in step_evaluations])
    return XOR_TRAJECTORY_BOUNDS * steps.cummax(0).values


def hessian_vector_bound(ev: Evaluation, grad_output: Tensor, v: Tensor, dtype: torch.dtype, contract: str) -> Tensor:
    """Largest acceptable ``|Hv - reference Hv|`` per element, from the gradient bound.

    Derivation. Any kernel forms ``Hv_j = q_j v_j - q_j (p.v)`` with ``q_j = s A p_j``, the
    gradient's own ``s A p_j`` term, whose error ``grad_bound`` already bounds by ``E_j`` (it
    covers the error of ``p_j``, of forming ``s A p_j`` and the divisor). Then
        err(q_j v_j)          <= E_j |v_j| + u |q_j v_j|
        err(p.v) |q_j|        <= p_j sum_k E_k |v_k| + (C + 1) u |q_j| sum_k p_k |v_k|
                                 (p_k's error is E_k / |s A|; C products summed, Higham 3.1)
        err(q_j (p.v))        <= E_j |p.v| + that + u |q_j (p.v)|
    and the subtraction rounds once more: ``+ u (|q_j v_j| + |q_j (p.v)|)``. Summing,
        bound_j = E_j (|v_j| + |p.v|) + p_j sum_k E_k |v_k|
                  + u |q_j| (2 |v_j| + 2 |p.v| + (C + 1) sum_k p_k |v_k|)
    with ``u`` the unit roundoff of ``dtype`` (float64 or float32 only).
    """
    u = unit_roundoff(dtype)
    E = to_rows(grad_bound(ev, grad_output, dtype, contract), class_dim=True)
    v = to_rows(v.detach().to("cpu", torch.float64), class_dim=True)
    p = ev.probabilities
    q = (ev.upstream_rows(grad_output) * ev.weighted_target.sum(1)).abs()[:, None] * p
    pv = (p * v).sum(1, keepdim=True).abs()
    p_abs_v = (p * v.abs()).sum(1, keepdim=True)
    bound = E * (v.abs() + pv) + p * (E * v.abs()).sum(1, keepdim=True) \
        + u * q * (2 * v.abs() + 2 * pv + (ev.num_classes + 1) * p_abs_v)
    return bound.reshape(ev.input_shape)


def _unit_upstream(ev: Evaluation) -> Tensor:
    return torch.ones(ev.position_shape if ev.reduction == "none" else (), dtype=torch.float64)


def directional_bound(ev: Evaluation, tangent: Tensor, dtype: torch.dtype, contract: str) -> Tensor:
    """Largest acceptable ``|<g, t> - reference|`` per output element, from the gradient bound.

    Derivation. Whatever the formulation (``sum_c g_c t_c`` or ``s (A p.t - a.t)``), a position's
    directional derivative is a sum of at most ``2C`` products whose magnitudes are bounded by
    ``s (A p_c + a_c) |t_c|`` (with the variants ``s (|A'| p_c + a_c) |d_c| |t_c|``: the z-loss's
    ``A'`` and the chain rule's ``d``); ``p_c`` enters through ``s A p_c``, whose error the
    gradient bound ``E_c`` covers. Hence per position
        sum_c E_c |t_c| + (2C + 2) u sum_c s (A p_c + a_c) |t_c|       (Higham 3.1)
    and a sum or mean over ``M`` positions adds ``(M + 1) u sum_i |<g, t>_i|``.
    """
    u = unit_roundoff(dtype)
    ones = _unit_upstream(ev)
    E = to_rows(grad_bound(ev, ones, dtype, contract), class_dim=True)
    t = to_rows(tangent.detach().to("cpu", torch.float64), class_dim=True)
    a = ev.weighted_target
    s = ev.upstream_rows(ones).abs()[:, None]
    sizes = s * ((a.sum(1, keepdim=True) + ev.z_coefficient).abs() * ev.probabilities + a)
    if ev.logit_derivative is not None:
        sizes = sizes * ev.logit_derivative.abs()
    per_position = (E * t.abs()).sum(1) + (2 * ev.num_classes + 2) * u * (sizes * t.abs()).sum(1)
    if ev.reduction == "none":
        return per_position.reshape(ev.position_shape)
    exact = (to_rows(ev.grad(ones), class_dim=True) * t).sum(1)
    return per_position.sum() + (exact.numel() + 1) * u * exact.abs().sum()

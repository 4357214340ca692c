"""Linear cross entropy (``linear.LinearEvaluation``): the loss of ``z = h W^T + b``, ``H`` the
hidden size, bounded as cross entropy on logits (``logits``) plus what the logits' own error moves.

Each logit is an inner product of ``H`` terms plus the bias, formed at the compute
precision with any summation order: ``|dz_c| <= gamma_{H+1} (|h| |W|^T + |b|)_c`` (Higham 3.1,
``gamma_n = n u / (1 - n u)``); the float64 truth forms it too, so its own ``gamma_{H+1}`` at
float64's ``u`` is added. ``standard`` also lets a half kernel store each logit in the dtype once
(``u_o |z_c|``: Liger-Kernel's chunk of logits, torch's composition), ``exact`` does not. A
perturbation ``delta`` of the logits moves the logsumexp by at most ``sum_c p_c delta_c
e^{delta_c}`` (convexity), hence a position's loss by ``sum_c (A p_c e^{delta_c} + |a_c|)
delta_c`` and each probability relatively by ``expm1(delta_j + that)``: added to the loss's and
the logit gradient's bounds (``logits``). An idle row's logits (ignored, or a zero-weight target) move
neither, whatever their size: its ``delta`` is 0 (hidden states of norm 1e30 there would make
``A p e^{delta}`` a ``0 * inf``). The logit gradient ``G``, off by ``E`` elementwise, then
enters three products summed at the compute precision (float32 accumulation for half inputs:
a weight or bias gradient accumulated in the half dtype over chunks fails):
``d/dh = G W`` within ``E |W| + gamma_V |G| |W|``, ``d/dW = G^T h`` within
``E^T |h| + gamma_N |G|^T |h|``, ``d/db`` within ``sum_i E_i + gamma_N sum_i |G_i|``, each
``gamma`` also at float64's ``u`` for the truth, and a half result rounded as every half result.
Under autocast (float32 inputs, a half ``dtype`` for the matmuls) a loss may compute on the
inputs or on their roundings to ``dtype``, as autocast's own ops do: the bound of the rounded
problem in ``dtype``, plus how far the two problems' truths lie apart (``linear_autocast_bound``,
in the package's ``__init__`` beside the table it dispatches through).
A declared ``gradient_filter`` ``eps`` (``vocabulary.APPROXIMATIONS``) lets each element of ``G`` be
dropped below ``eps`` times its row's upstream gradient over the divisor: ``E += s eps``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .ground import (
    _TRUTH_U,
    DEFAULT_CONTRACT,
    EXACT,
    HALF_PRECISION_ROUNDINGS,
    _check_contract,
    _gamma,
    _is_half,
    _reduced_bound,
    compute_dtype,
    underflow_floor,
    unit_roundoff,
)
from .logits import _row_value_error, grad_bound


def _sums(n: int, dtype: torch.dtype) -> float:
    """``gamma_n`` at the compute precision plus the float64 truth's own."""
    return _gamma(n, unit_roundoff(compute_dtype(dtype))) + _gamma(n, _TRUTH_U)


def _linear_logit_error(lev, dtype: torch.dtype, contract: str) -> Tensor:
    """``delta`` (N, V): the error of each logit an implementation forms from ``h``, ``W``, ``b``."""
    size = lev.hidden.shape[1] + (lev.linear_bias is not None)
    delta = _sums(size, dtype) * lev.logit_magnitudes
    if contract != EXACT and _is_half(dtype):
        delta = delta + unit_roundoff(dtype) * (lev.logits.inputs.abs() + delta)
    return torch.where(lev.logits.idle[:, None], 0.0, delta)   # an idle row's logits move nothing, huge or not


def _with_half_rounding(compute: Tensor, result: Tensor, dtype: torch.dtype) -> Tensor:
    if _is_half(dtype):
        compute = compute + HALF_PRECISION_ROUNDINGS * unit_roundoff(dtype) * result.abs()
    return compute + underflow_floor(dtype)


def linear_value_bound(lev, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """The loss of the logits within ``value_bound``, plus what the logits' own error moves it."""
    _check_contract(contract)
    ev, delta = lev.logits, _linear_logit_error(lev, dtype, contract)
    p, a = ev.probabilities, ev.weighted_target
    sensitivity = a.sum(1, keepdim=True) * p * torch.exp(delta) + a.abs()
    through_logits = torch.where(sensitivity == 0, 0.0, sensitivity * delta).sum(1)
    row_err = _row_value_error(ev, unit_roundoff(compute_dtype(dtype)), contract) + through_logits
    return _reduced_bound(ev, row_err, ev.row_loss, ev.loss, dtype)


def _linear_logit_grad_error(lev, grad_output: Tensor, dtype: torch.dtype, contract: str,
                             filtered_below: float) -> Tensor:
    """``E`` (N, V): the logit gradient within ``grad_bound``, plus the probabilities' shift under
    ``delta``, plus a declared filter's ``s eps``."""
    error = lev.memo(("logit gradient error", dtype, contract), grad_output,
                     lambda: _compute_linear_logit_grad_error(lev, grad_output, dtype, contract))
    if filtered_below:
        error = error + filtered_below * lev.logits.upstream_rows(grad_output).abs()[:, None]
    return error


def _compute_linear_logit_grad_error(lev, grad_output: Tensor, dtype: torch.dtype, contract: str) -> Tensor:
    ev, delta = lev.logits, _linear_logit_error(lev, dtype, contract)
    p = ev.probabilities
    lse_shift = torch.where(p == 0, 0.0, p * delta * torch.exp(delta)).sum(1, keepdim=True)
    s_a = (ev.upstream_rows(grad_output).abs() * ev.weighted_target.sum(1))[:, None]
    shift = torch.where(p == 0, 0.0, s_a * p * torch.expm1(delta + lse_shift))
    return grad_bound(ev, grad_output, dtype, contract) + shift


def linear_input_grad_bound(lev, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT,
                            filtered_below: float = 0.0) -> Tensor:
    """``d/dh = G W``: ``E |W| + gamma_V |G| |W|`` (N, H)."""
    _check_contract(contract)
    g, w = lev.logit_grad(grad_output), lev.linear_weight.abs()
    compute = (_linear_logit_grad_error(lev, grad_output, dtype, contract, filtered_below) @ w
               + _sums(g.shape[1], dtype) * g.abs() @ w)
    return _with_half_rounding(compute, g @ lev.linear_weight, dtype)


def linear_weight_grad_bound(lev, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT,
                             filtered_below: float = 0.0) -> Tensor:
    """``d/dW = G^T h``: ``E^T |h| + gamma_N |G|^T |h|`` (V, H)."""
    _check_contract(contract)
    g, h = lev.logit_grad(grad_output), lev.hidden.abs()
    compute = (_linear_logit_grad_error(lev, grad_output, dtype, contract, filtered_below).T @ h
               + _sums(g.shape[0], dtype) * g.abs().T @ h)
    return _with_half_rounding(compute, g.T @ lev.hidden, dtype)


def linear_bias_grad_bound(lev, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT,
                           filtered_below: float = 0.0) -> Tensor:
    """``d/db = sum_i G_i``: ``sum_i E_i + gamma_N sum_i |G_i|`` (V,)."""
    _check_contract(contract)
    g = lev.logit_grad(grad_output)
    compute = (_linear_logit_grad_error(lev, grad_output, dtype, contract, filtered_below).sum(0)
               + _sums(g.shape[0], dtype) * g.abs().sum(0))
    return _with_half_rounding(compute, g.sum(0), dtype)

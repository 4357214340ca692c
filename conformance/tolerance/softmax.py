"""The softmax forms (``softmax.SoftmaxEvaluation``): softmax and log-softmax, their VJPs, JVPs
and double backward, the variants' transformed scores, and what a mask fixes exactly. The
notation, the contracts and the transformed inputs' error are ``ground``'s.

``n`` entries along ``dim``, ``m`` their max, ``s = sum_k exp(z_k - m)``, ``spread = sum_k p_k
|z_k - m|``. ``m`` is exact (comparisons). The sum: each term ``exp(z_k - m)`` is relatively off by
``u |z_k - m| + _EXP_LOG_ULPS u`` (an online kernel forms it as ``exp(z_k - m_b) exp(m_b - m)``
over running maxima, whose differences' roundings add up to at most ``u |z_k - m|`` as every
``m_b`` lies between ``z_k`` and ``m``), which enters ``s`` weighted by ``p_k``: ``u (spread +
_EXP_LOG_ULPS)``; the ``n - 1`` additions round once each in any order (Higham 4.2) and may each
come with the rescaling of a partial sum to a new max (``_RESCALE_ULPS``): ``sigma = u (spread +
_EXP_LOG_ULPS + (1 + _RESCALE_ULPS)(n - 1))`` relative to ``s``, hence absolute in ``log s``
(``log(1 + e) <= e``).
  * softmax ``y_j = exp(z_j - m) / s`` or ``exp((z_j - m) - log s)``: relatively off by
    ``u (|z_j - m| + 2 log s + 2 _EXP_LOG_ULPS + 1) + sigma`` (the difference, the log and its
    rounding, the exp, the division); ``standard`` also admits ``exp(z_j - lse)`` with ``lse = m +
    log s`` rounded as one number (``expm1(u |lse|)`` more), ``exact`` does not;
  * log-softmax ``(z_j - m) - log s``: absolutely off by ``u (|z_j - m| + log s + _EXP_LOG_ULPS +
    |log p_j|) + sigma`` (the two differences, the log and its rounding); ``standard`` also admits
    ``z_j - lse`` (``u |lse|`` more), ``exact`` does not.
A half result is that float32 computation rounded to the dtype (``u_o |y_j|``), where one
intermediate may be kept in the dtype too: a softmax's exponential ``exp(z_j - m)`` (torch's CPU
kernel along a dim other than the last writes them into its output; a relative ``u_o`` more),
a log-softmax's ``log s`` (torch's CPU kernel keeps it so: ``u_o log s``, no more than the
result's rounding since ``log p_j <= -log s``). A kernel that keeps the sum, the
log-probabilities of a float32 result, or anything in a narrower dtype than its result fails.
Rows sum to 1 within the sum of their elements' bounds; every element lies in [0, 1] exactly
(``exp(z_j - m) <= s`` and rounding is monotone).

The VJPs, from the forward bound ``d_j`` at the compute precision plus the saved half output's
rounding (the output a kernel saves for backward): softmax ``y_j (g_j - c)``, ``c = sum_k g_k y_k``
off by ``sum_k |g_k| d_k + (n - 1) u sum_k |g_k y_k|``: ``d_j |g_j - c| + (y_j + d_j)(that) +
u y_j |g_j - c| + u |dx_j|``; log-softmax ``g_j - p_j G``, ``G = sum_k g_k`` off by ``(n - 1) u
sum_k |g_k|``, ``p_j = exp(y_j)`` relatively off by ``expm1(d_j + _EXP_LOG_ULPS u)``:
``p_j (that) |G| + p_j (1 + that)(n - 1) u sum |g| + u p_j |G| + u |dx_j|``; a half gradient
rounds once more (``u_o |dx_j|``). The float64 truth errs by the ``exact`` bounds at float64's
``u``, added to each. Every softmax bound adds the underflow floor (times the row's
largest upstream gradient, at least 1, for the VJPs).

Forward mode (float64 and float32 only, as every tangent): softmax's Jacobian is symmetric, so
its JVP ``y (v - sum(v y))`` is the VJP's expression with the tangent for ``g``, under the VJP's
bound; log-softmax's ``v_j - c``, ``c = sum_k p_k v_k`` with ``p_k = exp(y_k)`` relatively off
by ``r_k = expm1(d_k + _EXP_LOG_ULPS u)``: ``sum_k |v_k| p_k r_k + n u sum_k p_k |v_k|`` (the
products and the additions) for ``c``, and one rounding of the difference, ``u |v_j - c|``.

Variants (``softmax.SoftmaxVariant``): the softmax sees ``z = c tanh(s x / c)`` (or ``s x``).
``standard`` lets a kernel form it at the compute precision, each ``z_j`` off by ``delta_j = k u
|z_j|`` as the loss variants' logits (``ground``, Transformed inputs), which moves each
log-probability by ``delta_j + sum_k p_k delta_k`` (absolute for log-softmax, relative through
``expm1`` for softmax); ``exact`` does not (a kernel whose scale is a power of two and that
takes no cap forms ``z`` exactly). The float64 truth's own transform is added in both. The VJP
with respect to ``x`` is ``d_j`` times the one with respect to ``z``: its bound times ``|d_j|``,
plus ``|dz_j|`` times the chain factor's error (``ground``, Transformed inputs, at the compute
precision and at float64's), plus the product's rounding ``u |dx_j|``.

Masks. What a mask fixes is judged exactly (bound 0): a masked entry of a row that keeps one is
0 (``-inf``) with gradient 0, whatever the offset of the kept ones (a kernel that fills with a
finite value fails where a kept score lies below it); a fully masked row under ``"zero"`` is 0
(``-inf``) with gradient 0, under ``"uniform"`` ``1/n`` (``-log n``) within the bound of a
constant row, with gradient 0; under ``"nan"`` NaN, its gradient judged only to stay in its row.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ground import (
    _EXP_LOG_ULPS,
    _RESCALE_ULPS,
    _TRUTH_U,
    DEFAULT_CONTRACT,
    EXACT,
    _chain_factor_error,
    _check_contract,
    _is_half,
    _transform_error,
    compute_dtype,
    underflow_floor,
    unit_roundoff,
)


def _softmax_sum_error(sev, u: float) -> Tensor:
    """``sigma`` per row (rows, 1): the relative error of ``s``, so the absolute error of ``log s``."""
    additions = (1 + _RESCALE_ULPS) * max(sev.num_classes - 1, 0)
    return (u * (sev.spread + _EXP_LOG_ULPS + additions)).nan_to_num(0.0, 0.0, 0.0)[:, None]


def _finite_abs(t: Tensor) -> Tensor:
    return t.abs().nan_to_num(0.0, 0.0, 0.0)


def _softmax_compute_error(sev, u: float, contract: str, transform: Optional[bool] = None) -> Tensor:
    """``d_j`` (rows, n): the forward error at unit roundoff ``u``, before any half rounding;
    ``transform``: with the variant's roundings of ``z`` (by default under ``standard`` only)."""
    log_sum = _finite_abs(sev.log_sum)[:, None]
    z_minus_m = _finite_abs(sev.shifted)
    lse = _finite_abs(sev.inputs.amax(1, keepdim=True) + sev.log_sum[:, None]) if sev.num_classes else log_sum
    sigma = _softmax_sum_error(sev, u)
    moved = _softmax_transform_error(sev, u) if (contract != EXACT if transform is None else transform) else 0.0
    if sev.form == "softmax":
        rel = u * (z_minus_m + 2 * log_sum + 2 * _EXP_LOG_ULPS + 1) + sigma + torch.expm1(torch.as_tensor(moved))
        if contract != EXACT:
            rel = rel + torch.expm1(u * lse)
        return torch.where(sev.probs == 0, 0.0, sev.probs * rel).nan_to_num(0.0, 0.0, 0.0)
    error = u * (z_minus_m + log_sum + _EXP_LOG_ULPS + _finite_abs(sev.log_probs)) + sigma + moved
    return error + u * lse if contract != EXACT else error


def _softmax_transform_error(sev, u: float) -> Tensor:
    """What the rounded ``z = cap(s x)`` moves each log-probability by: ``delta_j + sum_k p_k delta_k``."""
    variant = sev.variant
    delta = _transform_error(sev.inputs, variant.scale != 1.0, variant.softcap is not None, u)
    p = sev.probs.nan_to_num(0.0, 0.0, 0.0)
    return delta + torch.where(p == 0, 0.0, p * delta).sum(1, keepdim=True)


def _softmax_forward_error(sev, dtype: torch.dtype, contract: str) -> Tensor:
    """``d_j`` plus a half result's one rounding (rows, n)."""
    error = _softmax_compute_error(sev, unit_roundoff(compute_dtype(dtype)), contract)
    if _is_half(dtype):
        error = error + unit_roundoff(dtype) * _half_rounded(sev)
    return error


def _half_rounded(sev) -> Tensor:
    """What a half result's roundings to the dtype cost: the result's own, and either the
    exponential's (softmax: a relative ``u_o`` more) or ``log s``'s (log-softmax: no larger than
    the result, as ``log p_j <= -log s``)."""
    rounded = _finite_abs(sev.output_rows)
    return 2 * rounded if sev.form == "softmax" else rounded + _finite_abs(sev.log_sum)[:, None]


def _fixed(sev, gradient: bool) -> Tensor:
    """The entries the semantics fix exactly (rows, n), judged with bound 0: a masked entry of a
    row that keeps one (output 0 or -inf, gradient 0), a fully masked row's output under
    ``"zero"``, and its gradient under ``"zero"`` or ``"uniform"``."""
    fully = sev.fully_masked[:, None]
    masked = torch.zeros_like(fully) if sev.masked is None else sev.masked
    fills = ("zero", "uniform") if gradient else ("zero",)
    return (masked & ~fully) | (fully & (sev.variant.fully_masked_rows in fills))


def softmax_bound(sev, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable ``|y - truth|`` per element of a softmax or log-softmax, shaped like the
    input: the implementation's error and the float64 truth's own."""
    _check_contract(contract)
    truth = _softmax_compute_error(sev, _TRUTH_U, EXACT, transform=True)
    bound = _softmax_forward_error(sev, dtype, contract) + truth + underflow_floor(dtype)
    return sev.to_input(bound.masked_fill(_fixed(sev, gradient=False), 0.0))


def softmax_row_sum_bound(sev, dtype: torch.dtype, contract: str) -> Tensor:
    """A softmax row sums to 1 within the sum of its elements' bounds (the float64 sum of the
    check is exact to far below them); shaped like the input with ``dim`` kept as 1."""
    rows = (_softmax_forward_error(sev, dtype, contract) + underflow_floor(dtype)).sum(1)
    moved = [size for i, size in enumerate(sev.shape) if i != sev.dim] + [1]
    return rows.reshape(moved).movedim(-1, sev.dim)


def softmax_grad_bound(sev, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable ``|dx - truth|`` per element of the VJP, shaped like the input: with
    respect to ``z``, then through the chain rule's factor ``dz/dx`` (``ground``, Transformed inputs)
    where there is one."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    d = _softmax_compute_error(sev, u, contract)
    if _is_half(dtype):  # the saved output, rounded to the dtype
        d = d + u_o * _half_rounded(sev)
    g = sev.rows(grad_output)
    compute = _softmax_vjp_error(sev, g, d, u) + _softmax_vjp_error(sev, g, _softmax_compute_error(
        sev, _TRUTH_U, EXACT, transform=True), _TRUTH_U)  # the implementation's and the float64 truth's own
    dx = _finite_abs(sev.grad_rows_of(g))
    if sev.derivative is not None:
        dz = _finite_abs(sev.z_grad_rows(g))
        factor = sum(_chain_factor_error(sev.derivative, sev.cap_tanh, sev.variant.scale, at) for at in (u, _TRUTH_U))
        compute = sev.derivative.abs() * compute + dz * factor + u * dx
    if _is_half(dtype):
        compute = compute + u_o * dx
    scale = g.abs().amax(1, keepdim=True).clamp(min=1.0) if sev.num_classes else torch.ones(g.shape[0], 1)
    bound = compute.nan_to_num(0.0, 0.0, 0.0) + underflow_floor(dtype) * scale
    return sev.to_input(bound.masked_fill(_fixed(sev, gradient=True), 0.0))


def _softmax_vjp_error(sev, g: Tensor, d: Tensor, u: float) -> Tensor:
    """The error at unit roundoff ``u`` of the VJP with respect to ``z``, from the forward's ``d`` (rows, n)."""
    dx = _finite_abs(sev.z_grad_rows(g))
    additions = max(sev.num_classes - 1, 0) * u
    p = sev.probs.nan_to_num(0.0, 0.0, 0.0)
    if sev.form == "softmax":
        y = p
        diff = _finite_abs(g - (g * y).sum(1, keepdim=True))
        c_error = (g.abs() * d).sum(1, keepdim=True) + additions * (g * y).abs().sum(1, keepdim=True)
        compute = d * diff + (y + d) * c_error + u * y * diff + u * dx
    else:
        total = g.sum(1, keepdim=True).abs()
        rel_p = torch.expm1(d + _EXP_LOG_ULPS * u)
        compute = (p * rel_p * total + p * (1 + rel_p) * additions * g.abs().sum(1, keepdim=True)
                   + u * p * total + u * dx)
    return compute


def softmax_directional_bound(sev, tangent: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable ``|jvp - truth|`` per element of a softmax form's forward-mode derivative
    along ``tangent`` (the module docstring, Forward mode: softmax's is its VJP's bound), shaped like the input."""
    if sev.form == "softmax":
        return softmax_grad_bound(sev, tangent, dtype, contract)
    _check_contract(contract)
    v = sev.rows(tangent)

    def error(u: float, d: Tensor) -> Tensor:
        p = sev.probs.nan_to_num(0.0, 0.0, 0.0)
        weighted = (v.abs() * p).sum(1, keepdim=True)
        c_error = (v.abs() * p * torch.expm1(d + _EXP_LOG_ULPS * u)).sum(1, keepdim=True) + \
            sev.num_classes * u * weighted
        return c_error + u * _finite_abs(sev.directional_rows_of(v))

    u = unit_roundoff(compute_dtype(dtype))
    compute = error(u, _softmax_compute_error(sev, u, contract)) + error(
        _TRUTH_U, _softmax_compute_error(sev, _TRUTH_U, EXACT))   # the implementation's and the truth's own
    scale = v.abs().amax(1, keepdim=True).clamp(min=1.0) if sev.num_classes else torch.ones(v.shape[0], 1)
    return sev.to_input(compute.nan_to_num(0.0, 0.0, 0.0) + underflow_floor(dtype) * scale)


def softmax_hessian_vector_bound(sev, grad_output: Tensor, v: Tensor, dtype: torch.dtype,
                                 contract: str = DEFAULT_CONTRACT) -> Tensor:
    """Largest acceptable ``|Hv - truth|`` per element of a softmax form's double backward
    (``softmax.SoftmaxEvaluation.hessian_vector``; float64 and float32 only, as every second
    derivative), shaped like the input.

    Derivation. With ``D_k`` the absolute error of the probability ``p_k`` (softmax: the forward's
    ``d_k``; log-softmax: ``p_k expm1(d_k + _EXP_LOG_ULPS u)``, ``p = exp(y)``), and each product
    and sum rounding a partial result no larger than the sum of its terms' magnitudes (Higham 3.1):
        err <w, p>   <= sum_k |w_k| D_k + sum_k p_k e(w_k) + (n + 1) u sum_k p_k |w_k|
        err J(w)_j   <= D_j (|w_j| + |<w,p>|) + p_j (e(w_j) + err <w,p>) + 2 u p_j (|w_j| + |<w,p>|)
    for ``J(w) = p (w - <w, p>)`` and ``w``'s own error ``e(w)``. Log-softmax ``-S J(v)``, ``S =
    sum g`` off by ``n u sum |g|``: ``|S| err J(v) + n u sum|g| |J(v)| + u |S J(v)|``. Softmax
    ``J(v g) - <v,p> J(g) - <g,p> J(v)`` (``e(v g) = u |v g|``): ``err J(v g)`` plus, for each
    product ``c J(w)``, ``|c| err J(w) + err(c) |J(w)| + u |c J(w)|``, plus the two subtractions'
    roundings ``u`` times the three terms' magnitudes. The float64 truth's own error (the same at
    float64's ``u`` from the exact forward) is added, and the underflow floor times the row's
    largest ``|g| |v|`` (at least 1).
    """
    _check_contract(contract)
    g, direction = sev.rows(grad_output), sev.rows(v)
    n = sev.num_classes
    p = sev.probs.nan_to_num(0.0, 0.0, 0.0)

    def error(u: float, d: Tensor) -> Tensor:
        D = d if sev.form == "softmax" else p * torch.expm1(d + _EXP_LOG_ULPS * u)

        def dot(w: Tensor, e: Tensor) -> tuple:
            value = (w * p).sum(1, keepdim=True)
            return value, ((w.abs() * D).sum(1, keepdim=True) + (p * e).sum(1, keepdim=True)
                           + (n + 1) * u * (p * w.abs()).sum(1, keepdim=True))

        def jacobian(w: Tensor, e: Tensor) -> tuple:
            c, c_error = dot(w, e)
            size = w.abs() + c.abs()
            return p * (w - c), D * size + p * (e + c_error) + 2 * u * p * size

        zero = torch.zeros_like(g)
        jv, jv_error = jacobian(direction, zero)
        if sev.form != "softmax":
            total = g.sum(1, keepdim=True)
            return total.abs() * jv_error + n * u * g.abs().sum(1, keepdim=True) * jv.abs() + u * (total * jv).abs()
        jvg, jvg_error = jacobian(direction * g, u * (direction * g).abs())
        found, magnitudes = jvg_error, jvg.abs()
        for c_of, w in ((direction, g), (g, direction)):
            c, c_error = dot(c_of, zero)
            jw, jw_error = jacobian(w, zero)
            found = found + c.abs() * jw_error + c_error * jw.abs() + u * (c * jw).abs()
            magnitudes = magnitudes + (c * jw).abs()
        return found + 2 * u * magnitudes

    u = unit_roundoff(compute_dtype(dtype))
    compute = error(u, _softmax_compute_error(sev, u, contract)) + error(
        _TRUTH_U, _softmax_compute_error(sev, _TRUTH_U, EXACT))
    scale = (g.abs() * direction.abs()).amax(1, keepdim=True).clamp(min=1.0) if n else torch.ones(g.shape[0], 1)
    return sev.to_input(compute.nan_to_num(0.0, 0.0, 0.0) + underflow_floor(dtype) * scale)

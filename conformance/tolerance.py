"""The tolerance policy: every bound the kit applies, derived here and nowhere else.

Notation: ``u`` is the unit roundoff of the precision an implementation computes in, ``u_o`` that
of the dtype it returns, ``n`` the number of classes, ``N`` the number of positions reduced. The
reference (``reference.Evaluation``) is exact float64 arithmetic on the *same rounded inputs*
the implementation saw, so input rounding never enters a bound.

Three contracts (``CONTRACTS``); the judge (``judge.Judge``) applies the run's contract to every
comparison and also grades every comparison against ``exact``:

``standard`` (the default): the error of the standard fused algorithm, the one every fused kernel
  uses (Liger-Kernel's ``ops/cross_entropy.py``, flash-attention's ``ops/triton/cross_entropy.py``,
  unsloth's ``kernels/cross_entropy_loss.py``, Transformer Engine's Triton loss): a logsumexp
  formed as one number ``lse = m + log s`` at float32-or-better precision, and the loss
  ``A lse - sum_c a_c z_c`` (``lse - z_y`` for a plain index target), the gradient from
  ``exp(z_j - lse)``. It is ``exact``'s bound plus the terms that algorithm adds, at the
  *compute* precision (``u = u(float32)`` for half inputs):
    * value: ``lse`` rounds once and enters ``A`` times, ``A lse`` rounds, the ``n`` products
      ``a_c z_c`` and their sum round (``n u sum_c |a_c z_c|``), and ``a_c`` itself was formed
      in the compute precision (one more ``u`` on each product):
      ``u (3 A |lse| + (n + 1) sum_c |a_c z_c|)`` per position;
    * gradient: ``exp(z_j - lse)`` with ``lse`` off by ``u |lse|`` is relatively off by
      ``expm1(u |lse|)`` (the rounding of ``z_j - lse`` itself is ``u |log p_j|``, already in
      ``exact``); since ``lse >= m`` in any rounding, ``exp(z_j - lse) <= 1``: the error of a
      probability never exceeds 1, and the bound is capped there.
  A half-precision result is still the float32 computation rounded to the dtype, so it fails
  every rounding to the half dtype of a quantity larger than the result: torch's own CPU half
  loss on confident rows, a bf16 target-gradient cancellation (Liger#1268), a logsumexp rounded
  to bf16 before the subtraction.

``exact``: the shift-invariant bound below (the kit's contract before ``standard``): no ``|m|``
  or ``|lse|`` term, so a kernel that forms ``lse`` and subtracts ``z_y`` afterwards fails on
  shifted and confident rows. Every check records its error over this bound: the accuracy grade.
  * float64 and float32 implementations compute in their own dtype (``u = u_o``);
  * float16 and bfloat16 implementations must be *as accurate as computing in float32 and
    rounding to the dtype* (``u = u(float32)``), where the rounding may happen up to
    ``HALF_PRECISION_ROUNDINGS`` times, each to a quantity no larger than the result: the
    op-by-op composition torch's CPU kernels use for smoothing and weights (nll, smoothing term,
    their scaling and sum, each rounded) costs ``u_o |result|`` per step.

``parity``: a half-precision value or gradient passes if its error is no worse than
  ``PARITY_FACTOR`` times torch's own error on the same device and dtype, plus the rounding of
  the result (for users who only need parity with torch); every other comparison is judged by
  ``standard``.

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
``h_j = g_j - c``: ``g_j`` within the gradient bound ``G_j`` above; ``c`` an inner product of
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

Every bound adds an underflow floor: each rounding of a result in the subnormal range errs by
up to half the dtype's smallest subnormal, and a result may round as often as the contract
allows (twice in float32/float64, ``HALF_PRECISION_ROUNDINGS`` times in a half dtype, e.g.
``fl16(1.75 * fl16(p / N))``); plus float32's smallest normal (kernels may flush subnormals in
float32); all times the magnitude of the upstream gradient where it scales the result.

Variants (``reference.Variant``). The loss sees ``z = c tanh(s x / c)`` (or ``s x``) formed at
the compute precision: the product rounds once, the cap's division, ``tanh`` (to 2 ulp) and
product four times more, and ``tanh``'s condition number ``|x tanh'(x) / tanh(x)|`` is at most 1,
so each ``z_c`` errs by ``delta_c = k u |z_c|`` (``k`` = ``_SCALE_ULPS`` + ``_CAP_ULPS``). That
perturbs a position's loss by ``sum_c |A' p_c - a_c| delta_c``, with ``A' = A + 2 lam k lse`` the
z-loss's share of the softmax term, and every probability relatively by ``delta_c + sum_j p_j
delta_j``. The z-loss ``lam lse^2`` errs by ``2 lam |lse| e + lam e^2`` from the logsumexp's
error ``e = u (log s + spread + n + 4) + u |lse|`` (its last rounding is in every contract: the
z-loss is not shift-invariant) and by three roundings of its own. The chain rule multiplies the
gradient with respect to ``z`` (and its bound) by ``d = s (1 - t^2)``, ``t = tanh(s x / c)``,
which a kernel forms with ``t`` off by ``3 u |t| + u/2`` (``x sech^2 x <= 0.45``), ``1 - t^2``
off by ``2 |t|`` times that plus two roundings: near saturation ``1 - t^2`` cancels, so that
error is absolute, ``|s| u``-sized, not relative. The returned auxiliaries: the logsumexp
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

Linear cross entropy (``linear.LinearEvaluation``): the loss of ``z = h W^T + b``, ``H`` the
hidden size. Each logit is an inner product of ``H`` terms plus the bias, formed at the compute
precision with any summation order: ``|dz_c| <= gamma_{H+1} (|h| |W|^T + |b|)_c`` (Higham 3.1,
``gamma_n = n u / (1 - n u)``); the float64 truth forms it too, so its own ``gamma_{H+1}`` at
float64's ``u`` is added. ``standard`` also lets a half kernel store each logit in the dtype once
(``u_o |z_c|``: Liger-Kernel's chunk of logits, torch's composition), ``exact`` does not. A
perturbation ``delta`` of the logits moves the logsumexp by at most ``sum_c p_c delta_c
e^{delta_c}`` (convexity), hence a position's loss by ``sum_c (A p_c e^{delta_c} + |a_c|)
delta_c`` and each probability relatively by ``expm1(delta_j + that)``: added to the loss's and
the logit gradient's bounds above. An idle row's logits (ignored, or a zero-weight target) move
neither, whatever their size: its ``delta`` is 0 (hidden states of norm 1e30 there would make
``A p e^{delta}`` a ``0 * inf``). The logit gradient ``G``, off by ``E`` elementwise, then
enters three products summed at the compute precision (float32 accumulation for half inputs:
a weight or bias gradient accumulated in the half dtype over chunks fails):
``d/dh = G W`` within ``E |W| + gamma_V |G| |W|``, ``d/dW = G^T h`` within
``E^T |h| + gamma_N |G|^T |h|``, ``d/db`` within ``sum_i E_i + gamma_N sum_i |G_i|``, each
``gamma`` also at float64's ``u`` for the truth, and a half result rounded as every half result.
Under autocast (float32 inputs, a half ``dtype`` for the matmuls) a loss may compute on the
inputs or on their roundings to ``dtype``, as autocast's own ops do: the bound of the rounded
problem in ``dtype``, plus how far the two problems' truths lie apart.
A declared ``gradient_filter`` ``eps`` (``vocabulary.APPROXIMATIONS``) lets each element of ``G`` be
dropped below ``eps`` times its row's upstream gradient over the divisor: ``E += s eps``.

Softmax forms (``softmax.SoftmaxEvaluation``; ``n`` entries along ``dim``, ``m`` their max, ``s =
sum_k exp(z_k - m)``, ``spread = sum_k p_k |z_k - m|``). ``m`` is exact (comparisons). The sum:
each term ``exp(z_k - m)`` is relatively off by ``u |z_k - m| + _EXP_LOG_ULPS u`` (an online
kernel forms it as ``exp(z_k - m_b) exp(m_b - m)`` over running maxima, whose differences'
roundings add up to at most ``u |z_k - m|`` as every ``m_b`` lies between ``z_k`` and ``m``), which
enters ``s`` weighted by ``p_k``: ``u (spread + _EXP_LOG_ULPS)``; the ``n - 1`` additions round
once each in any order (Higham 4.2) and may each come with the rescaling of a partial sum to a new
max (``_RESCALE_ULPS``): ``sigma = u (spread + _EXP_LOG_ULPS + (1 + _RESCALE_ULPS)(n - 1))``
relative to ``s``, hence absolute in ``log s`` (``log(1 + e) <= e``).
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
  |z_j|`` as the loss variants' logits (``k`` = ``_SCALE_ULPS`` + ``_CAP_ULPS``), which moves each
  log-probability by ``delta_j + sum_k p_k delta_k`` (absolute for log-softmax, relative through
  ``expm1`` for softmax); ``exact`` does not (a kernel whose scale is a power of two and that
  takes no cap forms ``z`` exactly). The float64 truth's own transform is added in both. The VJP
  with respect to ``x`` is ``d_j`` times the one with respect to ``z``: its bound times ``|d_j|``,
  plus ``|dz_j|`` times the chain factor's error (Variants, at the compute precision and at
  float64's), plus the product's rounding ``u |dx_j|``. What a mask fixes is judged exactly (bound
  0): a masked entry of a row that keeps one is 0 (``-inf``) with gradient 0, whatever the offset
  of the kept ones (a kernel that fills with a finite value fails where a kept score lies below
  it); a fully masked row under ``"zero"`` is 0 (``-inf``) with gradient 0, under ``"uniform"``
  ``1/n`` (``-log n``) within the bound of a constant row, with gradient 0; under ``"nan"`` NaN,
  its gradient judged only to stay in its row.

Derived identities (Hessian-vector products, directional derivatives, sums of two bounds, the
document's paths, the XOR trajectory) are bounded from these, each derivation at its function.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .reference import Evaluation, to_rows
from .vocabulary import HALF_DTYPES

__all__ = ["CONTRACTS", "DEFAULT_CONTRACT", "EXACT", "PARITY_FACTOR", "unit_roundoff", "compute_dtype",
           "underflow_floor", "value_bound", "grad_bound", "parity_bound", "BOUNDS", "bound", "chunked_peak_limit",
           "growth_limit"]

CONTRACTS = ("standard", "exact", "parity")
DEFAULT_CONTRACT = "standard"
EXACT = "exact"

# Parity mode: an implementation may be up to twice as far from the truth as torch on the same
# device and dtype (two independent roundings of the same size), never more.
PARITY_FACTOR = 2.0

_EXP_LOG_ULPS = 4
# Vocab parallel: rescaling a shard's sum to the global max, an exp (2 ulp) and a product.
_RESCALE_ULPS = 3
# Roundings in forming the loss's logits (see Variants): the scale's product; the cap's division,
# tanh (2 ulp) and product, and one more where both apply.
_SCALE_ULPS, _CAP_ULPS = 1, 4

# Roundings to a half dtype of quantities no larger than the result (see the contract above).
HALF_PRECISION_ROUNDINGS = 4
# Roundings of a saved log-probability in a half dtype (its value and the row statistic it is
# formed from; measured on torch's CPU bf16 log_softmax for 131073 classes).
SAVED_LOG_PROB_ROUNDINGS = 2
# XOR trajectory (test_document): the two training runs share every operation but the loss. An
# error made at step s stays in the weights, so step t is judged against the largest step bound
# so far, and SGD's contraction near the minimum keeps the accumulated drift to a few such steps
# (measured: at most 2 roundings of the early loss in every dtype). We allow 8.
XOR_TRAJECTORY_BOUNDS = 8


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the distance from 1 to the next representable number (``eps / 2``)."""
    return torch.finfo(dtype).eps / 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision an implementation is expected to compute in: float32 for half inputs."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def _is_half(dtype: torch.dtype) -> bool:
    return compute_dtype(dtype) != dtype


def underflow_floor(dtype: torch.dtype) -> float:
    """Absolute error allowed for results that underflow (see the module docstring)."""
    info = torch.finfo(dtype)
    roundings = HALF_PRECISION_ROUNDINGS if _is_half(dtype) else 2
    return roundings * info.tiny * info.eps / 2 + torch.finfo(torch.float32).tiny


def _check_contract(contract: str) -> None:
    if contract not in CONTRACTS:
        raise ValueError(f"contract={contract!r}: expected one of {CONTRACTS}")


def _abs_products(a: Tensor, values: Tensor) -> Tensor:
    """``sum_c |a_c v_c|`` per row, with ``0 * inf`` taken as 0."""
    return torch.where(a == 0, torch.zeros_like(a), (a * values).abs()).sum(1)


def _log_sum(ev: Evaluation) -> Tensor:
    return (ev.logsumexp - ev.inputs.amax(1)).nan_to_num(0.0, 0.0, 0.0) if ev.num_classes else ev.logsumexp


def _lse_error(ev: Evaluation, u: float, shards: int = 1) -> Tensor:
    """Error of ``log p_j = (z_j - m) - log s`` apart from its own last rounding (shift-invariant);
    with the classes over ``shards`` ranks, the rescaling of each shard's sum (Vocab parallel)."""
    sharded = u * (ev.spread + _RESCALE_ULPS) if shards > 1 else 0.0
    return u * (_log_sum(ev) + ev.spread + ev.num_classes + _EXP_LOG_ULPS) + sharded


def _abs_lse(ev: Evaluation) -> Tensor:
    return ev.logsumexp.abs().nan_to_num(0.0, 0.0, 0.0)


def _transform_error(z: Tensor, scaled: bool, capped: bool, u: float) -> Tensor:
    """``delta``: the error of each transformed input ``z`` (scaled, capped) formed at ``u`` (Variants)."""
    ulps = (_SCALE_ULPS if scaled else 0) + (_CAP_ULPS if capped else 0)
    return ulps * u * z.abs().nan_to_num(0.0, 0.0, 0.0)


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
    """Forward error of each position's loss when computed at unit roundoff ``u``."""
    a, n = ev.weighted_target, ev.num_classes
    terms = _abs_products(a, ev.log_probs)
    if ev.input_kind == "logits":
        error = a.sum(1) * _lse_error(ev, u, shards) + (n + 2) * u * terms
        if contract != EXACT:
            error = error + u * (3 * a.sum(1) * _abs_lse(ev) + (n + 1) * _abs_products(a, ev.inputs))
        if ev.variant.active:
            error = error + _variant_value_error(ev, u)
        return torch.where(ev.idle, 0.0, error)   # an idle position's NaN statistics weigh nothing
    if ev.input_kind == "log_probs":
        return (n + 1) * u * terms
    return (n + 2) * u * terms + 2 * u * a.sum(1)


def _reduced_bound(ev: Evaluation, row_err: Tensor, row_values: Tensor, expected: Tensor,
                   dtype: torch.dtype) -> Tensor:
    """A bound on a reduced per-position quantity from its positions' errors: a sum of ``N``
    terms adds ``(N + 1) u sum_i |v_i|``; the mean's divisor and division, and the half rounding."""
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    expected = expected.abs()
    if ev.reduction == "none":
        compute = row_err.reshape(expected.shape)
    else:
        n_rows = row_values.shape[0]
        compute = row_err.sum() + (n_rows + 1) * u * row_values.abs().sum()
        if ev.reduction == "mean":
            compute = compute / ev.denominator.abs() + (n_rows + 2) * u * expected
    rounding = HALF_PRECISION_ROUNDINGS * u_o * expected if _is_half(dtype) else torch.zeros_like(expected)
    return compute + rounding + underflow_floor(dtype)


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


def _rows_shaped_like(bound_rows: Tensor, g: Tensor) -> Tensor:
    if g.dim() > 1:
        return bound_rows.reshape(g.movedim(1, -1).shape).movedim(-1, 1)
    return bound_rows.reshape(g.shape)


def _chain_factor_error(d: Tensor, cap_tanh, scale: float, u: float) -> Tensor:
    """The error of the chain rule's factor ``d = s (1 - t^2)`` as a kernel forms it (Variants)."""
    if cap_tanh is None:
        return u * d.abs()
    t = cap_tanh.abs()
    t_error = 3 * u * t + u / 2
    return abs(scale) * (2 * t * t_error + u * t * t + u * (1 - t * t)) + u * d.abs()


def _derivative_error(ev: Evaluation, u: float) -> Tensor:
    return _chain_factor_error(ev.logit_derivative, ev.cap_tanh, ev.variant.logit_scale, u)


def grad_bound(ev: Evaluation, grad_output: Tensor, dtype: torch.dtype, contract: str = DEFAULT_CONTRACT,
               shards: int = 1) -> Tensor:
    """Largest acceptable ``|grad - reference grad|`` per input element, shaped like the input
    (the classes over ``shards`` ranks: Vocab parallel)."""
    _check_contract(contract)
    u, u_o = unit_roundoff(compute_dtype(dtype)), unit_roundoff(dtype)
    s = ev.upstream_rows(grad_output).abs()[:, None]
    a = ev.weighted_target
    g = ev.grad(grad_output)
    g_rows = to_rows(g, class_dim=True)
    divisor_err = (ev.row_loss.shape[0] + 1) * u if ev.reduction == "mean" else 0.0
    if ev.input_kind == "logits":
        A = (a.sum(1, keepdim=True) + ev.z_coefficient).abs()  # the z-loss adds to the softmax term
        p = ev.probabilities
        z_minus_m = (ev.inputs - ev.inputs.amax(1, keepdim=True)).abs().nan_to_num(0.0, 0.0, 0.0)
        rel_p = _lse_error(ev, u, shards)[:, None] + u * (z_minus_m + ev.log_probs.abs().nan_to_num(0.0, 0.0, 0.0)) \
            + _EXP_LOG_ULPS * u
        if contract != EXACT:
            rel_p = rel_p + torch.expm1(u * _abs_lse(ev))[:, None]
        if ev.variant.active:
            delta = _logit_error(ev, u)
            rel_p = rel_p + delta + torch.where(p == 0, 0.0, p * delta).sum(1, keepdim=True)
        p_err = torch.where(p == 0, torch.zeros_like(p), p * rel_p)
        if contract != EXACT:
            p_err = p_err.clamp(max=1.0)
        compute = s * (A * p_err + 3 * u * (A * p + a.abs()))
        if ev.z_weight is not None:  # the z-loss's coefficient 2 lam k lse, off by 2 lam k e
            compute = compute + s * p * (2 * _z_loss_scale(ev) * _logsumexp_error(ev, u))[:, None]
        if _is_half(dtype):
            saved = s * A * p * ev.log_probs.abs()
            compute = compute + SAVED_LOG_PROB_ROUNDINGS * u_o * torch.where(p == 0, torch.zeros_like(p), saved)
        if ev.logit_derivative is not None:  # the chain rule through scale and cap
            z_grad = s * ((a.sum(1, keepdim=True) + ev.z_coefficient) * p - a)
            compute = ev.logit_derivative.abs() * compute + z_grad.abs() * _derivative_error(ev, u)
        compute = torch.where(ev.idle[:, None], 0.0, compute)   # an idle position's gradient is exactly 0
    else:
        compute = 4 * u * g_rows.abs()
    compute = compute + (2 * u + divisor_err) * g_rows.abs()
    if _is_half(dtype):
        compute = compute + HALF_PRECISION_ROUNDINGS * u_o * g_rows.abs()
        unrepresentable = a.to(dtype).to(torch.float64) != a
        d = ev.logit_derivative.abs() if ev.logit_derivative is not None else 1.0
        compute = compute + HALF_PRECISION_ROUNDINGS * u_o * s * d * torch.where(unrepresentable, a.abs(), 0.0)
    upstream = ev.upstream_rows(grad_output) * (ev.denominator if bool(ev.denominator != 0) else 1.0)
    bound = compute + underflow_floor(dtype) * upstream.abs().clamp(min=1.0)[:, None]
    return _rows_shaped_like(bound, g)


def parity_bound(torch_result: Tensor, expected: Tensor, dtype: torch.dtype) -> Tensor:
    """``parity``: ``PARITY_FACTOR`` times torch's own error, plus the rounding of the result."""
    torch_error = (torch_result.detach().to("cpu", torch.float64) - expected).abs()
    return PARITY_FACTOR * torch_error + HALF_PRECISION_ROUNDINGS * unit_roundoff(dtype) * expected.abs() \
        + underflow_floor(dtype)


# ---------------------------------------------------------------------------------------------
# Bounds of derived identities, each from the value or gradient bound.


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


# ---------------------------------------------------------------------------------------------
# Linear cross entropy (see the module docstring).

_TRUTH_U = unit_roundoff(torch.float64)


def _gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error of a sum or inner product of ``n``
    terms (Accuracy and Stability of Numerical Algorithms, 3.1)."""
    return n * u / (1 - n * u)


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


def linear_autocast_bound(bound_of: str, rounded, truth_distance: Tensor, autocast_dtype: torch.dtype,
                          dtype: torch.dtype, contract: str = DEFAULT_CONTRACT, **terms) -> Tensor:
    """A linear quantity (its bound ``bound_of``) computed under autocast to ``autocast_dtype`` (see
    the module docstring): ``bound_of``'s bound of ``rounded``, the problem on the inputs rounded to
    that dtype, plus ``truth_distance``, how far its truth lies from the float32 inputs' truth."""
    return BOUNDS[bound_of](rounded, dtype=autocast_dtype, contract=contract, **terms) + truth_distance

# Run to run. A loss that declares ``nondeterministic`` (atomic adds: its sums take their terms in
# the order the scheduler picks) is held to the difference of two such orders, not to bitwise
# equality. A sum of n terms in any order errs by gamma_{n-1} sum_i |x_i| (Higham (4.4)), so two
# orders differ by at most twice that. The loss sums C exponentials per position, whose log then
# moves by at most 2 gamma_C (the terms are positive: a relative change of s), weighted by the
# position's a; and N position losses, non-negative, so sum_i |x_i| is the result itself. The
# gradient's softmax shares its row's sum (2 gamma_C relative, times the row's scale |upstream| a),
# and the mean's divisor is a sum of N weights (2 gamma_N relative). A half result is rounded once
# more in each run: 2 u_o |result|.

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


# ---------------------------------------------------------------------------------------------
# The softmax forms (see Softmax forms above).


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
    respect to ``z``, then through the chain rule's factor ``dz/dx`` (Variants) where there is one."""
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
    along ``tangent`` (see Softmax forms: softmax's is its VJP's bound), shaped like the input."""
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


BOUNDS = {
    "value": value_bound,
    "gradient": grad_bound,
    "value pair": value_pair_bound,
    "gradient pair": grad_pair_bound,
    "gradient row sums": row_sum_bound,
    "simplex gradient": simplex_grad_bound,
    "document path": document_path_bound,
    "soft target gradient": soft_target_gradient_bound,
    "xor trajectory": xor_trajectory_bound,
    "hessian-vector product": hessian_vector_bound,
    "directional derivative": directional_bound,
    "z-loss": z_loss_bound,
    "logsumexp": lse_bound,
    "linear value": linear_value_bound,
    "linear input gradient": linear_input_grad_bound,
    "linear weight gradient": linear_weight_grad_bound,
    "linear bias gradient": linear_bias_grad_bound,
    "linear under autocast": linear_autocast_bound,
    "run to run value": rerun_value_bound,
    "run to run gradient": rerun_gradient_bound,
    "softmax": softmax_bound,
    "softmax gradient": softmax_grad_bound,
    "softmax row sums": softmax_row_sum_bound,
    "softmax directional derivative": softmax_directional_bound,
    "softmax hessian-vector product": softmax_hessian_vector_bound,
}


def bound(kind: str, contract: str, dtype: torch.dtype, **terms) -> Tensor:
    """The bound named ``kind`` under ``contract`` (``parity`` outside the half-precision value and
    gradient comparisons the judge makes itself is ``standard``)."""
    _check_contract(contract)
    if kind not in BOUNDS:
        raise ValueError(f"bound kind {kind!r}: expected one of {sorted(BOUNDS)}")
    return BOUNDS[kind](dtype=dtype, contract=DEFAULT_CONTRACT if contract == "parity" else contract, **terms)


# ---------------------------------------------------------------------------------------------
# Memory (``conformance.memory`` measures it; the suite's ``test_memory`` applies these).


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

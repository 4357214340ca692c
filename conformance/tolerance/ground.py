"""The ground every bound builds on: the contracts, the unit roundoff and the precision an
implementation computes in, the roundings a half result may take, the underflow floor, the
error of a variant's transformed inputs, and the reduction of a loss's per-position errors.

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

``exact``: the shift-invariant bound (``logits``, Forward error; the kit's contract before
  ``standard``): no ``|m|`` or ``|lse|`` term, so a kernel that forms ``lse`` and subtracts ``z_y``
  afterwards fails on shifted and confident rows. Every check records its error over this bound:
  the accuracy grade.
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

Every bound adds an underflow floor: each rounding of a result in the subnormal range errs by
up to half the dtype's smallest subnormal, and a result may round as often as the contract
allows (twice in float32/float64, ``HALF_PRECISION_ROUNDINGS`` times in a half dtype, e.g.
``fl16(1.75 * fl16(p / N))``); plus float32's smallest normal (kernels may flush subnormals in
float32); all times the magnitude of the upstream gradient where it scales the result.

Transformed inputs (the variants of the loss, ``logits``, and of the softmax forms, ``softmax``).
A variant sees ``z = c tanh(s x / c)`` (or ``s x``) formed at the compute precision: the product
rounds once, the cap's division, ``tanh`` (to 2 ulp) and product four times more, and ``tanh``'s
condition number ``|x tanh'(x) / tanh(x)|`` is at most 1, so each ``z_c`` errs by ``delta_c = k u
|z_c|`` (``k`` = ``_SCALE_ULPS`` + ``_CAP_ULPS``). The chain rule multiplies the gradient with
respect to ``z`` (and its bound) by ``d = s (1 - t^2)``, ``t = tanh(s x / c)``, which a kernel
forms with ``t`` off by ``3 u |t| + u/2`` (``x sech^2 x <= 0.45``), ``1 - t^2`` off by ``2 |t|``
times that plus two roundings: near saturation ``1 - t^2`` cancels, so that error is absolute,
``|s| u``-sized, not relative.

Reductions (of a loss on logits or a linear loss, ``_reduced_bound``): a sum of ``N`` terms adds
``(N + 1) u sum_i |loss_i|``; the mean's divisor is itself a sum (relative error ``(N + 1) u``) and
the division rounds once more.

Sums and inner products of ``n`` terms err by Higham's ``gamma_n`` (``_gamma``); the float64
truth's own roundings are counted at ``_TRUTH_U`` where a bound adds them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import Evaluation
from ..vocabulary import HALF_DTYPES

CONTRACTS = ("standard", "exact", "parity")
DEFAULT_CONTRACT = "standard"
EXACT = "exact"

# Parity mode: an implementation may be up to twice as far from the truth as torch on the same
# device and dtype (two independent roundings of the same size), never more.
PARITY_FACTOR = 2.0

# ``exp`` and ``log``, each to a few ulp (``logits``, Forward error; ``softmax``).
_EXP_LOG_ULPS = 4
# Rescaling a sum to a larger max (a shard's to the global one: ``logits``, Vocab parallel; an
# online softmax's partial sum: ``softmax``), an exp (2 ulp) and a product.
_RESCALE_ULPS = 3
# Roundings in forming the transformed inputs (see Transformed inputs): the scale's product; the
# cap's division, tanh (2 ulp) and product, and one more where both apply.
_SCALE_ULPS, _CAP_ULPS = 1, 4

# Roundings to a half dtype of quantities no larger than the result (see the contracts above).
HALF_PRECISION_ROUNDINGS = 4


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


_TRUTH_U = unit_roundoff(torch.float64)


def _check_contract(contract: str) -> None:
    if contract not in CONTRACTS:
        raise ValueError(f"contract={contract!r}: expected one of {CONTRACTS}")


def _gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error of a sum or inner product of ``n``
    terms (Accuracy and Stability of Numerical Algorithms, 3.1)."""
    return n * u / (1 - n * u)


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


def _rows_shaped_like(bound_rows: Tensor, g: Tensor) -> Tensor:
    if g.dim() > 1:
        return bound_rows.reshape(g.movedim(1, -1).shape).movedim(-1, 1)
    return bound_rows.reshape(g.shape)


def _transform_error(z: Tensor, scaled: bool, capped: bool, u: float) -> Tensor:
    """``delta``: the error of each transformed input ``z`` (scaled, capped) formed at ``u`` (Transformed inputs)."""
    ulps = (_SCALE_ULPS if scaled else 0) + (_CAP_ULPS if capped else 0)
    return ulps * u * z.abs().nan_to_num(0.0, 0.0, 0.0)


def _chain_factor_error(d: Tensor, cap_tanh, scale: float, u: float) -> Tensor:
    """The error of the chain rule's factor ``d = s (1 - t^2)`` as a kernel forms it (Transformed inputs)."""
    if cap_tanh is None:
        return u * d.abs()
    t = cap_tanh.abs()
    t_error = 3 * u * t + u / 2
    return abs(scale) * (2 * t * t_error + u * t * t + u * (1 - t * t)) + u * d.abs()


def parity_bound(torch_result: Tensor, expected: Tensor, dtype: torch.dtype) -> Tensor:
    """``parity``: ``PARITY_FACTOR`` times torch's own error, plus the rounding of the result."""
    torch_error = (torch_result.detach().to("cpu", torch.float64) - expected).abs()
    return PARITY_FACTOR * torch_error + HALF_PRECISION_ROUNDINGS * unit_roundoff(dtype) * expected.abs() \
        + underflow_floor(dtype)

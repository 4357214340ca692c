"""The tolerance policy: every bound the kit applies, derived in this package and nowhere else.

A bound is the largest error an implementation may make in one result (a loss, a gradient
element, a softmax entry) against the float64 truth on the same rounded inputs: the roundings
of the algorithm a correct kernel runs, counted at the unit roundoff of the precision it computes
in, plus the float64 truth's own where it matters. The judge asks for one by kind through
``bound`` (the table ``BOUNDS``) under the run's contract:

``standard`` (the default)
  the error of the standard fused algorithm (a logsumexp formed as one number), float16/bfloat16
  as accurate as computing in float32 and rounding to the dtype;
``exact``
  the shift-invariant bound: no ``|lse|`` term; every comparison is also graded against it;
``parity``
  half-precision values and gradients no worse than ``PARITY_FACTOR`` times torch's own error
  (``parity_bound``); everything else as ``standard``.

Where each derivation lives, imports pointing down:
  * ``ground``: the notation, the three contracts, unit roundoff and compute precision, the half
    roundings, the underflow floor, the transformed inputs of the variants, reductions, parity;
  * ``logits``: cross entropy on logits (value, gradient, logsumexp, z-loss, variants, the
    classes sharded over ranks);
  * ``identities``: the derived identities (pairs, the gradient along the simplex, row sums, the
    document's paths, soft targets, the XOR trajectory, Hessian-vector, directional);
  * ``linear``: linear cross entropy (the logits' matmul error, the three input gradients);
  * ``softmax``: the softmax forms (forward, VJP, JVP, double backward, variants, masks);
  * ``limits``: what is not the error bound of one result: run to run, memory.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .ground import (
    CONTRACTS,
    DEFAULT_CONTRACT,
    EXACT,
    HALF_PRECISION_ROUNDINGS,
    PARITY_FACTOR,
    _check_contract,
    compute_dtype,
    parity_bound,
    underflow_floor,
    unit_roundoff,
)
from .identities import (
    XOR_TRAJECTORY_BOUNDS,
    directional_bound,
    document_path_bound,
    grad_pair_bound,
    hessian_vector_bound,
    row_sum_bound,
    simplex_grad_bound,
    soft_target_gradient_bound,
    value_pair_bound,
    xor_trajectory_bound,
)
from .limits import chunked_peak_limit, growth_limit, rerun_gradient_bound, rerun_value_bound
from .linear import linear_bias_grad_bound, linear_input_grad_bound, linear_value_bound, linear_weight_grad_bound
from .logits import SAVED_LOG_PROB_ROUNDINGS, grad_bound, lse_bound, value_bound, z_loss_bound
from .softmax import (
    softmax_bound,
    softmax_directional_bound,
    softmax_grad_bound,
    softmax_hessian_vector_bound,
    softmax_row_sum_bound,
)

__all__ = ["CONTRACTS", "DEFAULT_CONTRACT", "EXACT", "PARITY_FACTOR", "HALF_PRECISION_ROUNDINGS",
           "SAVED_LOG_PROB_ROUNDINGS", "XOR_TRAJECTORY_BOUNDS", "unit_roundoff", "compute_dtype", "underflow_floor",
           "parity_bound", "value_bound", "grad_bound", "z_loss_bound", "lse_bound", "value_pair_bound",
           "grad_pair_bound", "simplex_grad_bound", "row_sum_bound", "document_path_bound",
           "soft_target_gradient_bound", "xor_trajectory_bound", "hessian_vector_bound", "directional_bound",
           "linear_value_bound", "linear_input_grad_bound", "linear_weight_grad_bound", "linear_bias_grad_bound",
           "linear_autocast_bound", "rerun_value_bound", "rerun_gradient_bound", "softmax_bound",
           "softmax_grad_bound", "softmax_row_sum_bound", "softmax_directional_bound",
           "softmax_hessian_vector_bound", "BOUNDS", "bound", "chunked_peak_limit", "growth_limit"]


def linear_autocast_bound(bound_of: str, rounded, truth_distance: Tensor, autocast_dtype: torch.dtype,
                          dtype: torch.dtype, contract: str = DEFAULT_CONTRACT, **terms) -> Tensor:
    """A linear quantity (its bound ``bound_of``) computed under autocast to ``autocast_dtype`` (see
    ``linear``, Under autocast): ``bound_of``'s bound of ``rounded``, the problem on the inputs rounded to
    that dtype, plus ``truth_distance``, how far its truth lies from the float32 inputs' truth."""
    return BOUNDS[bound_of](rounded, dtype=autocast_dtype, contract=contract, **terms) + truth_distance


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

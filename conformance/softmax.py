"""The float64 truth of the softmax forms: ``softmax`` and ``log_softmax`` of the fed input, cast
to float64, along ``dim``, with the vector-Jacobian products and the row statistics the bounds
read (``tolerance``). Rows are moved to the last dim and flattened, so every statistic is
``(rows, n)`` and ``to_input`` puts an elementwise result back in the input's layout.

A row holding NaN, or ``+inf``, or only ``-inf`` entries is NaN, as torch's: float64 arithmetic
on ``z - max z`` makes it so (``inf - inf``, ``-inf - -inf``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SoftmaxEvaluation", "evaluate_softmax", "SOFTMAX_FORMS"]

SOFTMAX_FORMS = ("softmax", "log_softmax")


@dataclass(frozen=True)
class SoftmaxEvaluation:
    """The truth of one call: ``form``, the input's ``shape`` and ``dim``, and per row (``(rows, n)``)
    the float64 ``inputs``, ``shifted = z - max z``, ``log_probs``, ``probs``, and per row
    ``log_sum = log sum_j exp(z_j - m)`` and ``spread = sum_j p_j |z_j - m|``."""

    form: str
    shape: tuple
    dim: int
    inputs: Tensor
    shifted: Tensor
    log_probs: Tensor
    probs: Tensor
    log_sum: Tensor
    spread: Tensor

    @property
    def num_classes(self) -> int:
        return self.inputs.shape[1]

    @property
    def output_rows(self) -> Tensor:
        return self.probs if self.form == "softmax" else self.log_probs

    @property
    def output(self) -> Tensor:
        """The truth of the form's output, shaped like the input."""
        return self.to_input(self.output_rows)

    def rows(self, t: Tensor) -> Tensor:
        """``t`` (shaped like the input) as ``(rows, n)`` float64 on the cpu."""
        return t.detach().to("cpu", torch.float64).movedim(self.dim, -1).reshape(-1, self.num_classes)

    def to_input(self, rows: Tensor) -> Tensor:
        moved = list(self.shape)
        moved.append(moved.pop(self.dim))
        return rows.reshape(moved).movedim(-1, self.dim)

    def grad_rows(self, upstream: Tensor) -> Tensor:
        """The VJP per row: softmax ``y (g - sum(g y))``, log-softmax ``g - softmax(z) sum(g)``."""
        return self.grad_rows_of(self.rows(upstream))

    def grad_rows_of(self, g: Tensor) -> Tensor:
        """The VJP of upstream rows ``g`` (rows, n)."""
        if self.form == "softmax":
            return self.probs * (g - (g * self.probs).sum(1, keepdim=True))
        return g - self.probs * g.sum(1, keepdim=True)

    def grad(self, upstream: Tensor) -> Tensor:
        return self.to_input(self.grad_rows(upstream))

    def directional_rows_of(self, v: Tensor) -> Tensor:
        """The Jacobian times tangent rows ``v`` (what forward mode computes): softmax's Jacobian
        ``diag(y) - y y^T`` is symmetric, so its JVP is its VJP; log-softmax ``v - sum(softmax(z) v)``."""
        if self.form == "softmax":
            return self.grad_rows_of(v)
        return v - (self.probs * v).sum(1, keepdim=True)

    def directional(self, tangent: Tensor) -> Tensor:
        return self.to_input(self.directional_rows_of(self.rows(tangent)))


def evaluate_softmax(input: Tensor, dim: int, form: str) -> SoftmaxEvaluation:
    """The truth of ``form`` (``SOFTMAX_FORMS``) on ``input`` along ``dim``, in float64."""
    if form not in SOFTMAX_FORMS:
        raise ValueError(f"form={form!r}: expected one of {SOFTMAX_FORMS}")
    dim = dim % input.dim()
    x = input.detach().to("cpu", torch.float64)
    n = x.shape[dim]
    rows = x.movedim(dim, -1).reshape(-1, n)
    row_max = rows.amax(1, keepdim=True) if n else rows.sum(1, keepdim=True)
    shifted = rows - row_max
    log_sum = shifted.exp().sum(1, keepdim=True).log()
    log_probs = shifted - log_sum
    probs = log_probs.exp()
    spread = torch.where(probs == 0, 0.0, probs * shifted.abs()).sum(1)
    return SoftmaxEvaluation(form=form, shape=tuple(input.shape), dim=dim, inputs=rows, shifted=shifted,
                             log_probs=log_probs, probs=probs, log_sum=log_sum[:, 0], spread=spread)

"""Float64 truth for linear cross entropy: the loss of the logits ``z = h W^T + b`` that a fused
kernel never materialises, and its gradients with respect to the hidden states ``h (N, H)``, the
classifier weight ``W (V, H)`` and the bias ``b (V,)``.

The logits are formed in float64 from the very values the implementation was fed (already
rounded to their dtype), and the loss is ``reference.evaluate`` of those logits, so every loss
option means what it means there. With ``G = d loss / d z`` (``Evaluation.grad``)::

    d/dh = G W        d/dW = G^T h        d/db = sum_i G_i

Float64 rounds these products too; ``tolerance`` counts that rounding (``LinearEvaluation``
keeps the magnitudes it needs: ``|h| |W|^T + |b|`` per logit).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from .reference import Evaluation, evaluate

__all__ = ["LinearEvaluation", "evaluate_linear"]


def _wide(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().to("cpu", torch.float64)


@dataclass(frozen=True)
class LinearEvaluation:
    """The float64 linear problem: its inputs, and the loss of its logits (``logits``)."""

    hidden: Tensor
    linear_weight: Tensor
    linear_bias: Optional[Tensor]
    logits: Evaluation
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def memo(self, key: tuple, grad_output: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per key and upstream gradient (the same tensor object): the three
        gradients and their bounds share the logit gradient and its bound, (N, V) computations."""
        pinned, value = self._memo.get(key, (None, None))
        if pinned is not grad_output:
            value = compute()
            self._memo[key] = (grad_output, value)
        return value

    @property
    def loss(self) -> Tensor:
        return self.logits.loss

    @functools.cached_property
    def logit_magnitudes(self) -> Tensor:
        """``|h| |W|^T + |b|`` (N, V): what bounds the rounding of each logit's inner product."""
        products = self.hidden.abs() @ self.linear_weight.abs().T
        return products if self.linear_bias is None else products + self.linear_bias.abs()

    def logit_grad(self, grad_output: Tensor) -> Tensor:
        return self.memo(("logit gradient",), grad_output, lambda: self.logits.grad(grad_output))

    def input_grad(self, grad_output: Tensor) -> Tensor:
        return self.logit_grad(grad_output) @ self.linear_weight

    def weight_grad(self, grad_output: Tensor) -> Tensor:
        return self.logit_grad(grad_output).T @ self.hidden

    def bias_grad(self, grad_output: Tensor) -> Tensor:
        return self.logit_grad(grad_output).sum(0)


def evaluate_linear(hidden: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Optional[Tensor] = None,
                    **options) -> LinearEvaluation:
    """The loss of ``hidden @ linear_weight.T + linear_bias`` in float64, with ``reference.evaluate``'s
    options (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``)."""
    h, w, b = _wide(hidden), _wide(linear_weight), _wide(linear_bias)
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1]:
        raise ValueError(f"hidden {tuple(h.shape)} and linear_weight {tuple(w.shape)}: expected (N, H) and (V, H)")
    logits = h @ w.T if b is None else torch.addmm(b, h, w.T)
    return LinearEvaluation(hidden=h, linear_weight=w, linear_bias=b, logits=evaluate(logits, target, **options))

"""Call the implementation on a problem the way a training step does: forward, then backward.

The truth is evaluated on pristine copies of what the implementation was fed (logits, target,
weights, upstream gradient), taken before the call: a loss that overwrites its input (Liger-Kernel
writes the gradient into the logits) fails the checks that its inputs stay unmodified, not every
value and gradient check besides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .cases import Problem
from .impl import Implementation
from .reference import Evaluation, evaluate

__all__ = ["Outcome", "forward", "forward_backward", "truth"]


@dataclass(frozen=True)
class Outcome:
    """Pristine copies of the fed input and target, the loss, and (after backward) the input's
    gradient and the upstream gradient."""

    input: Tensor
    target: Tensor
    loss: Tensor
    grad: Optional[Tensor] = None
    upstream: Optional[Tensor] = None


def truth(impl: Implementation, problem: Problem, outcome: Outcome) -> Evaluation:
    """The float64 reference on exactly what the implementation was fed."""
    options = problem.call_options()
    return evaluate(outcome.input, outcome.target, **options.kwargs(), input_kind=impl.input_kind,
                    variant=impl.reference_variant(options))


def _pristine(t: Tensor) -> Tensor:
    return t.detach().clone()


def forward(impl: Implementation, problem: Problem) -> Outcome:
    """Forward only, without building a graph."""
    x, t = impl.feed(problem.case.logits, problem.case.target)
    pristine_x, pristine_t = _pristine(x), _pristine(t)
    with torch.no_grad():
        loss = impl(x, t, problem.call_options())
    return Outcome(input=pristine_x, target=pristine_t, loss=loss)


def forward_backward(impl: Implementation, problem: Problem) -> Outcome:
    """Forward with ``requires_grad``, then ``loss.backward(grad)`` with the problem's upstream gradient."""
    x, t = impl.feed(problem.case.logits, problem.case.target)
    pristine_x, pristine_t = _pristine(x), _pristine(t)
    x = x.detach().requires_grad_()
    loss = impl(x, t, problem.call_options())
    grad = problem.upstream_gradient()
    pristine_grad = _pristine(grad)
    loss.backward(grad)
    return Outcome(input=pristine_x, target=pristine_t, loss=loss.detach(), grad=x.grad, upstream=pristine_grad)

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
from .linear import LinearEvaluation, evaluate_linear
from .reference import Evaluation, evaluate

__all__ = ["Outcome", "forward", "forward_backward", "truth", "LinearOutcome", "linear_truth",
           "linear_call"]


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


# ---------------------------------------------------------------------------------------------
# Linear cross entropy: the hidden states, the classifier weight and the bias are the inputs.


@dataclass(frozen=True)
class LinearOutcome:
    """Pristine copies of the fed inputs (``inputs``: name -> tensor or None) and upstream
    gradient, the loss, the inputs that required grad, and each input's gradient after backward
    (None where it had none)."""

    inputs: dict
    target: Tensor
    loss: Tensor
    grads: dict
    requires_grad: frozenset
    upstream: Optional[Tensor] = None


def linear_truth(problem: Problem, outcome: LinearOutcome) -> LinearEvaluation:
    """The float64 reference on exactly what the implementation was fed."""
    inputs = outcome.inputs
    return evaluate_linear(inputs["input"], inputs["linear_weight"], outcome.target, inputs["linear_bias"],
                           **problem.call_options().kwargs())


def linear_call(impl: Implementation, problem: Problem, *, backward: bool = True,
                autocast: Optional[torch.dtype] = None) -> tuple[LinearOutcome, dict]:
    """Forward (under ``torch.autocast`` to ``autocast`` if given) and, with ``backward``,
    ``loss.backward(grad)`` with the problem's upstream gradient, the case's trainable inputs
    requiring grad. Also returns the call's live tensors, for checks of what it did to them and
    to go on from it: the inputs, target and upstream gradient as fed, and the loss with its graph."""
    case = problem.case
    fed = {"input": case.hidden, "linear_weight": case.linear_weight, "linear_bias": case.linear_bias}
    pristine = {name: None if t is None else _pristine(t) for name, t in fed.items()}
    fed = {name: None if t is None else t.detach().clone().requires_grad_(name in case.requires_grad)
           for name, t in fed.items()}
    target = _pristine(case.target)
    fed["target"] = _pristine(case.target)
    with torch.autocast(problem.device, dtype=autocast, enabled=autocast is not None):
        fed["loss"] = impl.linear(fed["input"], fed["linear_weight"], fed["target"], fed["linear_bias"],
                                  problem.call_options())
    upstream = None
    if backward:
        fed["upstream"] = problem.upstream_gradient()
        upstream = _pristine(fed["upstream"])
        fed["loss"].backward(fed["upstream"])
    grads = {name: None if fed[name] is None else fed[name].grad for name in pristine}
    return LinearOutcome(inputs=pristine, target=target, loss=fed["loss"].detach(), grads=grads,
                         requires_grad=frozenset(case.requires_grad), upstream=upstream), fed

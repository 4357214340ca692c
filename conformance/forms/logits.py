"""The logits form: torch's ``cross_entropy(input, target, weight, ignore_index, reduction,
label_smoothing)`` and the losses written like it (log-probability and probability inputs,
one-hot targets, the variants beyond torch's loss).

A call runs as a training step does: forward, then backward with the problem's upstream
gradient. The truth is evaluated on pristine copies of what the implementation was fed (logits,
target, weights, upstream gradient), taken before the call: a loss that overwrites its input
(Liger-Kernel writes the gradient into the logits) fails the checks that its inputs stay
unmodified, not every value and gradient check besides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..cases import Problem
from ..impl import Implementation
from ..reference import Evaluation, evaluate
from .protocol import Form, Quantity, Show, call_lines

__all__ = ["Outcome", "FEED", "forward", "forward_backward", "truth", "torch_on", "call_code", "truth_code",
           "keywords_code", "truth_options_code", "VALUE", "GRADIENT", "LogitsForm"]

# The snippet's line that feeds the case to the implementation (as ``Implementation.feed`` does in a check).
FEED = "x, t = impl.feed(logits, target)"
VALUE = Show("loss{at}.item()", "truth.loss{at}.item()")
GRADIENT = Show("x.grad{at}.item()", "truth.grad(grad){at}.item()")


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


def torch_on(problem: Problem, out: Outcome) -> tuple[Tensor, Optional[Tensor]]:
    """torch's own loss (and gradient, with the same upstream) on what the implementation was fed."""
    x = out.input.detach().clone().requires_grad_(out.upstream is not None)
    loss = torch.nn.functional.cross_entropy(x, out.target, **problem.call_options().kwargs())
    if out.upstream is None:
        return loss.detach(), None
    loss.backward(out.upstream)
    return loss.detach(), x.grad


def keywords_code(impl: Implementation, problem: Problem, weight: str = "weight") -> str:
    """The snippet's keywords of a call: the problem's options under the implementation's names
    (``weight``: the code of the class weights)."""
    kw = impl.keywords(problem.options)
    kw.pop("weight")
    return f"weight={weight}, " + ", ".join(f"{k}={v!r}" for k, v in kw.items())


def call_code(impl: Implementation, problem: Problem, x: str = "x", weight: str = "weight") -> str:
    """The snippet's call of the implementation on ``x`` and ``t`` with the problem's options."""
    return f"impl.call({x}, t, {keywords_code(impl, problem, weight)})"


def truth_options_code(options) -> str:
    return (f"ignore_index={options.ignore_index!r}, reduction={options.reduction!r}, "
            f"label_smoothing={options.label_smoothing!r}")


def truth_code(impl: Implementation, problem: Problem, x: str = "x", weight: str = "weight") -> str:
    """The snippet's float64 truth of the problem on ``x`` and ``t`` as the implementation takes them
    (``weight``: the code of the class weights)."""
    options = problem.options
    variant = f", variant={impl.reference_variant(options)!r}" if options.variant.active else ""
    return (f"truth = evaluate({x}, t, weight={weight}, {truth_options_code(options)}, "
            f"input_kind={impl.input_kind!r}{variant})")


class LogitsForm(Form):
    name = "logits"

    def call(self, impl: Implementation, problem: Problem, **context) -> Outcome:
        """Forward and backward, or forward only where the problem has no upstream gradient."""
        return forward(impl, problem) if problem.upstream is None else forward_backward(impl, problem)

    def truth(self, impl: Implementation, problem: Problem, outcome: Outcome) -> Evaluation:
        return truth(impl, problem, outcome)

    def quantities(self, impl: Implementation, problem: Problem, outcome: Outcome, ev: Evaluation,
                   **terms) -> list[Quantity]:
        """The loss and, after backward, the logits' gradient; ``terms``: the bounds' further
        terms (``shards``: the classes over that many ranks)."""
        counterpart = _Counterpart(problem, outcome)
        found = [Quantity("value", outcome.loss, ev.loss, "value", {"ev": ev, **terms}, VALUE,
                          counterpart=counterpart.loss)]
        if outcome.upstream is not None and "simplex_gradient" in impl.deviations:
            found.append(_along_simplex(outcome, ev, terms))
        elif outcome.upstream is not None:
            found.append(Quantity("gradient", outcome.grad, ev.grad(outcome.upstream), "gradient",
                                  {"ev": ev, "grad_output": outcome.upstream, **terms}, GRADIENT,
                                  counterpart=counterpart.grad))
        return found

    def snippet(self, impl: Implementation, problem: Problem, show: Show) -> list[str]:
        case, options = problem.case, problem.options
        lines = ["import torch", "from conformance.impl import load_implementation"]
        lines += ["from conformance.reference import Variant"] * options.variant.active
        lines += ["from conformance.reference import evaluate"] * show.truth + ["weight = None", case.recipe]
        if case.device != "cpu":
            lines.append(f"logits, target = logits.to({case.device!r}), target.to({case.device!r})")
            lines.append(f"weight = None if weight is None else weight.to({case.device!r})")
        lines += impl.load_code() + [FEED]
        if show.truth:
            lines.append(truth_code(impl, problem))
        return lines + list(self.call_steps(impl, problem) if show.steps is None else show.steps)

    def call_steps(self, impl: Implementation, problem: Problem, **context) -> list[str]:
        return call_lines(call_code(impl, problem), problem.upstream, problem.case.device, "loss")


def _along_simplex(outcome: Outcome, ev: Evaluation, terms: dict) -> Quantity:
    """The gradient of a loss defined along the simplex only (``simplex_gradient``), against the
    truth plus the multiple of the all-ones vector per position nearest it (``Evaluation.grad_along_simplex``)."""
    expected = ev.grad(outcome.upstream) if outcome.grad is None else ev.grad_along_simplex(outcome.upstream,
                                                                                             outcome.grad)
    return Quantity("gradient", outcome.grad, expected, "simplex gradient",
                    {"ev": ev, "grad_output": outcome.upstream, **terms},
                    Show("x.grad{at}.item()", "truth.grad_along_simplex(grad, x.grad){at}.item()"))


class _Counterpart:
    """torch's loss and gradient on an outcome's inputs, computed once, when parity first asks."""

    def __init__(self, problem: Problem, outcome: Outcome) -> None:
        self.problem, self.outcome, self.found = problem, outcome, None

    def _both(self) -> tuple:
        if self.found is None:
            self.found = torch_on(self.problem, self.outcome)
        return self.found

    def loss(self) -> Tensor:
        return self._both()[0]

    def grad(self) -> Tensor:
        return self._both()[1]

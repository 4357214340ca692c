"""The linear form: losses that take the hidden states, the classifier weight and bias and never
materialise the logits (torch's ``linear_cross_entropy(input, linear_weight, target, *,
linear_bias, ...)``, Liger-Kernel's fused linear loss, cut-cross-entropy). The quantities are the
loss and the gradient of every input that requires grad, against the float64 composition
(``linear.evaluate_linear``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from ..cases import Problem
from ..impl import Implementation
from ..linear import LinearEvaluation, evaluate_linear
from .logits import keywords_code, truth_options_code
from .protocol import Form, Quantity, Show, upstream_lines

__all__ = ["LinearOutcome", "GRADIENTS", "call", "call_code", "LinearForm"]

# Each input of a linear loss: its gradient's bound (tolerance.BOUNDS), its name in the snippet,
# the truth's gradient.
GRADIENTS = {
    "input": ("linear input gradient", "hidden", "input_grad"),
    "linear_weight": ("linear weight gradient", "linear_weight", "weight_grad"),
    "linear_bias": ("linear bias gradient", "linear_bias", "bias_grad"),
}


@dataclass(frozen=True)
class LinearOutcome:
    """Pristine copies of the fed inputs (``inputs``: name -> tensor or None) and upstream
    gradient, the loss, the inputs that required grad, each input's gradient after backward
    (None where it had none), and the autocast dtype the call ran under."""

    inputs: dict
    target: Tensor
    loss: Tensor
    grads: dict
    requires_grad: frozenset
    upstream: Optional[Tensor] = None
    autocast: Optional[torch.dtype] = None


def _pristine(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().clone()


def call(impl: Implementation, problem: Problem, *, backward: bool = True,
         autocast: Optional[torch.dtype] = None) -> tuple[LinearOutcome, dict]:
    """Forward (under ``torch.autocast`` to ``autocast`` if given) and, with ``backward``,
    ``loss.backward(grad)`` with the problem's upstream gradient, the case's trainable inputs
    requiring grad. Also returns the call's live tensors, for checks of what it did to them and
    to go on from it: the inputs, target and upstream gradient as fed, and the loss with its graph."""
    case = problem.case
    fed = {"input": case.hidden, "linear_weight": case.linear_weight, "linear_bias": case.linear_bias}
    pristine = {name: _pristine(t) for name, t in fed.items()}
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
                         requires_grad=frozenset(case.requires_grad), upstream=upstream, autocast=autocast), fed


def call_code(impl: Implementation, problem: Problem) -> str:
    """The snippet's call of a linear implementation with the problem's options."""
    return f"impl.call(hidden, linear_weight, target, linear_bias=linear_bias, {keywords_code(impl, problem)})"


def _torch_composition(problem: Problem, out: LinearOutcome) -> tuple[Tensor, dict]:
    """torch's composition (``linear_cross_entropy``'s reference path) on what the implementation
    was fed (cloned: tensors made under inference_mode cannot be saved for backward), with the
    same upstream gradient: the loss and the gradients."""
    inputs = {name: None if t is None else t.clone().requires_grad_(name in out.requires_grad)
              for name, t in out.inputs.items()}
    loss = torch.nn.functional.linear_cross_entropy(inputs["input"], inputs["linear_weight"], out.target.clone(),
                                                    linear_bias=inputs["linear_bias"],
                                                    **problem.call_options().kwargs())
    if out.upstream is not None:
        loss.backward(out.upstream)
    return loss.detach(), {name: None if t is None else t.grad for name, t in inputs.items()}


class LinearForm(Form):
    name = "linear"
    parity_widens = True

    def call(self, impl: Implementation, problem: Problem, **context) -> LinearOutcome:
        return call(impl, problem, backward=problem.upstream is not None)[0]

    def truth(self, impl: Implementation, problem: Problem, outcome: LinearOutcome) -> LinearEvaluation:
        inputs = outcome.inputs
        return evaluate_linear(inputs["input"], inputs["linear_weight"], outcome.target, inputs["linear_bias"],
                               **problem.call_options().kwargs())

    def quantities(self, impl: Implementation, problem: Problem, outcome: LinearOutcome,
                   lev: LinearEvaluation) -> list[Quantity]:
        """The loss and the gradient of every input that requires grad. Under autocast each is
        bounded by the problem rounded to the autocast dtype plus the two truths' distance (the
        loss may compute on the inputs or on their roundings); a declared gradient filter widens
        the gradients' bounds."""
        if outcome.autocast is not None:
            return self._under_autocast(impl, problem, outcome, lev)
        torch_side: dict = {}

        def counterpart(name: Optional[str] = None):
            def result() -> Tensor:
                if not torch_side:
                    torch_side["loss"], torch_side["grads"] = _torch_composition(problem, outcome)
                return torch_side["loss"] if name is None else torch_side["grads"][name]
            return result

        found = [Quantity("value", outcome.loss, lev.loss, "linear value", {"lev": lev},
                          Show("loss{at}.item()", "truth.loss{at}.item()"), counterpart=counterpart())]
        if outcome.upstream is None:
            return found
        upstream = outcome.upstream.to("cpu", torch.float64)
        declared = {"filtered_below": impl.approximations.get("gradient_filter", 0.0)}
        for name, (kind, variable, truth) in self._trained(outcome):
            found.append(Quantity(f"{name} gradient", outcome.grads[name], getattr(lev, truth)(upstream), kind,
                                  {"lev": lev, "grad_output": upstream}, _gradient_show(variable, truth),
                                  declared=declared, counterpart=counterpart(name)))
        return found

    @staticmethod
    def _trained(outcome: LinearOutcome) -> list:
        return [(name, spec) for name, spec in GRADIENTS.items()
                if outcome.inputs[name] is not None and name in outcome.requires_grad]

    def _under_autocast(self, impl: Implementation, problem: Problem, outcome: LinearOutcome,
                        lev: LinearEvaluation) -> list[Quantity]:
        dtype = outcome.autocast
        rounded = self.truth(impl, problem, replace(outcome, inputs={
            name: None if t is None else t.to(dtype).to(t.dtype) for name, t in outcome.inputs.items()}))
        found = [Quantity("value under autocast", outcome.loss, lev.loss, "linear under autocast",
                          {"bound_of": "linear value", "rounded": rounded, "autocast_dtype": dtype,
                           "truth_distance": (lev.loss - rounded.loss).abs()},
                          Show("loss{at}.item()", "truth.loss{at}.item()"))]
        upstream = outcome.upstream.to("cpu", torch.float64)
        for name, (kind, variable, truth) in self._trained(outcome):
            expected = getattr(lev, truth)(upstream)
            found.append(Quantity(f"{name} gradient under autocast", outcome.grads[name], expected,
                                  "linear under autocast",
                                  {"bound_of": kind, "rounded": rounded, "autocast_dtype": dtype,
                                   "truth_distance": (expected - getattr(rounded, truth)(upstream)).abs(),
                                   "grad_output": upstream}, _gradient_show(variable, truth)))
        return found

    def snippet(self, impl: Implementation, problem: Problem, show: Show) -> list[str]:
        """The recipe, the float64 truth (unless ``show.truth`` is false) and the call (``call_steps``)."""
        case, options = problem.case, problem.options
        names = ("hidden", "linear_weight", "linear_bias", "target", "weight")
        lines = ["import torch", "from conformance.impl import load_implementation",
                 "from conformance.linear import evaluate_linear", "weight = linear_bias = None", case.recipe]
        if case.device != "cpu":
            lines.append(f"{', '.join(names)} = (None if t is None else t.to({case.device!r}) for t in "
                         f"({', '.join(names)}))")
        lines += impl.load_code()
        lines += [f"truth = evaluate_linear(hidden, linear_weight, target, linear_bias, weight=weight, "
                  f"{truth_options_code(options)})"] * show.truth
        return lines + list(self.call_steps(impl, problem) if show.steps is None else show.steps)

    def call_steps(self, impl: Implementation, problem: Problem, **context) -> list[str]:
        """The call and its backward, the case's trainable tensors requiring grad."""
        case = problem.case
        if problem.upstream is None:
            return [f"loss = {call_code(impl, problem)}"]
        trainable = ", ".join(GRADIENTS[name][1] for name in case.requires_grad)
        return [f"for t in ({trainable},):", "    if t is not None:", "        t.requires_grad_()",
                f"loss = {call_code(impl, problem)}", *upstream_lines(problem.upstream, case.device),
                "loss.backward(grad)", "grad = grad.double().cpu()"]


def _gradient_show(variable: str, truth: str) -> Show:
    return Show(f"{variable}.grad{{at}}.item()", f"truth.{truth}(grad){{at}}.item()")

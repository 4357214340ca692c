"""The judge: compares an implementation's results to the float64 reference under the run's
contract, grades every comparison against the ``exact`` contract, probes optional capabilities,
and explains a failure.

A failure names the identity, the parameters, the worst element (index, actual, expected), the
error and the bound, and prints a snippet that rebuilds the case with plain torch and prints the
very mismatch the check saw.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import pytest
import torch
from torch import Tensor

from . import records, run, tolerance
from .cases import LinearCase, Problem
from .guards import ImplementationFault
from .impl import Implementation
from .records import Gap, Measured
from .reference import position

__all__ = ["Comparison", "Show", "compare", "repro_snippet", "call_code", "truth_code", "linear_call_code", "Judge",
           "FIRST_FAILURE", "REPRODUCE",
           "PROBED_PREFIX"]

# The judge's first failure message on a check item: a property test's example survives a
# timeout during hypothesis' shrinking (plugin).
FIRST_FAILURE = pytest.StashKey[str]()
# The reproduce snippet of the check's last failure, printed as is beside pytest's report (whose
# "E " prefixes keep the message's copy from running when pasted).
REPRODUCE = pytest.StashKey[str]()
PROBED_PREFIX = "unsupported (probed): "

@dataclass(frozen=True)
class Comparison:
    """The worst element of one comparison. ``ratio`` is error / bound (inf for a NaN/inf mismatch)."""

    identity: str
    ratio: float
    index: tuple
    actual: float
    expected: float
    error: float
    bound: float

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        where = "element " + str(self.index) if self.index else "value"
        return (f"worst {where}: actual={self.actual!r} expected={self.expected!r} "
                f"error={self.error:.3g} bound={self.bound:.3g} (error/bound={self.ratio:.3g})")


def _as_float64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def compare(identity: str, actual: Tensor, expected: Tensor, bound: Tensor, *,
            also: Optional[Tensor] = None) -> Comparison:
    """Elementwise ``|actual - expected| <= bound`` in float64; non-finite expectations must match
    exactly. ``also``: an alternative accepted per element (the limit where torch's answer is NaN)."""
    a, e = _as_float64(actual), _as_float64(expected)
    if actual.is_floating_point():
        # A true value beyond the dtype's range rounds to an infinity: that is the right answer.
        rounded = e.to(actual.dtype).to(torch.float64)
        e = torch.where(torch.isinf(rounded) & torch.isfinite(e), rounded, e)
    b = _as_float64(bound).expand(e.shape)
    if a.shape != e.shape:
        raise AssertionError(f"[{identity}] shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if e.numel() == 0:
        return Comparison(identity, 0.0, (), float("nan"), float("nan"), 0.0, 0.0)

    def errors(target: Tensor) -> Tensor:
        finite = torch.isfinite(target)
        same_nonfinite = (a == target) | (torch.isnan(a) & torch.isnan(target))
        error = torch.where(finite, (a - target).abs(), torch.where(same_nonfinite, 0.0, torch.inf))
        return torch.where(torch.isnan(error), torch.inf, error)

    error = errors(e)
    if also is not None:
        alternative = _as_float64(also).expand(e.shape)
        error = torch.minimum(error, torch.where(torch.isnan(alternative), torch.inf, errors(alternative)))
    # inf / inf is NaN: an infinite error beyond an infinite bound is still a failure (the answer
    # accepted there is the alternative's, such as torch's own non-finite answer under parity).
    ratio = torch.where(error == 0, 0.0, torch.where(torch.isinf(error), torch.inf, error / b))
    flat = int(ratio.reshape(-1).argmax())
    index = position(flat, e.shape)
    return Comparison(identity, float(ratio.reshape(-1)[flat]), index, float(a.reshape(-1)[flat]),
                      float(e.reshape(-1)[flat]), float(error.reshape(-1)[flat]), float(b.reshape(-1)[flat]))


@dataclass(frozen=True)
class Show:
    """What a reproduce snippet prints: code for the actual and the expected quantity (``{at}``
    becomes the worst element's index), after ``steps``, the lines that compute them once the
    snippet has built the case, fed it (``x, t``) and evaluated the truth. ``steps=None`` runs the
    problem's own call: forward, and backward with its upstream gradient if it has one.
    ``truth=False``: the snippet evaluates no truth (an input the reference refuses, such as an
    invalid target, where the snippet shows what the implementation did with it)."""

    actual: str
    expected: str
    steps: Optional[tuple] = None
    truth: bool = True


VALUE = Show("loss{at}.item()", "truth.loss{at}.item()")
GRADIENT = Show("x.grad{at}.item()", "truth.grad(grad){at}.item()")


def _keywords_code(impl: Implementation, problem: Problem) -> str:
    """The snippet's keywords of a call: the problem's options under the implementation's names."""
    kw = impl.keywords(problem.options)
    kw.pop("weight")
    return "weight=weight, " + ", ".join(f"{k}={v!r}" for k, v in kw.items())


def call_code(impl: Implementation, problem: Problem, x: str = "x") -> str:
    """The snippet's call of the implementation on ``x`` and ``t`` with the problem's options."""
    return f"impl.call({x}, t, {_keywords_code(impl, problem)})"


def _truth_options(options) -> str:
    return (f"ignore_index={options.ignore_index!r}, reduction={options.reduction!r}, "
            f"label_smoothing={options.label_smoothing!r}")


def truth_code(impl: Implementation, problem: Problem, x: str = "x") -> str:
    """The snippet's float64 truth of the problem on ``x`` and ``t`` as the implementation takes them."""
    options = problem.options
    variant = f", variant={impl.reference_variant(options)!r}" if options.variant.active else ""
    return (f"truth = evaluate({x}, t, weight=weight, {_truth_options(options)}, "
            f"input_kind={impl.input_kind!r}{variant})")


def linear_call_code(impl: Implementation, problem: Problem) -> str:
    """The snippet's call of a linear implementation with the problem's options."""
    return f"impl.call(hidden, linear_weight, target, linear_bias=linear_bias, {_keywords_code(impl, problem)})"


def _linear_snippet(problem: Problem, impl: Implementation, show: Show) -> list[str]:
    """The linear problem's lines: the recipe, the float64 truth, the call and its backward, the
    case's trainable tensors requiring grad."""
    case, options = problem.case, problem.options
    names = ("hidden", "linear_weight", "linear_bias", "target", "weight")
    lines = ["import torch", "from conformance.impl import load_implementation",
             "from conformance.linear import evaluate_linear", "weight = linear_bias = None", case.recipe]
    if case.device != "cpu":
        lines.append(f"{', '.join(names)} = (None if t is None else t.to({case.device!r}) for t in "
                     f"({', '.join(names)}))")
    lines += impl.load_code()
    lines.append(f"truth = evaluate_linear(hidden, linear_weight, target, linear_bias, weight=weight, "
                 f"{_truth_options(options)})")
    call = linear_call_code(impl, problem)
    if show.steps is not None:
        return lines + list(show.steps)
    if problem.upstream is None:
        return lines + [f"loss = {call}"]
    trainable = ", ".join(LINEAR_GRADIENTS[name][1] for name in case.requires_grad)
    lines += [f"for t in ({trainable},):", "    if t is not None:", "        t.requires_grad_()",
              f"loss = {call}", problem.upstream]
    if case.device != "cpu":
        lines.append(f"grad = grad.to({case.device!r})")
    return lines + ["loss.backward(grad)", "grad = grad.double().cpu()"]


def repro_snippet(problem: Problem, impl: Implementation, show: Show, index: tuple = ()) -> str:
    """Plain-torch code that rebuilds the problem, calls the implementation and the float64 truth
    (on the inputs as fed, before the call), and prints the compared quantities."""
    at = f"[{', '.join(map(str, index))}]" if index else ""
    if isinstance(problem.case, LinearCase):
        lines = _linear_snippet(problem, impl, show)
        lines.append(f"print('actual', {show.actual.format(at=at)}, 'expected', {show.expected.format(at=at)})")
        return "\n".join(lines)
    case, options = problem.case, problem.options
    lines = ["import torch", "from conformance.impl import load_implementation"]
    lines += ["from conformance.reference import evaluate"] * show.truth + ["weight = None", case.recipe]
    if case.device != "cpu":
        lines.append(f"logits, target = logits.to({case.device!r}), target.to({case.device!r})")
        lines.append(f"weight = None if weight is None else weight.to({case.device!r})")
    lines += impl.load_code() + ["x, t = impl.feed(logits, target)"]
    if options.variant.active:
        lines.insert(2, "from conformance.reference import Variant")
    if show.truth:
        lines.append(truth_code(impl, problem))
    if show.steps is not None:
        lines += list(show.steps)
    elif problem.upstream is None:
        lines.append(f"loss = {call_code(impl, problem)}")
    else:
        lines += ["x.requires_grad_()", f"loss = {call_code(impl, problem)}", problem.upstream]
        if case.device != "cpu":
            lines.append(f"grad = grad.to({case.device!r})")
        lines.append("loss.backward(grad)")
    actual, expected = show.actual.format(at=at), show.expected.format(at=at)
    lines.append(f"print('actual', {actual}, 'expected', {expected})")
    return "\n".join(lines)


def _or_torch_nonfinite(torch_result: Tensor, also: Optional[Tensor]) -> Tensor:
    """Under parity, torch's own answer where it is not finite (its error, and so the bound, is
    infinite there: the same answer is no worse than torch, any other is), else ``also``."""
    t = _as_float64(torch_result)
    other = torch.full_like(t, torch.nan) if also is None else _as_float64(also).expand(t.shape)
    return torch.where(torch.isfinite(t), other, t)


def _indent(snippet: str) -> str:
    return "\n".join("    " + line for line in snippet.splitlines())


class Judge:
    """Per-check helper: the run's contract decides, every comparison is also graded against
    ``exact``; it records both on the test item and fails with a full message."""

    def __init__(self, item, impl: Implementation, *, contract: str = tolerance.DEFAULT_CONTRACT,
                 required: frozenset = frozenset()) -> None:
        self.item = item
        self.impl = impl
        self.contract = contract
        self.required = required

    # -- bounds ---------------------------------------------------------------------------------

    def bound(self, kind: str, dtype: torch.dtype, **terms) -> Tensor:
        """The bound ``kind`` (``tolerance.BOUNDS``) under the run's contract."""
        return tolerance.bound(kind, self.contract, dtype, **terms)

    def _parity(self, problem: Problem) -> bool:
        return (self.contract == "parity" and tolerance.compute_dtype(problem.dtype) != problem.dtype
                and self.impl.input_kind == "logits" and not problem.options.variant.active)

    def _torch_on(self, problem: Problem, out: run.Outcome) -> tuple[Tensor, Optional[Tensor]]:
        """torch's own loss (and gradient, with the same upstream) on what the implementation was fed."""
        x = out.input.detach().clone().requires_grad_(out.upstream is not None)
        loss = torch.nn.functional.cross_entropy(x, out.target, **problem.call_options().kwargs())
        if out.upstream is None:
            return loss.detach(), None
        loss.backward(out.upstream)
        return loss.detach(), x.grad

    # -- comparisons ----------------------------------------------------------------------------

    def _record(self, comparison: Comparison, graded: Comparison) -> None:
        records.attach(self.item.user_properties, "measured", Measured(
            comparison.identity, comparison.ratio, comparison.error, comparison.bound, graded.ratio,
            f"actual={graded.actual:.5g} expected={graded.expected:.5g}").to_json())

    def _raise(self, headline: str, problem: Problem, details: str, show: Show, index: tuple = ()) -> None:
        __tracebackhide__ = True
        snippet = repro_snippet(problem, self.impl, show, index)
        message = f"[{headline}\n  params: {problem.describe()}\n{details}  reproduce:\n{_indent(snippet)}"
        self.item.stash.setdefault(FIRST_FAILURE, message)
        self.item.stash[REPRODUCE] = snippet
        raise AssertionError(message)

    def _judge(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, bound: Tensor,
               exact_bound: Tensor, show: Show, also: Optional[Tensor]) -> Comparison:
        __tracebackhide__ = True
        comparison = compare(identity, actual, expected, bound, also=also)
        self._record(comparison, compare(identity, actual, expected, exact_bound, also=also))
        if not comparison.passed:
            self._raise(f"{identity}] {self.impl.spec} differs from the float64 reference beyond the "
                        f"{self.contract} bound", problem, f"  {comparison.describe()}\n", show, comparison.index)
        return comparison

    def within(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, kind: str, *,
               show: Show = VALUE, also: Optional[Tensor] = None, **terms) -> Comparison:
        """``|actual - expected|`` within the bound ``kind`` of ``tolerance.BOUNDS`` (its terms as
        keywords), under the run's contract; graded against ``exact``."""
        __tracebackhide__ = True
        return self._judge(identity, problem, actual, expected, self.bound(kind, problem.dtype, **terms),
                           tolerance.bound(kind, tolerance.EXACT, problem.dtype, **terms), show, also)

    def value(self, problem: Problem, out: run.Outcome, ev, *, identity: str = "value",
              expected: Optional[Tensor] = None, also: Optional[Tensor] = None, show: Show = VALUE,
              **terms) -> Comparison:
        """The loss against the truth (``expected``: another exact statement of it, such as log C);
        ``terms``: the value bound's further terms (``shards``). Under ``parity`` a half-precision
        loss is held to torch's own error on what it was fed (``out.input``: every form's full
        logits, a vocab-parallel loss's gathered from its ranks)."""
        __tracebackhide__ = True
        expected = ev.loss if expected is None else expected
        exact = tolerance.bound("value", tolerance.EXACT, problem.dtype, ev=ev, **terms)
        if self._parity(problem):
            torch_loss = self._torch_on(problem, out)[0]
            bound = tolerance.parity_bound(torch_loss, expected, problem.dtype)
            also = _or_torch_nonfinite(torch_loss, also)
        else:
            bound = self.bound("value", problem.dtype, ev=ev, **terms)
        return self._judge(identity, problem, out.loss, expected, bound, exact, show, also)

    def gradient(self, problem: Problem, out: run.Outcome, ev, *, identity: str = "gradient",
                 show: Show = GRADIENT, **terms) -> Comparison:
        """The logit gradient against the truth, as ``value`` judges the loss."""
        __tracebackhide__ = True
        expected = ev.grad(out.upstream)
        exact = tolerance.bound("gradient", tolerance.EXACT, problem.dtype, ev=ev, grad_output=out.upstream, **terms)
        also = None
        if self._parity(problem):
            torch_grad = self._torch_on(problem, out)[1]
            bound = tolerance.parity_bound(torch_grad, expected, problem.dtype)
            also = _or_torch_nonfinite(torch_grad, None)
        else:
            bound = self.bound("gradient", problem.dtype, ev=ev, grad_output=out.upstream, **terms)
        return self._judge(identity, problem, out.grad, expected, bound, exact, show, also)

    def exactly(self, identity: str, problem: Problem, actual: Tensor, expected: Tensor, *,
                show: Show = VALUE) -> Comparison:
        """Results the semantics fix exactly (an empty batch's NaN or 0, an ignored row's 0)."""
        __tracebackhide__ = True
        zero = torch.zeros(())
        return self._judge(identity, problem, actual, expected, zero, zero, show, None)

    def fail(self, identity: str, problem: Problem, message: str, *,
             show: Show = Show("loss", "'(see the message)'")) -> None:
        """A failure that is not a numeric comparison (shape, dtype, modified input...)."""
        __tracebackhide__ = True
        records.attach(self.item.user_properties, "measured", Measured(identity, float("inf")).to_json())
        self._raise(f"{identity}] {self.impl.spec}: {message}", problem, "", show)

    # -- capabilities ---------------------------------------------------------------------------

    def gap(self, feature: str, problem: Problem, reason: str) -> None:
        """An optional capability the implementation does not have: reported as unsupported
        (probed), or a failure if the run requires it (``--conformance-require``)."""
        __tracebackhide__ = True
        if feature in self.required:
            self.fail(feature, problem, f"required feature {feature!r} is not supported: {reason}")
        records.attach(self.item.user_properties, "gap", Gap("probed", (feature,), reason).to_json())
        pytest.skip(f"{PROBED_PREFIX}{feature}: {reason}")

    def probe(self, feature: str, problem: Problem, action: Callable[[], object], what: str):
        """``action()``, an optional transform of the implementation (double backward, forward-mode
        AD, vmap, a second backward over a retained graph). Any exception it raises makes
        ``feature`` a probed gap with the exception's first line: kernels refuse transforms in
        words of their own (an ``autograd.Function`` without ``setup_context``, vmap's "dynamic
        shape", dynamo's "Unsupported functorch tracing attempt", a compiled graph's donated
        buffers), and no list of torch's wordings keeps up with them. Only a wrong result fails
        (the caller judges it); ``--conformance-require`` makes the gap a failure. A breach of
        the calling contract (``ImplementationFault``) and a timeout still propagate."""
        __tracebackhide__ = True
        try:
            return action()
        except ImplementationFault:
            raise
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.gap(feature, problem, f"{what} raised {type(exc).__name__}: {first_line}")

    # -- the common check -----------------------------------------------------------------------

    def conforms(self, problem: Problem) -> run.Outcome:
        """The loss and (unless backward is unsupported or the problem has no upstream) its
        gradient against the float64 truth."""
        __tracebackhide__ = True
        if "backward" in self.impl.unsupported or problem.upstream is None:
            problem = replace(problem, upstream=None)
            out = run.forward(self.impl, problem)
            self.value(problem, out, run.truth(self.impl, problem, out))
            return out
        out = run.forward_backward(self.impl, problem)
        ev = run.truth(self.impl, problem, out)
        self.value(problem, out, ev)
        self.gradient(problem, out, ev)
        return out

    # -- linear cross entropy -------------------------------------------------------------------

    def _torch_linear_on(self, problem: Problem, out: run.LinearOutcome) -> tuple[Tensor, dict]:
        """torch's composition (``linear_cross_entropy``'s reference path) on what the
        implementation was fed (cloned: tensors made under inference_mode cannot be saved for
        backward), with the same upstream gradient: the loss and the gradients."""
        inputs = {name: None if t is None else t.clone().requires_grad_(name in out.requires_grad)
                  for name, t in out.inputs.items()}
        loss = torch.nn.functional.linear_cross_entropy(inputs["input"], inputs["linear_weight"], out.target.clone(),
                                                        linear_bias=inputs["linear_bias"],
                                                        **problem.call_options().kwargs())
        if out.upstream is not None:
            loss.backward(out.upstream)
        return loss.detach(), {name: None if t is None else t.grad for name, t in inputs.items()}

    def _linear_bounds(self, problem: Problem, kind: str, exact_terms: dict, parity_result: Callable,
                       expected: Tensor, declared: Optional[dict] = None) -> tuple[Tensor, Tensor]:
        """The bound ``kind`` under the run's contract, with the terms of a ``declared``
        approximation, and under ``exact``, without them: the grade shows what the approximation
        costs. ``parity`` also accepts torch's composition's error (its bound, twice that): a
        gradient summed over many rows can come out of torch nearly exact by luck, so parity
        alone would refuse what ``standard`` accepts."""
        exact = tolerance.bound(kind, tolerance.EXACT, problem.dtype, **exact_terms)
        bound = self.bound(kind, problem.dtype, **exact_terms, **(declared or {}))
        if self._parity(problem):
            bound = torch.maximum(bound, tolerance.parity_bound(parity_result(), expected, problem.dtype))
        return bound, exact

    def linear_conforms(self, problem: Problem, out: Optional[run.LinearOutcome] = None, *,
                        show: Show = VALUE, autocast: Optional[torch.dtype] = None) -> run.LinearOutcome:
        """The loss and the gradient of every input that requires grad against the float64 truth
        of the composition (``linear``); ``out``: an outcome the check has already produced,
        ``show`` what the snippet of a wrong loss runs, ``autocast`` the dtype the call ran under
        (``tolerance.linear_autocast_bound``)."""
        __tracebackhide__ = True
        if out is None:
            out = run.linear_call(self.impl, problem, backward=problem.upstream is not None)[0]
        lev = run.linear_truth(problem, out)
        if autocast is not None:
            rounded = replace(out, inputs={name: None if t is None else t.to(autocast).to(t.dtype)
                                           for name, t in out.inputs.items()})
            self._linear_autocast(problem, out, lev, run.linear_truth(problem, rounded), autocast)
            return out
        torch_side = {}

        def torch_result(name: Optional[str] = None) -> Tensor:
            if not torch_side:
                torch_side["loss"], torch_side["grads"] = self._torch_linear_on(problem, out)
            return torch_side["loss"] if name is None else torch_side["grads"][name]

        bound, exact = self._linear_bounds(problem, "linear value", {"lev": lev}, torch_result, lev.loss)
        self._judge("value", problem, out.loss, lev.loss, bound, exact, show, None)
        if out.upstream is None:
            return out
        upstream = out.upstream.to("cpu", torch.float64)
        declared = {"filtered_below": self.impl.approximations.get("gradient_filter", 0.0)}
        for name, (kind, variable, truth) in LINEAR_GRADIENTS.items():
            if out.inputs[name] is None or name not in out.requires_grad:
                continue
            show = _linear_gradient_show(variable, truth)
            if out.grads[name] is None:
                self.fail(f"{name} gradient", problem, f"{name} requires grad but has no gradient after backward",
                          show=Show(f"{variable}.grad", "'a gradient'"))
            expected = getattr(lev, truth)(upstream)
            bound, exact = self._linear_bounds(problem, kind, {"lev": lev, "grad_output": upstream},
                                               lambda: torch_result(name), expected, declared)
            self._judge(f"{name} gradient", problem, out.grads[name], expected, bound, exact, show, None)
        return out

    def _linear_autocast(self, problem: Problem, out: run.LinearOutcome, lev, rounded, dtype: torch.dtype) -> None:
        __tracebackhide__ = True
        self.within("value under autocast", problem, out.loss, lev.loss, "linear under autocast",
                    bound_of="linear value", rounded=rounded, autocast_dtype=dtype,
                    truth_distance=(lev.loss - rounded.loss).abs())
        upstream = out.upstream.to("cpu", torch.float64)
        for name, (kind, variable, truth) in LINEAR_GRADIENTS.items():
            if out.inputs[name] is not None and name in out.requires_grad:
                expected = getattr(lev, truth)(upstream)
                self.within(f"{name} gradient under autocast", problem, out.grads[name], expected,
                            "linear under autocast", bound_of=kind, rounded=rounded, autocast_dtype=dtype,
                            truth_distance=(expected - getattr(rounded, truth)(upstream)).abs(),
                            grad_output=upstream, show=_linear_gradient_show(variable, truth))


# Each input of a linear loss: its bound (tolerance.BOUNDS), its name in the snippet, the truth's gradient.
LINEAR_GRADIENTS = {
    "input": ("linear input gradient", "hidden", "input_grad"),
    "linear_weight": ("linear weight gradient", "linear_weight", "weight_grad"),
    "linear_bias": ("linear bias gradient", "linear_bias", "bias_grad"),
}


def _linear_gradient_show(variable: str, truth: str) -> Show:
    return Show(f"{variable}.grad{{at}}.item()", f"truth.{truth}(grad){{at}}.item()")

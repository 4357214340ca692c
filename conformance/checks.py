"""Compare an implementation's result to the reference under a bound, and explain a failure.

A failure names the identity, the parameters, the worst element (index, actual, expected), the
error and the bound, and prints a snippet that reproduces the case with plain torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import run, tolerance
from .cases import Case, upstream_recipe
from .impl import Implementation, LossOptions

__all__ = ["Comparison", "compare", "repro_snippet", "Judge"]


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


def compare(identity: str, actual: Tensor, expected: Tensor, bound: Tensor) -> Comparison:
    """Elementwise ``|actual - expected| <= bound`` in float64; non-finite expectations must match exactly."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if actual.is_floating_point():
        # A true value beyond the dtype's range rounds to an infinity: that is the right answer.
        rounded = e.to(actual.dtype).to(torch.float64)
        e = torch.where(torch.isinf(rounded) & torch.isfinite(e), rounded, e)
    b = bound.detach().to("cpu", torch.float64).expand(e.shape)
    if a.shape != e.shape:
        raise AssertionError(f"[{identity}] shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if e.numel() == 0:
        return Comparison(identity, 0.0, (), float("nan"), float("nan"), 0.0, 0.0)
    finite = torch.isfinite(e)
    same_nonfinite = (a == e) | (torch.isnan(a) & torch.isnan(e))
    error = torch.where(finite, (a - e).abs(), torch.where(same_nonfinite, 0.0, torch.inf))
    error = torch.where(torch.isnan(error), torch.inf, error)
    ratio = torch.where(error == 0, 0.0, error / b)
    flat = int(ratio.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)) if e.dim() else ()
    return Comparison(identity, float(ratio.reshape(-1)[flat]), index, float(a.reshape(-1)[flat]),
                      float(e.reshape(-1)[flat]), float(error.reshape(-1)[flat]), float(b.reshape(-1)[flat]))


def _call_line(impl: Implementation, options: LossOptions) -> list[str]:
    load = f"load_implementation({impl.spec!r})"
    if impl.framework != "torch":
        load = f"load_implementation({impl.spec!r}, wrap=lambda obj: wrap(obj, {impl.framework!r}))"
    lines = [*["from conformance.adapters import wrap"] * (impl.framework != "torch"), f"impl = {load}",
             "x, t = impl.feed(logits, target)"]
    kw = options.kwargs()
    kw.pop("weight")
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    lines.append(f"loss = impl.call(x, t, weight=weight, {args})")
    return lines


def repro_snippet(case: Case, impl: Implementation, options: LossOptions, *, upstream: Optional[str] = None,
                  index: tuple = ()) -> str:
    """Plain-torch code that rebuilds the case, calls the implementation and the float64 truth."""
    lines = ["import torch", "from conformance.impl import load_implementation",
             "from conformance.reference import evaluate", "weight = None", case.recipe]
    if case.device != "cpu":
        lines.append(f"logits, target = logits.to({case.device!r}), target.to({case.device!r})")
    lines += _call_line(impl, options)
    truth = (f"truth = evaluate(x, t, weight=weight, ignore_index={options.ignore_index!r}, "
             f"reduction={options.reduction!r}, label_smoothing={options.label_smoothing!r}, "
             f"input_kind={impl.input_kind!r})")
    lines.append(truth)
    at = f"[{', '.join(map(str, index))}]" if index else ""
    if upstream is None:
        lines.append(f"print('actual', loss{at}.item(), 'expected', truth.loss{at}.item())")
    else:
        lines += ["x.requires_grad_()", _call_line(impl, options)[-1], upstream, "loss.backward(grad)",
                  f"print('actual', x.grad{at}.item(), 'expected', truth.grad(grad){at}.item())"]
    return "\n".join(lines)


class Judge:
    """Per-test helper: compares, records the margin on the test item, and fails with a full message."""

    def __init__(self, item, impl: Implementation, *, contract: str = "strict") -> None:
        self.item = item
        self.impl = impl
        self.contract = contract

    def bounds(self, ev, out: run.Outcome, case: Case, options: LossOptions) -> tuple:
        """(value bound, gradient bound or None) under the run's contract.

        ``parity`` applies to float16/bfloat16 logits: the bound is ``PARITY_FACTOR`` times torch's
        own error on the same device and dtype, plus the rounding of the result.
        """
        value = tolerance.value_bound(ev, case.dtype)
        grad = None if out.grad is None else tolerance.grad_bound(ev, out.upstream, case.dtype)
        if self.contract != "parity" or tolerance.compute_dtype(case.dtype) == case.dtype \
                or self.impl.input_kind != "logits":
            return value, grad
        x = out.input.detach().requires_grad_()
        loss = torch.nn.functional.cross_entropy(x, out.target, **run.options_for(case, options).kwargs())
        u_o, floor = tolerance.unit_roundoff(case.dtype), tolerance.underflow_floor(case.dtype)
        value = tolerance.PARITY_FACTOR * (loss.detach().double().cpu() - ev.loss).abs() \
            + tolerance.HALF_PRECISION_ROUNDINGS * u_o * ev.loss.abs() + floor
        if out.grad is not None:
            loss.backward(out.upstream)
            expected = ev.grad(out.upstream)
            grad = tolerance.PARITY_FACTOR * (x.grad.double().cpu() - expected).abs() \
                + tolerance.HALF_PRECISION_ROUNDINGS * u_o * expected.abs() + floor
        return value, grad

    def record(self, comparison: Comparison) -> None:
        self.item.user_properties.append(("conformance", {"identity": comparison.identity, "ratio": comparison.ratio,
                                                          "error": comparison.error, "bound": comparison.bound}))

    def close(self, identity: str, actual: Tensor, expected: Tensor, bound: Tensor, *, case: Case,
              options: LossOptions, upstream: Optional[str] = None, note: str = "") -> Comparison:
        __tracebackhide__ = True
        comparison = compare(identity, actual, expected, bound)
        self.record(comparison)
        if not comparison.passed:
            snippet = repro_snippet(case, self.impl, options, upstream=upstream, index=comparison.index)
            raise AssertionError(
                f"[{identity}] {self.impl.spec} differs from the float64 reference beyond the bound\n"
                f"  params: {case.describe()}, {options.describe()}{note}\n"
                f"  {comparison.describe()}\n"
                f"  reproduce:\n" + "\n".join("    " + line for line in snippet.splitlines()))
        return comparison

    def fail(self, identity: str, message: str, *, case: Case, options: LossOptions) -> None:
        """A failure that is not a numeric comparison (shape, dtype, modified input...)."""
        __tracebackhide__ = True
        self.item.user_properties.append(("conformance", {"identity": identity, "ratio": float("inf")}))
        snippet = repro_snippet(case, self.impl, options)
        raise AssertionError(f"[{identity}] {self.impl.spec}: {message}\n"
                             f"  params: {case.describe()}, {options.describe()}\n"
                             f"  reproduce:\n" + "\n".join("    " + line for line in snippet.splitlines()))

    def conforms(self, case: Case, options: LossOptions, *, upstream: str = "random", note: str = "") -> run.Outcome:
        """The loss and (unless backward is unsupported) its gradient against the float64 truth."""
        __tracebackhide__ = True
        if "backward" in self.impl.unsupported:
            out = run.forward(self.impl, case, options)
            ev = run.truth(self.impl, out, case, options)
            self.close("value", out.loss, ev.loss, self.bounds(ev, out, case, options)[0], case=case,
                       options=options, note=note)
            return out
        shape = case.logits.shape
        positions = tuple(shape[:1] + shape[2:]) if len(shape) > 1 else ()
        grad_code = upstream_recipe(upstream, options.reduction, positions, case.dtype)
        out = run.forward_backward(self.impl, case, options, grad_code)
        ev = run.truth(self.impl, out, case, options)
        value_bound, grad_bound = self.bounds(ev, out, case, options)
        self.close("value", out.loss, ev.loss, value_bound, case=case, options=options, note=note)
        self.close("gradient", out.grad, ev.grad(out.upstream), grad_bound, case=case, options=options,
                   upstream=grad_code, note=note)
        return out

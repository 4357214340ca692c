"""The softmax forms: ``softmax`` and ``log_softmax`` with torch's calling convention
``fn(input, dim, dtype=None)``. A call runs forward and, where the problem has an upstream
gradient, ``output.backward(grad)``; the quantities are the output and the input's gradient (the
vector-Jacobian product) against the float64 truth (``softmax.evaluate_softmax``) on pristine
copies of what the implementation was fed.

A problem (``SoftmaxProblem``) is built by a plain-torch recipe that defines ``x`` (already in
its dtype and layout: a transposed or sliced view is fed as that view) and, for backward, one
that defines ``grad``; the reproduce snippet prints both. A recipe that also defines ``mask``
(True takes part) poses the problem under that mask; the problem's variant (``SoftmaxVariant``)
is passed as the implementation's keywords (``Implementation.along``) and judged under its
declared conventions. Under a mask, a log-softmax's upstream gradient is 0 at the masked entries,
so a kernel that leaves them out of ``sum(g)`` and one that keeps them (torch's autograd through
``masked_fill``) are judged alike. The quantities carry no torch counterpart: under ``parity``
they are judged by ``standard``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from ..impl import Implementation
from ..softmax import TORCH_SOFTMAX, SoftmaxEvaluation, SoftmaxVariant, evaluate_softmax
from ..vocabulary import SOFTMAX_UPSTREAM_KINDS as UPSTREAM_KINDS
from ..vocabulary import dtype_name
from .protocol import Form, Quantity, Show, call_lines

__all__ = ["SoftmaxProblem", "SoftmaxOutcome", "softmax_problem", "upstream_recipe", "UPSTREAM_KINDS", "VALUE",
           "GRADIENT", "SoftmaxForm"]

VALUE = Show("y{at}.item()", "truth.output{at}.item()")
GRADIENT = Show("x.grad{at}.item()", "truth.grad(grad){at}.item()")


@dataclass(frozen=True)
class SoftmaxProblem:
    """One call of a softmax form: the recipe of ``x`` and the tensor it built on ``device``, the
    ``dim``, the ``dtype=`` argument (``cast``; ``None``: not passed), the upstream gradient's
    recipe (``None``: forward only) and kind, and the variant (its mask on ``device``)."""

    family: str
    recipe: str
    device: str
    input: Tensor
    dim: int
    upstream: Optional[str] = None
    upstream_kind: str = ""
    note: str = ""
    cast: Optional[torch.dtype] = None
    variant: SoftmaxVariant = TORCH_SOFTMAX

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the operation runs in and returns."""
        return self.cast or self.input.dtype

    def call_code(self) -> str:
        cast = "" if self.cast is None else f", dtype=torch.{dtype_name(self.cast)}"
        variant = ", variant=variant" if self.variant.options() else ""
        return f"impl.along(x, {self.dim}{cast}{variant})"

    def upstream_gradient(self, code: Optional[str] = None) -> Tensor:
        """The upstream gradient ``code`` (by default the problem's) builds, on ``device``."""
        namespace: dict = {"torch": torch, "variant": self.variant}
        exec(code or self.upstream, namespace)
        return namespace["grad"].to(self.device)

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.input.shape)
        upstream = "forward only" if self.upstream is None else f"upstream={self.upstream_kind}"
        cast = "" if self.cast is None else f" from {dtype_name(self.input.dtype)} (dtype=)"
        variant = "".join(f", {name}=<{'x'.join(map(str, value.shape))} bool>" if name == "mask"
                          else f", {name}={value!r}" for name, value in self.variant.options().items())
        return (f"case={self.family} shape={shape} dim={self.dim} dtype={dtype_name(self.dtype)}{cast} "
                f"device={self.device}{variant}, {upstream}{self.note}")

    __repr__ = describe


def upstream_recipe(kind: str, shape: tuple, dtype: torch.dtype) -> str:
    """Code for the upstream gradient ``grad`` shaped ``shape`` (``UPSTREAM_KINDS``)."""
    name = dtype_name(dtype)
    if kind == "scalar":
        return f"grad = torch.tensor(1.75, dtype=torch.{name}).expand({tuple(shape)})"
    drawn = tuple(shape[:-2]) + tuple(shape[-2:][::-1]) if kind == "transposed" else tuple(shape)
    code = (f"grad = torch.randn({drawn}, dtype=torch.float64, "
            f"generator=torch.Generator().manual_seed(7)).to(torch.{name})")
    return code + ".transpose(-1, -2)" * (kind == "transposed")


def softmax_problem(family: str, recipe: str, device: str, dim: int = -1, *, upstream: Optional[str] = "random",
                    note: str = "", cast: Optional[torch.dtype] = None,
                    variant: SoftmaxVariant = TORCH_SOFTMAX) -> SoftmaxProblem:
    """Execute ``recipe`` (it defines ``x``, and may define ``mask``, on the cpu) and pose the
    problem along ``dim``, with an upstream gradient of kind ``upstream`` (``None``: forward
    only), ``dtype=cast`` if given, and ``variant`` (with the recipe's mask)."""
    namespace: dict = {"torch": torch}
    exec(recipe, namespace)
    x = namespace["x"].to(device)
    if "mask" in namespace:
        variant = replace(variant, mask=namespace["mask"].to(device))
    code = None if upstream is None else upstream_recipe(
        upstream if x.dim() > 1 or upstream != "transposed" else "random", tuple(x.shape), x.dtype)
    return SoftmaxProblem(family=family, recipe=recipe.strip(), device=device, input=x, dim=dim, upstream=code,
                          upstream_kind=upstream or "", note=note, cast=cast, variant=variant)


@dataclass(frozen=True)
class SoftmaxOutcome:
    """Pristine copies of the fed input and upstream gradient, the output, the input's gradient
    after backward, and the fed input itself (to see what the call did to it)."""

    input: Tensor
    output: Tensor
    fed: Tensor
    grad: Optional[Tensor] = None
    upstream: Optional[Tensor] = None


class SoftmaxForm(Form):
    parity_widens = False

    def __init__(self, name: str) -> None:
        self.name = name

    def upstream_code(self, problem: SoftmaxProblem) -> Optional[str]:
        """The problem's upstream recipe; a log-softmax's under a mask is 0 at the masked entries."""
        if problem.upstream is None or self.name != "log_softmax" or not problem.variant.masks:
            return problem.upstream
        return problem.upstream + "\ngrad = grad.masked_fill(~variant.kept(tuple(grad.shape)).to(grad.device), 0.0)"

    def call(self, impl: Implementation, problem: SoftmaxProblem, **context) -> SoftmaxOutcome:
        x = problem.input.detach()
        pristine = x.clone()
        if problem.upstream is None:
            with torch.no_grad():
                y = impl.along(x, problem.dim, problem.cast, variant=problem.variant)
            return SoftmaxOutcome(input=pristine, output=y.detach(), fed=x)
        x = x.requires_grad_()
        y = impl.along(x, problem.dim, problem.cast, variant=problem.variant)
        grad = problem.upstream_gradient(self.upstream_code(problem))
        pristine_grad = grad.clone()
        y.backward(grad)
        return SoftmaxOutcome(input=pristine, output=y.detach(), fed=x.detach(), grad=x.grad, upstream=pristine_grad)

    def truth(self, impl: Implementation, problem: SoftmaxProblem, outcome: SoftmaxOutcome) -> SoftmaxEvaluation:
        return evaluate_softmax(outcome.input.to(problem.dtype), problem.dim, self.name,
                                impl.softmax_variant(problem.variant))

    def quantities(self, impl: Implementation, problem: SoftmaxProblem, outcome: SoftmaxOutcome,
                   sev: SoftmaxEvaluation) -> list[Quantity]:
        found = [Quantity("value", outcome.output, sev.output, "softmax", {"sev": sev}, VALUE)]
        if outcome.upstream is not None:
            found.append(Quantity("gradient", outcome.grad, sev.grad(outcome.upstream), "softmax gradient",
                                  {"sev": sev, "grad_output": outcome.upstream}, GRADIENT,
                                  also=_anything_in_nan_rows(sev, outcome.grad)))
        return found

    def snippet(self, impl: Implementation, problem: SoftmaxProblem, show: Show) -> list[str]:
        variant = impl.softmax_variant(problem.variant).code()
        shows_variant = variant != TORCH_SOFTMAX.code()
        lines = ["import torch", "from conformance.impl import load_implementation",
                 "from conformance.softmax import " + "SoftmaxVariant, " * shows_variant + "evaluate_softmax",
                 problem.recipe]
        if problem.device != "cpu":
            lines.append(f"x = x.to({problem.device!r})")
            lines += [f"mask = mask.to({problem.device!r})"] * (problem.variant.mask is not None)
        lines += impl.load_code()
        lines += [f"variant = {variant}"] * shows_variant
        if show.truth:
            x = "x" if problem.cast is None else f"x.to(torch.{dtype_name(problem.cast)})"
            lines.append(f"truth = evaluate_softmax({x}, {problem.dim}, {self.name!r}"
                         + ", variant)" * shows_variant + ")" * (not shows_variant))
        return lines + list(self.call_steps(impl, problem) if show.steps is None else show.steps)

    def call_steps(self, impl: Implementation, problem: SoftmaxProblem, **context) -> list[str]:
        return call_lines(problem.call_code(), self.upstream_code(problem), problem.device, "y")


def _anything_in_nan_rows(sev: SoftmaxEvaluation, grad: Optional[Tensor]) -> Optional[Tensor]:
    """The gradient accepted in a fully masked row under ``"nan"``: whatever the call gave (it is
    judged only to stay in its row); NaN elsewhere (nothing besides the truth)."""
    if grad is None or sev.variant.fully_masked_rows != "nan" or not bool(sev.fully_masked.any()):
        return None
    rows = sev.rows(grad).masked_fill(~sev.fully_masked[:, None], torch.nan)
    return sev.to_input(rows)

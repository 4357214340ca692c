"""The crossing: a loss or a softmax form computed by another framework, called with torch's signature.

``FrameworkFunction`` is what every adapter is: named after the function it wraps, carrying that
function's declarations, and declaring what its framework cannot be judged on. ``FrameworkLoss``
is a loss (``fn(input, target, ...)``); ``CrossingLoss`` and ``CrossingSoftmax`` (a softmax form,
``fn(input, dim, dtype=None)``) are ones whose arrays leave torch (``ArrayCrossing``): the tensors
cross to the framework's arrays and back, and the gradient comes from a ``torch.autograd.Function``
whose backward applies the framework's pullback to the upstream gradient (so torch can neither
differentiate that backward, push tangents through it nor batch it: "double_backward",
"forward_ad" and "vmap" are declared unsupported).

The per-example convention (``fn(logits, labels)``, classes last, one loss per position, as
optax's) is adapted here for every framework: the class axis moved last for K-dimensional input,
the reduction done by the framework's ``xp.sum`` / ``xp.mean``, and the options it has no
parameter for (class weights, ignore_index, smoothing, probability targets) declared unsupported
and refused with ``NotImplementedError``.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..softmax import SOFTMAX_FORMS

__all__ = ["FrameworkFunction", "FrameworkLoss", "ArrayCrossing", "CrossingLoss", "CrossingSoftmax",
           "takes_torch_keywords", "classes_last", "per_example_forward"]

# Forward and backward run outside torch: it can neither differentiate the backward, push
# tangents through the forward nor batch either.
OUTSIDE_AUTOGRAD = frozenset({"double_backward", "forward_ad", "vmap"})
# What a per-example loss fn(logits, labels) has no parameter for.
PER_EXAMPLE_UNSUPPORTED = frozenset({"weight", "ignore_index", "label_smoothing", "probability_target"})
# Declarations of the wrapped function that conformance.declarations reads, carried over as they are.
DECLARATIONS = ("input_kind", "target_kind", "deviations")


def takes_torch_keywords(fn: Callable) -> bool:
    """Whether ``fn`` follows torch's keywords (it has a ``reduction`` parameter) rather than the
    per-example convention."""
    return "reduction" in inspect.signature(fn).parameters


def classes_last(xp: Any, input: Any) -> Any:
    """``(N, C, d1, ...)`` to ``(N, d1, ..., C)``; ``(N, C)`` and ``(C,)`` as they are."""
    return xp.moveaxis(input, 1, -1) if input.ndim > 2 else input


def refuse_options(weight: Any, ignore_index: int, label_smoothing: float) -> None:
    """Raise for an option a per-example loss has no parameter for (before any framework runs)."""
    asked = [name for name, given in (("weight", weight is not None), ("ignore_index", ignore_index != -100),
                                      ("label_smoothing", label_smoothing != 0)) if given]
    if asked:
        raise NotImplementedError(f"a per-example loss fn(logits, labels) has no {' or '.join(asked)}")


def per_example_forward(fn: Callable, xp: Any) -> Callable:
    """``fn(logits, labels)`` in torch's keywords, reduced by the framework's ``xp.sum`` / ``xp.mean``."""
    def forward(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        losses = fn(classes_last(xp, input), target)
        if reduction == "none":
            return losses
        if reduction == "sum":
            return xp.sum(losses)
        if reduction == "mean":
            return xp.mean(losses)
        raise ValueError(f"{reduction!r} is not a valid value for reduction")
    return forward


Pullback = Callable[[Any], tuple]


class FrameworkFunction(ABC):
    """A function written in another framework, called with torch's signature: named after the
    wrapped function (``{framework}_{kind}(name)``), carrying its declarations; subclasses say what
    the framework cannot be judged on (``framework_unsupported``)."""

    framework = ""
    kind = ""                    # what it is, in its name: "loss", "softmax", "log_softmax"
    outside_autograd = False     # whether torch's autograd cannot see the computation

    def __init__(self, fn: Callable) -> None:
        self.__qualname__ = f"{self.framework}_{self.kind}({getattr(fn, '__qualname__', type(fn).__name__)})"
        self.__module__ = getattr(fn, "__module__", None)   # where it is named from (impl.implementation_of)
        self.declared_unsupported = frozenset(getattr(fn, "unsupported", ()) or ())
        for name in DECLARATIONS:
            if hasattr(fn, name):
                setattr(self, name, getattr(fn, name))

    @abstractmethod
    def framework_unsupported(self) -> frozenset:
        """The features this framework (or this use of it) cannot hold."""

    def convention_unsupported(self) -> frozenset:
        """The features the calling convention has no room for."""
        return frozenset()

    @property
    def unsupported(self) -> frozenset:
        """Every feature the suite must report as unsupported, and why (module docstring)."""
        names = self.framework_unsupported() | self.convention_unsupported() | self.declared_unsupported
        return names | OUTSIDE_AUTOGRAD if self.outside_autograd else names

    @unsupported.setter
    def unsupported(self, names) -> None:
        """``fn.unsupported = {...}`` on the adapted object: declared on top of the framework's."""
        self.declared_unsupported = frozenset(names)


class FrameworkLoss(FrameworkFunction):
    """A loss written in another framework, called with torch's signature (``__call__``)."""

    kind = "loss"

    def __init__(self, fn: Callable, *, per_example: bool, differentiable: bool) -> None:
        self.per_example = per_example
        self.differentiable = differentiable
        super().__init__(fn)

    def convention_unsupported(self) -> frozenset:
        return (PER_EXAMPLE_UNSUPPORTED if self.per_example else frozenset()) | (
            frozenset() if self.differentiable else frozenset({"backward"}))

    @abstractmethod
    def __call__(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        """The loss as ``torch.nn.functional.cross_entropy`` returns it."""


class ArrayCrossing(ABC):
    """How a framework's arrays leave torch and come back (``to_array``, ``to_tensor``), and the
    call of ``run(wrt)`` (the value as a tensor and, for the tensors ``wrt`` marks, the pullback
    from the upstream array to their gradient arrays) under torch's autograd (``crossed``)."""

    outside_autograd = True

    @abstractmethod
    def to_array(self, tensor: Tensor) -> Any:
        """The tensor as the framework's array, on the cpu."""

    @abstractmethod
    def to_tensor(self, array: Any, device: torch.device) -> Tensor:
        """The framework's array as a tensor on ``device``, in the array's dtype."""

    def crossed(self, run: Callable[[tuple], tuple[Tensor, Optional[Pullback]]], *tensors: Tensor) -> Tensor:
        """``run(wrt)``'s value; when a tensor needs a gradient, through ``_Crossing``."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _Crossing.apply(self, run, *tensors)
        return run((False,) * len(tensors))[0]


class CrossingLoss(ArrayCrossing, FrameworkLoss):
    """A loss whose arrays leave torch. Subclasses say how tensors cross (``to_array``,
    ``to_tensor``) and how the framework yields the value and its pullback (``evaluate``)."""

    @abstractmethod
    def evaluate(self, x: Any, t: Any, options: dict, wrt: tuple[bool, bool]) -> tuple[Any, Optional[Pullback]]:
        """The loss array and, when ``wrt`` asks for a gradient (input, target), the pullback
        from the upstream array to ``(grad_input, grad_target)`` arrays (None where not asked)."""

    def run(self, input: Tensor, target: Tensor, options: dict,
            wrt: tuple[bool, bool]) -> tuple[Tensor, Optional[Pullback]]:
        """``evaluate`` on the tensors' arrays; the loss comes back as a tensor on the input's device."""
        weight = options["weight"]
        arrays = dict(options, weight=None if weight is None else self.to_array(weight))
        value, pullback = self.evaluate(self.to_array(input), self.to_array(target), arrays, wrt)
        return self.to_tensor(value, input.device), pullback

    def __call__(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        if self.per_example:
            refuse_options(weight, ignore_index, label_smoothing)
        options = {"weight": weight, "ignore_index": ignore_index, "reduction": reduction,
                   "label_smoothing": label_smoothing}
        return self.crossed(lambda wrt: self.run(input, target, options, wrt), input, target)


class CrossingSoftmax(ArrayCrossing, FrameworkFunction):
    """A softmax form (``form``: "softmax" or "log_softmax") whose arrays leave torch, called as
    torch's ``softmax(input, dim, dtype=None)``: ``dtype=`` casts in torch first (so the gradient
    goes back through the cast as torch's does). Subclasses say how tensors cross and how the
    framework yields the output along an axis and its pullback (``evaluate``)."""

    def __init__(self, fn: Callable, form: str) -> None:
        if form not in SOFTMAX_FORMS:
            raise ValueError(f"form={form!r}: expected one of {SOFTMAX_FORMS}")
        self.form = self.kind = form
        super().__init__(fn)

    def framework_unsupported(self) -> frozenset:
        return frozenset()

    @abstractmethod
    def evaluate(self, x: Any, axis: int, wrt: bool) -> tuple[Any, Optional[Callable[[Any], Any]]]:
        """The output array along ``axis`` and, when ``wrt``, the pullback from the upstream array
        to the input's gradient array."""

    def run(self, input: Tensor, dim: int, wrt: tuple[bool]) -> tuple[Tensor, Optional[Pullback]]:
        """``evaluate`` on the input's array; the output comes back as a tensor on the input's device."""
        value, pullback = self.evaluate(self.to_array(input), dim, wrt[0])
        if pullback is None:
            return self.to_tensor(value, input.device), None
        return self.to_tensor(value, input.device), lambda grad_output: (pullback(grad_output),)

    def __call__(self, input: Tensor, dim: int, dtype: Optional[torch.dtype] = None) -> Tensor:
        x = input if dtype is None else input.to(dtype)
        return self.crossed(lambda wrt: self.run(x, dim, wrt), x)


class _Crossing(torch.autograd.Function):
    """The value and its gradient computed by the other framework; torch carries the tensors."""

    @staticmethod
    def forward(ctx, crossing: ArrayCrossing, run: Callable, *tensors: Tensor) -> Tensor:
        value, ctx.pullback = run(tuple(ctx.needs_input_grad[2:]))
        ctx.crossing, ctx.devices = crossing, tuple(t.device for t in tensors)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple:
        grads = ctx.pullback(ctx.crossing.to_array(grad_output))
        return None, None, *(None if g is None else ctx.crossing.to_tensor(g, device)
                             for g, device in zip(grads, ctx.devices))

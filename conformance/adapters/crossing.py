"""The crossing: a loss computed by another framework, called with torch's signature.

``FrameworkLoss`` is what every adapter is: named after the function it wraps, carrying that
function's declarations, and declaring what its framework cannot be judged on. ``CrossingLoss``
is one whose arrays leave torch: the tensors cross to the framework's arrays and back, and the
gradient comes from a ``torch.autograd.Function`` whose backward applies the framework's pullback
to the upstream gradient (so torch can neither differentiate that backward, push tangents
through it nor batch it: "double_backward", "forward_ad" and "vmap" are declared unsupported).

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

__all__ = ["FrameworkLoss", "CrossingLoss", "takes_torch_keywords", "classes_last", "per_example_forward"]

# Forward and backward run outside torch: it can neither differentiate the backward, push
# tangents through the forward nor batch either.
OUTSIDE_AUTOGRAD = frozenset({"double_backward", "forward_ad", "vmap"})
# What a per-example loss fn(logits, labels) has no parameter for.
PER_EXAMPLE_UNSUPPORTED = frozenset({"weight", "ignore_index", "label_smoothing", "probability_target"})
# Declarations of the wrapped function that conformance.impl reads, carried over as they are.
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


class FrameworkLoss(ABC):
    """A loss written in another framework, called with torch's signature; subclasses say what
    the framework cannot be judged on (``framework_unsupported``) and how a call runs."""

    framework = ""
    outside_autograd = False     # whether torch's autograd cannot see the computation

    def __init__(self, fn: Callable, *, per_example: bool, differentiable: bool) -> None:
        self.per_example = per_example
        self.differentiable = differentiable
        self.__qualname__ = f"{self.framework}_loss({getattr(fn, '__qualname__', type(fn).__name__)})"
        self.__module__ = getattr(fn, "__module__", None)   # where it is named from (impl.implementation_of)
        self.declared_unsupported = frozenset(getattr(fn, "unsupported", ()) or ())
        for name in DECLARATIONS:
            if hasattr(fn, name):
                setattr(self, name, getattr(fn, name))

    @abstractmethod
    def framework_unsupported(self) -> frozenset:
        """The features this framework (or this use of it) cannot hold."""

    @property
    def unsupported(self) -> frozenset:
        """Every feature the suite must report as unsupported, and why (module docstring)."""
        names = self.framework_unsupported() | self.declared_unsupported
        if self.outside_autograd:
            names |= OUTSIDE_AUTOGRAD
        if self.per_example:
            names |= PER_EXAMPLE_UNSUPPORTED
        if not self.differentiable:
            names |= {"backward"}
        return names

    @unsupported.setter
    def unsupported(self, names) -> None:
        """``loss.unsupported = {...}`` on the adapted object: declared on top of the framework's."""
        self.declared_unsupported = frozenset(names)

    @abstractmethod
    def __call__(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        """The loss as ``torch.nn.functional.cross_entropy`` returns it."""


class CrossingLoss(FrameworkLoss):
    """A loss whose arrays leave torch. Subclasses say how tensors cross (``to_array``,
    ``to_tensor``) and how the framework yields the value and its pullback (``evaluate``)."""

    outside_autograd = True

    @abstractmethod
    def to_array(self, tensor: Tensor) -> Any:
        """The tensor as the framework's array, on the cpu."""

    @abstractmethod
    def to_tensor(self, array: Any, device: torch.device) -> Tensor:
        """The framework's array as a tensor on ``device``, in the array's dtype."""

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
        if torch.is_grad_enabled() and (input.requires_grad or target.requires_grad):
            return _Crossing.apply(input, target, self, options)
        return self.run(input, target, options, (False, False))[0]


class _Crossing(torch.autograd.Function):
    """The loss and its gradient computed by the other framework; torch carries the tensors."""

    @staticmethod
    def forward(ctx, input: Tensor, target: Tensor, loss: CrossingLoss, options: dict) -> Tensor:
        value, ctx.pullback = loss.run(input, target, options, tuple(ctx.needs_input_grad[:2]))
        ctx.loss, ctx.devices = loss, (input.device, target.device)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple:
        grads = ctx.pullback(ctx.loss.to_array(grad_output))
        grad_input, grad_target = (None if g is None else ctx.loss.to_tensor(g, device)
                                   for g, device in zip(grads, ctx.devices))
        return grad_input, grad_target, None, None

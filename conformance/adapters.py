"""A loss written in NumPy or JAX, judged by the same suite as a torch one.

``numpy_loss(forward, backward=None)`` and ``jax_loss(fn)`` return a callable with the signature
of ``torch.nn.functional.cross_entropy`` (torch tensors in and out) that ``conformance.impl.adapt``
takes as it takes any function; ``wrap(obj, framework)`` is what ``--conformance-impl-framework``
calls. Everything judged is computed by the framework: torch only carries the tensors across and back.

Two calling conventions, told apart by the function's signature:

* torch's keywords, when the function has a ``reduction`` parameter::

      fn(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0)

  with arrays (``weight`` an array or None), classes on axis 1, returning what torch returns;
* per example, otherwise: ``fn(logits, labels)`` with the classes on the last axis and integer
  labels, returning one loss per position, like ``optax.softmax_cross_entropy_with_integer_labels``.
  The adapter moves the class axis last for K-dimensional input and reduces in the framework
  (``np.sum`` / ``np.mean``, ``jnp.sum`` / ``jnp.mean``). Such a loss has no class weights,
  ignore_index, label smoothing or probability targets: they are declared unsupported, and a
  call that asks for one raises ``NotImplementedError``.

Tensors cross as NumPy arrays sharing their memory (an in-place write is seen by the suite) and to
JAX by DLPack (a contiguous copy where the layout needs one); a non-cpu tensor goes through the
cpu and the results come back to its device. A result keeps the dtype the framework gave it: a
wrong one is for the suite to see.

Gradients come from a ``torch.autograd.Function``. JAX: ``jax.vjp`` of the loss applied to the
upstream gradient in backward (both directions under ``jax.jit`` by default, see ``JaxLoss``).
NumPy: the user's ``backward(input, target, grad_output, **options)`` (per example:
``backward(logits, labels, grad_losses)``, classes last, one upstream value per position)
returning the input's gradient, or ``(grad_input, grad_target)`` for a probability target.

Declared unsupported, on top of the wrapped function's own ``unsupported``: "double_backward",
"forward_ad" and "vmap" (torch cannot differentiate, push tangents through or batch a computation
it does not see); "backward" too for NumPy without a backward; "bfloat16" for NumPy (it has
none); "float64" for JAX without x64, its default (a float64 tensor would arrive as float32:
``JAX_ENABLE_X64=1``, or ``jax.config.update("jax_enable_x64", True)`` before the run, lets the
suite judge float64). Its ``input_kind``, ``target_kind`` and ``deviations`` are carried over.

Example::

    import optax
    from conformance.adapters import jax_loss

    cross_entropy = jax_loss(optax.softmax_cross_entropy_with_integer_labels)
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .impl import ImplementationError

__all__ = ["FRAMEWORKS", "FrameworkLoss", "NumpyLoss", "JaxLoss", "numpy_loss", "jax_loss", "wrap",
           "takes_torch_keywords"]

FRAMEWORKS = ("torch", "numpy", "jax")

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


def per_example_backward(backward: Callable) -> Callable:
    """NumPy's ``backward(logits, labels, grad_losses)`` in torch's keywords: the reduction's
    upstream spread over the positions by NumPy, the gradient's classes moved back to axis 1."""
    def grad(input, target, grad_output, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        positions = np.shape(target)
        if reduction != "none":
            count = math.prod(positions) if reduction == "mean" else 1
            grad_output = np.broadcast_to(grad_output / count, positions)
        grad_logits = backward(classes_last(np, input), target, grad_output)
        return np.moveaxis(grad_logits, -1, 1) if input.ndim > 2 else grad_logits
    return grad


Pullback = Callable[[Any], tuple]


class FrameworkLoss(ABC):
    """A loss computed by another framework, called with torch's signature.

    Subclasses say how tensors cross (``to_array``, ``to_tensor``), how the framework yields the
    value and its pullback (``evaluate``) and what it cannot be judged on (``framework_unsupported``).
    """

    framework = ""

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
        """The features this framework cannot hold."""

    @property
    def unsupported(self) -> frozenset:
        """Every feature the suite must report as unsupported, and why (module docstring)."""
        names = OUTSIDE_AUTOGRAD | self.framework_unsupported() | self.declared_unsupported
        if self.per_example:
            names |= PER_EXAMPLE_UNSUPPORTED
        if not self.differentiable:
            names |= {"backward"}
        return names

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
    def forward(ctx, input: Tensor, target: Tensor, loss: FrameworkLoss, options: dict) -> Tensor:
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


class NumpyLoss(FrameworkLoss):
    """NumPy's ``forward`` and the user's analytic ``backward``."""

    framework = "numpy"

    def __init__(self, forward: Callable, backward: Optional[Callable] = None) -> None:
        per_example = not takes_torch_keywords(forward)
        super().__init__(forward, per_example=per_example, differentiable=backward is not None)
        self.forward = per_example_forward(forward, np) if per_example else forward
        self.backward = per_example_backward(backward) if per_example and backward else backward

    def framework_unsupported(self) -> frozenset:
        return frozenset({"bfloat16"})         # NumPy has no bfloat16

    def to_array(self, tensor: Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    def to_tensor(self, array: Any, device: torch.device) -> Tensor:
        array = np.asarray(array)               # a NumPy reduction gives a NumPy scalar
        if not array.flags.writeable or any(stride < 0 for stride in array.strides):
            array = array.copy()                # torch.from_numpy takes neither
        return torch.from_numpy(array).to(device)

    def evaluate(self, x, t, options, wrt):
        value = self.forward(x, t, **options)
        if not any(wrt):
            return value, None

        def pullback(grad_output):
            if self.backward is None:
                raise NotImplementedError("numpy_loss(forward) was given no backward: 'backward' is unsupported")
            grads = self.backward(x, t, grad_output, **options)
            grad_input, grad_target = grads if isinstance(grads, tuple) else (grads, None)
            if wrt[1] and grad_target is None:
                raise TypeError("the target requires a gradient: backward must return (grad_input, grad_target)")
            return grad_input, grad_target if wrt[1] else None
        return value, pullback


class JaxLoss(FrameworkLoss):
    """A JAX function, under ``jax.jit`` unless ``jit=False``, differentiated by ``jax.vjp``.

    Under jit each shape compiles once into one program (4 to 8 times less compile time, measured,
    than JAX's op-by-op dispatch, which compiles every primitive for every new shape); the backward takes
    ``jax.vjp`` of the same jitted loss and applies it to the upstream gradient, recomputing the
    forward inside one compiled program rather than keeping a pullback whose every primitive
    compiles again. ``jit=False`` is for a function that cannot be traced (Python control flow on
    values).
    """

    framework = "jax"

    def __init__(self, fn: Callable, *, jit: bool = True) -> None:
        import jax  # optional: only a JAX loss needs it (ImportError otherwise)
        import jax.dlpack
        import jax.numpy as jnp
        self.jax = jax
        per_example = not takes_torch_keywords(fn)
        super().__init__(fn, per_example=per_example, differentiable=True)
        self.fn = per_example_forward(fn, jnp) if per_example else fn
        static = ("ignore_index", "reduction", "label_smoothing")
        self.value = jax.jit(self.fn, static_argnames=static) if jit else self.fn
        self.grads = jax.jit(self.vjp, static_argnames=static + ("wrt_target",)) if jit else self.vjp

    def framework_unsupported(self) -> frozenset:
        # Without x64 (JAX's default) a float64 tensor arrives as float32.
        return frozenset() if self.jax.config.jax_enable_x64 else frozenset({"float64"})

    def to_array(self, tensor: Tensor) -> Any:
        # DLPack into JAX takes compact layouts only (no stride 0, no gaps).
        return self.jax.dlpack.from_dlpack(tensor.detach().cpu().contiguous())

    def to_tensor(self, array: Any, device: torch.device) -> Tensor:
        return torch.from_dlpack(array).to(device)

    def vjp(self, x, t, grad_output, *, wrt_target: bool, **options) -> tuple:
        """``jax.vjp`` of the loss applied to the upstream gradient: ``(grad_input, grad_target or None)``."""
        if wrt_target:
            return self.jax.vjp(lambda x, t: self.fn(x, t, **options), x, t)[1](grad_output)
        return (*self.jax.vjp(lambda x: self.fn(x, t, **options), x)[1](grad_output), None)

    def evaluate(self, x, t, options, wrt):
        value = self.value(x, t, **options)
        if not any(wrt):
            return value, None
        return value, lambda grad_output: self.grads(x, t, grad_output, wrt_target=wrt[1], **options)


def numpy_loss(forward: Callable, backward: Optional[Callable] = None) -> NumpyLoss:
    """A NumPy loss with torch's signature; without ``backward``, gradients are unsupported."""
    return NumpyLoss(forward, backward)


def jax_loss(fn: Callable, *, jit: bool = True) -> JaxLoss:
    """A JAX loss with torch's signature, run under ``jax.jit`` (unless ``jit=False``) and
    differentiated by ``jax.vjp``."""
    return JaxLoss(fn, jit=jit)


def wrap(obj: Any, framework: str) -> Any:
    """``obj`` adapted to torch's signature for ``--conformance-impl-framework``: as it is for "torch"
    (or when already adapted for ``framework``); for "numpy" its ``backward`` attribute is the backward.
    What cannot be adapted raises ``ImplementationError`` (a usage error of the run)."""
    if framework not in FRAMEWORKS:
        raise ImplementationError(f"--conformance-impl-framework={framework!r}: expected one of "
                                  f"{', '.join(FRAMEWORKS)}")
    if framework == "torch" or isinstance(obj, FrameworkLoss) and obj.framework == framework:
        return obj
    if isinstance(obj, FrameworkLoss):
        raise ImplementationError(f"--conformance-impl-framework={framework}: {obj.__qualname__} is already "
                                  f"adapted from {obj.framework}")
    if not callable(obj):
        raise ImplementationError(f"--conformance-impl-framework={framework}: {type(obj).__name__} object is not "
                                  "callable")
    if framework == "numpy":
        return numpy_loss(obj, getattr(obj, "backward", None))
    try:
        return jax_loss(obj)
    except ImportError as exc:
        raise ImplementationError(f"--conformance-impl-framework=jax: cannot import jax: {exc}") from None

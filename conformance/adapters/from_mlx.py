"""An MLX loss with ``mlx.nn.losses.cross_entropy``'s signature, or an MLX softmax form, differentiated
by ``mx.vjp``.

``mlx_loss(fn)`` calls ``fn(logits, targets, label_smoothing=..., reduction=...)`` with the classes
last (MLX's ``axis=-1``): class indices, or probabilities shaped like the logits (which MLX tells
apart by their rank); its reductions are torch's ("mean" over the positions). Tensors cross by
DLPack, but float64 through NumPy (``mx.from_dlpack`` turns float64 into float32, measured on mlx
0.32.4), and back by DLPack. The gradient is ``mx.vjp`` of the same call applied to the upstream
gradient (the forward recomputed inside it). ``mx.compile`` is not used: it does not pay (value and
``mx.vjp`` on 9 shapes, 3 calls each: 31 ms eager, 32 ms compiled, measured), unlike ``jax.jit``,
since MLX's eager mode compiles nothing per shape.

``mlx_softmax(fn, form)`` calls ``fn(x, axis=dim)``: ``mx.softmax`` (its default ``precise=False``, the
call ``mlx.nn.softmax`` and ``nn.Softmax`` make: a half input accumulates in its own dtype) or
``mlx.nn.log_softmax`` (MLX has no ``mx.log_softmax``; ``mx.fast`` has no softmax).

Declared unsupported by the loss: "weight" (MLX's ``weights`` are per target, not per class) and
"ignore_index" (MLX has none; a call asking for either raises ``NotImplementedError``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .crossing import ArrayCrossing, CrossingLoss, CrossingSoftmax, classes_last

__all__ = ["MlxLoss", "MlxSoftmax", "mlx_loss", "mlx_softmax"]


def mlx_core() -> Any:
    import mlx.core as mx  # optional: only an MLX function needs it (ImportError otherwise)
    return mx


class MlxArrays(ArrayCrossing):
    """How tensors cross to ``mlx.core`` arrays (``self.mx``, set by the constructor) and back
    (module docstring)."""

    framework = "mlx"

    def to_array(self, tensor: Tensor) -> Any:
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.float64:
            return self.mx.array(tensor.numpy(), dtype=self.mx.float64)
        return self.mx.from_dlpack(tensor)

    def to_tensor(self, array: Any, device: torch.device) -> Tensor:
        return torch.from_dlpack(array).to(device)


class MlxLoss(MlxArrays, CrossingLoss):
    """An MLX cross entropy with torch's signature (module docstring)."""

    def __init__(self, fn: Callable) -> None:
        self.mx = mlx_core()
        super().__init__(fn, per_example=False, differentiable=True)
        self.fn = fn

    def framework_unsupported(self) -> frozenset:
        return frozenset({"weight", "ignore_index"})

    def loss(self, x: Any, t: Any, reduction: str, label_smoothing: float) -> Any:
        """``fn`` on the classes-last arrays."""
        t = classes_last(self.mx, t) if t.ndim == x.ndim else t
        return self.fn(classes_last(self.mx, x), t, label_smoothing=label_smoothing, reduction=reduction)

    def evaluate(self, x, t, options, wrt):
        if options["weight"] is not None or options["ignore_index"] != -100:
            raise NotImplementedError("mlx's cross_entropy has no class weights or ignore_index")
        if options["reduction"] not in ("none", "mean", "sum"):
            raise ValueError(f"{options['reduction']!r} is not a valid value for reduction")
        keywords = {"reduction": options["reduction"], "label_smoothing": options["label_smoothing"]}
        value = self.loss(x, t, **keywords)
        if not any(wrt):
            return value, None

        def pullback(grad_output):
            if wrt[1]:
                return tuple(self.mx.vjp(lambda x, t: self.loss(x, t, **keywords), [x, t], [grad_output])[1])
            return self.mx.vjp(lambda x: self.loss(x, t, **keywords), [x], [grad_output])[1][0], None
        return value, pullback


def mlx_loss(fn: Callable) -> MlxLoss:
    """An MLX loss with ``mlx.nn.losses.cross_entropy``'s signature, called with torch's."""
    return MlxLoss(fn)


class MlxSoftmax(MlxArrays, CrossingSoftmax):
    """An MLX softmax form with torch's signature (module docstring)."""

    def __init__(self, fn: Callable, form: str) -> None:
        self.mx = mlx_core()
        super().__init__(fn, form)
        self.fn = fn

    def evaluate(self, x, axis, wrt):
        value = self.fn(x, axis=axis)
        if not wrt:
            return value, None
        return value, lambda grad_output: self.mx.vjp(lambda x: self.fn(x, axis=axis), [x], [grad_output])[1][0]


def mlx_softmax(fn: Callable, *, form: str = "softmax") -> MlxSoftmax:
    """An MLX softmax form ``fn(x, axis=...)`` (``form``: "softmax" or "log_softmax") called with torch's
    ``softmax(input, dim, dtype=None)``."""
    return MlxSoftmax(fn, form)

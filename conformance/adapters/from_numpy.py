"""A NumPy loss: NumPy's forward and the user's analytic backward.

Tensors cross as NumPy arrays sharing their memory (an in-place write is seen by the suite). The
backward is ``backward(input, target, grad_output, **options)`` returning the input's gradient,
or ``(grad_input, grad_target)`` for a probability target (per example:
``backward(logits, labels, grad_losses)``, classes last, one upstream value per position).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .crossing import CrossingLoss, classes_last, per_example_forward, takes_torch_keywords

__all__ = ["NumpyLoss", "numpy_loss"]


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


class NumpyLoss(CrossingLoss):
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


def numpy_loss(forward: Callable, backward: Optional[Callable] = None) -> NumpyLoss:
    """A NumPy loss with torch's signature; without ``backward``, gradients are unsupported."""
    return NumpyLoss(forward, backward)

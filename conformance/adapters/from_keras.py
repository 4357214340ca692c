"""A Keras 3 loss, run on Keras' torch backend: the tensors are Keras' own, nothing is copied, and
the gradient is torch's autograd through Keras' torch ops (what training on that backend uses).

``keras_loss(loss, from_logits=None)`` takes a loss class (``keras.losses.SparseCategoricalCrossentropy``,
``CategoricalCrossentropy``) or a loss function with Keras' signature ``fn(y_true, y_pred, from_logits=...,
...)`` (``keras.losses.sparse_categorical_crossentropy``, ``categorical_crossentropy``). Each call builds
the loss with the call's options and reduces it as Keras does (a function through a
``keras.losses.Loss`` subclass whose ``call`` is the function, which is what Keras' own classes are):

* ``from_logits`` (the loss's default, False in Keras, unless given): logits, else probabilities,
  the kit's ``input_kind`` "logits" or "probs";
* the target: an index with ``ignore_class`` (passed torch's ``ignore_index``) where the loss has
  that parameter, else a one-hot row (``target_kind`` "onehot"; a function may declare
  ``target_kind`` itself); classes moved last, Keras' ``axis=-1``;
* ``label_smoothing`` where the loss has it; reductions "none", "sum", and "mean" as Keras'
  "sum_over_batch_size" (over the kept positions under ``ignore_class``: its mask reweights);
* ``dtype`` Keras' default, ``floatx`` (float32), but "float64" for a float64 input: Keras computes
  a half input in float32 and returns float32 (declared ``float32_output``), and with
  ``dtype="float16"`` it would cast the labels to float16 too (2049 reads 2048).

Declared: "weight" unsupported (Keras' losses weigh samples, not classes: ``class_weight`` belongs to
``Model.fit``), so are "label_smoothing", "ignore_index" and "probability_target" where the loss has
no such parameter or target; the deviations ``float32_output`` (above) and, with ``ignore_class``,
``all_ignored_mean_zero`` (a mean over no kept position is 0: Keras divides with ``divide_no_nan``) and,
on probabilities, ``simplex_gradient`` (Keras divides them by their sum first, so its gradient is the
kit's plus a multiple of the all-ones vector per position: judged along the simplex).
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..impl import ImplementationError
from .crossing import FrameworkLoss, classes_last

__all__ = ["KERAS_BACKEND", "KerasLoss", "keras_loss", "use_torch_backend"]

KERAS_BACKEND = "torch"       # the backend whose tensors are torch's

REDUCTIONS = {"none": "none", "sum": "sum", "mean": "sum_over_batch_size"}


def use_torch_backend() -> Any:
    """Keras, imported on the torch backend (``KERAS_BACKEND=torch`` unless set: Keras reads it once,
    at its first import)."""
    os.environ.setdefault("KERAS_BACKEND", KERAS_BACKEND)
    import keras  # optional: only a Keras loss needs it (ImportError otherwise)
    if keras.backend.backend() != KERAS_BACKEND:
        raise ImplementationError(f"keras runs on its {keras.backend.backend()!r} backend: the kit judges it on "
                                  "'torch' (set KERAS_BACKEND=torch before keras is first imported)")
    return keras


def function_loss(keras: Any, fn: Callable) -> type:
    """A ``keras.losses.Loss`` subclass whose ``call`` is ``fn``, so that Keras reduces it."""
    class FunctionLoss(keras.losses.Loss):
        def __init__(self, reduction: str, dtype: str, **options) -> None:
            super().__init__(reduction=reduction, dtype=dtype)
            self.options = options

        def call(self, y_true, y_pred):
            return fn(y_true, y_pred, **self.options)
    return FunctionLoss


class KerasLoss(FrameworkLoss):
    """A Keras loss class or function with torch's signature (module docstring)."""

    framework = "keras"

    def __init__(self, loss: Any, *, from_logits: Optional[bool] = None) -> None:
        keras = use_torch_backend()
        self.keras = keras
        super().__init__(loss, per_example=False, differentiable=True)
        self.build = loss if inspect.isclass(loss) else function_loss(keras, loss)
        parameters = inspect.signature(loss.__init__ if inspect.isclass(loss) else loss).parameters
        self.parameters = frozenset(parameters)
        self.from_logits = parameters["from_logits"].default if from_logits is None else from_logits
        self.input_kind = "logits" if self.from_logits else "probs"
        if not hasattr(self, "target_kind"):
            self.target_kind = "index" if "ignore_class" in parameters else "onehot"
        deviations = {"float32_output"} | ({"all_ignored_mean_zero"} if "ignore_class" in parameters else set())
        self.deviations = frozenset(getattr(self, "_deviations", ())) | deviations

    @property
    def deviations(self) -> frozenset:
        """The deviations declared and Keras' (module docstring); ``simplex_gradient`` while the input
        it is judged on is probabilities (``input_kind``, which a user may set on the object)."""
        return self._deviations | ({"simplex_gradient"} if self.input_kind == "probs" else frozenset())

    @deviations.setter
    def deviations(self, names) -> None:
        self._deviations = frozenset(names)

    def framework_unsupported(self) -> frozenset:
        names = {"weight"}
        if "label_smoothing" not in self.parameters:
            names.add("label_smoothing")
        if self.target_kind == "index":
            names.add("probability_target")
            if "ignore_class" not in self.parameters:
                names.add("ignore_index")
        return frozenset(names)

    def __call__(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        if reduction not in REDUCTIONS:
            raise ValueError(f"{reduction!r} is not a valid value for reduction")
        if weight is not None:
            raise NotImplementedError("Keras' losses take no class weights")
        options = {"from_logits": self.from_logits, "reduction": REDUCTIONS[reduction],
                   "dtype": "float64" if input.dtype == torch.float64 else None}
        if "ignore_class" in self.parameters:
            options["ignore_class"] = ignore_index
        if label_smoothing:
            if "label_smoothing" not in self.parameters:
                raise NotImplementedError(f"{self.__qualname__} has no label_smoothing")
            options["label_smoothing"] = label_smoothing
        ops = self.keras.ops
        y_true = classes_last(ops, target) if target.is_floating_point() else target
        return self.build(**options)(y_true, classes_last(ops, input))


def keras_loss(loss: Any, *, from_logits: Optional[bool] = None) -> KerasLoss:
    """A Keras loss class or function with torch's signature, on Keras' torch backend; ``from_logits``
    is what it is built with (its own default unless given)."""
    return KerasLoss(loss, from_logits=from_logits)

"""Losses written in NumPy, JAX, Keras or MLX, judged by the same suite as a torch one.

``numpy_loss(forward, backward=None)``, ``jax_loss(fn)``, ``keras_loss(loss)`` and ``mlx_loss(fn)``
return a callable with the signature of ``torch.nn.functional.cross_entropy`` (torch tensors in
and out), and ``mlx_softmax(fn, form=...)`` one with ``torch.nn.functional.softmax``'s, that
``conformance.impl.adapt`` takes as it takes any function; ``wrap(obj, framework)`` is what
``--conformance-impl-framework`` calls (a softmax form for a function named ``softmax`` or
``log_softmax``, or one that declares ``form``). Everything judged is computed by the framework: torch only
carries the tensors across and back (``crossing``), and a result keeps the dtype the framework gave it.
One module per framework says how its tensors cross and what it declares.

NumPy and JAX take two calling conventions, told apart by the function's signature: torch's
keywords (the function has a ``reduction`` parameter; arrays, classes on axis 1), or per example
``fn(logits, labels)`` (classes last, one loss per position, like
``optax.softmax_cross_entropy_with_integer_labels``). Keras' losses and MLX's
``nn.losses.cross_entropy`` are called in their own conventions (``from_keras``, ``from_mlx``).

Example::

    import optax
    from conformance.adapters import jax_loss

    cross_entropy = jax_loss(optax.softmax_cross_entropy_with_integer_labels)
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ..impl import ImplementationError
from ..softmax import SOFTMAX_FORMS
from .crossing import CrossingLoss, CrossingSoftmax, FrameworkFunction, FrameworkLoss, takes_torch_keywords
from .from_jax import JaxLoss, JaxSoftmax, jax_loss, jax_softmax
from .from_keras import KERAS_BACKEND, KerasLoss, keras_loss
from .from_mlx import MlxLoss, MlxSoftmax, mlx_loss, mlx_softmax
from .from_numpy import NumpyLoss, numpy_loss

__all__ = ["FRAMEWORKS", "FrameworkFunction", "FrameworkLoss", "CrossingLoss", "CrossingSoftmax", "NumpyLoss",
           "JaxLoss", "JaxSoftmax", "KerasLoss", "MlxLoss", "MlxSoftmax", "numpy_loss", "jax_loss", "keras_loss",
           "mlx_loss", "jax_softmax", "mlx_softmax", "wrap", "prepare", "softmax_form", "takes_torch_keywords"]

# --conformance-impl-framework: each name and how a plain object of it is adapted.
ADAPTERS = {
    "numpy": lambda obj: numpy_loss(obj, getattr(obj, "backward", None)),
    "jax": jax_loss,
    "keras": keras_loss,
    "mlx": mlx_loss,
}
FRAMEWORKS = ("torch", *ADAPTERS)
# --conformance-impl-framework: how a plain softmax form (``softmax_form``) of each framework is adapted.
SOFTMAX_ADAPTERS = {"jax": jax_softmax, "mlx": mlx_softmax}


def softmax_form(obj: Any) -> Optional[str]:
    """The softmax form ``obj`` declares (``form``), else the one it is named (``mx.softmax``,
    ``jax.nn.log_softmax``: a framework's function declares nothing, and an MLX one takes no
    attribute); ``None`` for a loss."""
    form = getattr(obj, "form", None) or getattr(obj, "__name__", None)
    return form if form in SOFTMAX_FORMS else None


def prepare(framework: str) -> None:
    """What ``framework`` needs before the user's module imports it: Keras its torch backend."""
    if framework == "keras":
        os.environ.setdefault("KERAS_BACKEND", KERAS_BACKEND)


def wrap(obj: Any, framework: str) -> Any:
    """``obj`` adapted to torch's signature for ``--conformance-impl-framework``: as it is for "torch"
    (or when already adapted for ``framework``); for "numpy" its ``backward`` attribute is the backward;
    a softmax form (``softmax_form``) as one, by ``SOFTMAX_ADAPTERS``.
    What cannot be adapted raises ``ImplementationError`` (a usage error of the run)."""
    if framework not in FRAMEWORKS:
        raise ImplementationError(f"--conformance-impl-framework={framework!r}: expected one of "
                                  f"{', '.join(FRAMEWORKS)}")
    if framework == "torch" or isinstance(obj, FrameworkFunction) and obj.framework == framework:
        return obj
    if isinstance(obj, FrameworkFunction):
        raise ImplementationError(f"--conformance-impl-framework={framework}: {obj.__qualname__} is already "
                                  f"adapted from {obj.framework}")
    if not callable(obj):
        raise ImplementationError(f"--conformance-impl-framework={framework}: {type(obj).__name__} object is not "
                                  "callable")
    form = softmax_form(obj)
    if form is not None and framework not in SOFTMAX_ADAPTERS:
        raise ImplementationError(f"--conformance-impl-framework={framework}: {form} forms are adapted from "
                                  f"{' and '.join(SOFTMAX_ADAPTERS)} only; a {framework} {form} that takes torch "
                                  "tensors is judged as it is (no --conformance-impl-framework)")
    try:
        return ADAPTERS[framework](obj) if form is None else SOFTMAX_ADAPTERS[framework](obj, form=form)
    except ImportError as exc:
        raise ImplementationError(f"--conformance-impl-framework={framework}: cannot import {framework}: "
                                  f"{exc}") from None

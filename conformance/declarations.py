"""What an implementation declares about itself, read from the object and checked: optional
attributes on the function, module class or instance (never module-level variables beside it,
which are refused, ``refuse_stray``):

``unsupported``  a set of names from ``FEATURES``: those checks are reported as unsupported.
``input_kind``   ``"logits"`` (default), ``"log_probs"`` or ``"probs"``.
``target_kind``  ``"index"`` (default) or ``"onehot"`` (float one-hot rows shaped like the input).
``deviations``   a set of names from ``DEVIATIONS``: documented departures from torch's
                 semantics, reported as declared instead of failing.
``variants``     ``{kit name: keyword}`` for the options beyond torch it takes (``VARIANTS``;
                 e.g. Liger's ``{"z_loss": "lse_square_scale", "softcap": "softcap"}``).
                 A softmax form's are ``vocabulary.SOFTMAX_VARIANTS`` (``scale``, ``softcap``,
                 ``mask``, ``causal``).
``mask_convention``, ``causal_alignment``, ``fully_masked_rows``  a softmax form's conventions
                 (``vocabulary.SOFTMAX_CONVENTIONS``, ``softmax.SoftmaxVariant``): what True in
                 its mask means, where its causal diagonal sits, what a row with nothing kept is.
``z_loss_weighting``  ``"unweighted"`` (default, Liger's) or ``"class_weight"`` (see reference).
``returns``      ``{auxiliary: keyword}``: the keyword (set to True) that makes it also return
                 an auxiliary (``AUXILIARIES``), as ``(loss, aux)`` or an object with
                 ``.loss`` and an attribute of that name (Liger's ``return_z_loss``, CCE's
                 ``return_lse``).
``differentiable_returns``  ``{"z_loss"}`` if the returned z-loss's gradient flows; otherwise it
                 is for logging (the kit judges no gradient of a returned logsumexp).
``approximations``  ``{name: bound}`` from ``APPROXIMATIONS``: a documented approximation the loss
                 makes on purpose; the kit judges it by that bound and reports it as declared.
``memory``       ``"chunked"`` (``MEMORY``), for a linear loss that never holds the N x V logits at
                 once: the kit fails it if its peak memory reaches their size (``test_memory``).
``form``         ``FORMS``: what the loss takes (``"softmax"`` and ``"log_softmax"``: torch's
                 ``softmax(input, dim, dtype=None)``, or a module class built as ``nn.Softmax(dim)``;
                 torch's own are known by name, and so is a function named ``softmax`` or ``log_softmax``
                 that takes ``dim`` and no ``target``). Found from the signature where it is not declared:
                 a ``linear_weight`` parameter is torch's ``linear_cross_entropy(input, linear_weight,
                 target, *, linear_bias, ...)``; keyword-only ``group`` and ``vocab_start`` a
                 vocab-parallel loss on a rank's class shard. Each suite module judges one form.
"""
from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch

from .softmax import SOFTMAX_FORMS
from .vocabulary import (
    APPROXIMATIONS,
    AUXILIARIES,
    DECLARED_TARGET_KINDS,
    DEVIATIONS,
    FEATURES,
    INPUT_KINDS,
    MEMORY,
    SOFTMAX_CONVENTIONS,
    SOFTMAX_VARIANTS,
    VARIANT_FEATURES,
    VARIANTS,
    Z_LOSS_WEIGHTINGS,
)

__all__ = ["DECLARATIONS", "ImplementationError", "form_of", "read", "refuse_stray"]

# The attributes an implementation declares itself by (the module docstring); those that name
# things are sets of names or, in MAPPING_DECLARATIONS, dicts keyed by names.
DECLARATIONS = ("unsupported", "input_kind", "target_kind", "deviations", "variants", "z_loss_weighting", "returns",
                "differentiable_returns", "approximations", "memory", "form", *SOFTMAX_CONVENTIONS)
MAPPING_DECLARATIONS = ("variants", "returns", "approximations")


class ImplementationError(Exception):
    """The implementation could not be loaded or declares something the kit does not know."""


# torch's own softmax forms, which carry no declaration.
_TORCH_FORMS = ((torch.nn.functional.softmax, "softmax"), (torch.nn.functional.log_softmax, "log_softmax"),
                (torch.nn.Softmax, "softmax"), (torch.nn.LogSoftmax, "log_softmax"))


def form_of(obj: Any) -> str:
    """The declared ``form``, else the one the signature shows (see the module docstring)."""
    declared = getattr(obj, "form", None)
    if declared is not None:
        return declared
    torch_own = next((form for own, form in _TORCH_FORMS if obj is own or type(obj) is own), None)
    if torch_own is not None:
        return torch_own
    target = obj.forward if inspect.isclass(obj) else type(obj).forward if isinstance(obj, torch.nn.Module) else obj
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return "logits"
    if "linear_weight" in parameters:
        return "linear"
    if "dim" in parameters and "target" not in parameters and getattr(obj, "__name__", None) in SOFTMAX_FORMS:
        return obj.__name__
    keyword_only = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return "vocab_parallel" if {"group", "vocab_start"} <= keyword_only else "logits"


def _declared_names(obj: Any, attribute: str, known: Mapping, spec: str) -> Any:
    """The set (a dict for ``MAPPING_DECLARATIONS``) that ``obj`` declares as ``attribute``, empty
    if none; a string, or a name not in ``known``, is refused saying what was meant."""
    mapping = attribute in MAPPING_DECLARATIONS
    value = getattr(obj, attribute, None)
    if not value:
        return {} if mapping else frozenset()
    if isinstance(value, str) or not isinstance(value, Mapping if mapping else (set, frozenset, list, tuple)):
        example = "{name: ...}" if mapping else "{%r}" % value if isinstance(value, str) else "{'name', ...}"
        raise ImplementationError(f"{spec}: {attribute}={value!r} is a {type(value).__name__}; declare a "
                                  f"{'dict' if mapping else 'set'} of names: {attribute} = {example}")
    names = dict(value) if mapping else frozenset(value)
    unknown = sorted(set(names) - set(known))
    if unknown:
        guesses = {name: difflib.get_close_matches(name, list(known), n=1) for name in unknown}
        hint = ", ".join(f"{name!r} -> {guess[0]!r}" for name, guess in guesses.items() if guess)
        raise ImplementationError(f"{spec}: {attribute} names unknown {unknown}"
                                  + (f" (did you mean {hint}?)" if hint else "") + f"; known: {sorted(known)}")
    return names


def refuse_stray(obj: Any, spec: str) -> None:
    """Refuse declarations written at module level beside the object, where the kit does not read
    them (they would be silently ignored); declaring the attribute on the object settles it."""
    target = type(obj) if isinstance(obj, torch.nn.Module) else obj
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    if module is None:
        return
    stray = {name: vars(module)[name] for name in DECLARATIONS if name in vars(module) and not hasattr(obj, name)}
    if stray:
        name = getattr(target, "__name__", "cross_entropy")
        raise ImplementationError(
            f"{spec}: module {module.__name__} declares {', '.join(stray)} at module level, where the kit does not "
            f"read it: put it on the implementation: " + "; ".join(f"{name}.{attr} = {value!r}"
                                                                   for attr, value in stray.items()))


def read(obj: Any, form: str, spec: str) -> dict:
    """The declarations of ``obj`` (of ``form``), checked against the vocabulary and each other, as
    ``Implementation``'s fields; a name the kit does not know, or a declaration its form cannot
    make, raises ``ImplementationError`` saying what was meant."""
    unsupported = _declared_names(obj, "unsupported", FEATURES, spec)
    deviations = _declared_names(obj, "deviations", DEVIATIONS, spec)
    input_kind = getattr(obj, "input_kind", "logits")
    if input_kind not in INPUT_KINDS:
        raise ImplementationError(f"{spec}: input_kind={input_kind!r}; expected one of {INPUT_KINDS}")
    target_kind = getattr(obj, "target_kind", "index")
    if target_kind not in DECLARED_TARGET_KINDS:
        raise ImplementationError(f"{spec}: target_kind={target_kind!r}; expected one of {DECLARED_TARGET_KINDS}")
    variants = _declared_names(obj, "variants", SOFTMAX_VARIANTS if form in SOFTMAX_FORMS else VARIANTS, spec)
    conventions = {name: getattr(obj, name, values[0]) for name, values in SOFTMAX_CONVENTIONS.items()}
    for name, value in conventions.items():
        if value not in SOFTMAX_CONVENTIONS[name]:
            raise ImplementationError(f"{spec}: {name}={value!r}; expected one of {SOFTMAX_CONVENTIONS[name]}")
        if form not in SOFTMAX_FORMS and hasattr(obj, name):
            raise ImplementationError(f"{spec}: {name} is a softmax form's declaration, not a {form} loss's")
    returns = _declared_names(obj, "returns", AUXILIARIES, spec)
    differentiable = _declared_names(obj, "differentiable_returns", returns, spec)
    z_loss_weighting = getattr(obj, "z_loss_weighting", "unweighted")
    if differentiable - {"z_loss"}:
        raise ImplementationError(f"{spec}: differentiable_returns={sorted(differentiable)}: the kit judges the "
                                  "gradient of a returned z_loss only")
    if z_loss_weighting not in Z_LOSS_WEIGHTINGS:
        raise ImplementationError(f"{spec}: z_loss_weighting={z_loss_weighting!r}; expected one of "
                                  f"{Z_LOSS_WEIGHTINGS}")
    approximations = _declared_names(obj, "approximations", APPROXIMATIONS, spec)
    if any(not (isinstance(eps, (int, float)) and 0 <= eps < 1) for eps in approximations.values()):
        raise ImplementationError(f"{spec}: approximations={approximations!r}: each bound is a number in [0, 1)")
    memory = getattr(obj, "memory", None)
    if memory is not None and (memory not in MEMORY or form != "linear"):
        raise ImplementationError(f"{spec}: memory={memory!r}: a linear loss declares one of {sorted(MEMORY)}"
                                  + ("" if form == "linear" else f"; this is a {form} loss"))
    if form != "logits" and (input_kind != "logits" or target_kind != "index"):
        raise ImplementationError(f"{spec}: a {form} loss takes logits and index targets, not "
                                  f"input_kind={input_kind!r}, target_kind={target_kind!r}")
    if "simplex_gradient" in deviations and input_kind != "probs":
        raise ImplementationError(f"{spec}: deviations={{'simplex_gradient'}} is a probability input's, not "
                                  f"input_kind={input_kind!r}'s")
    if variants and input_kind != "logits":
        raise ImplementationError(f"{spec}: variants apply to logits, not input_kind={input_kind!r}")
    unsupported |= VARIANT_FEATURES - set(variants) - {f"return_{name}" for name in returns}
    if target_kind == "onehot":
        unsupported |= {"ignore_index"}
    if "ignore_index" in unsupported:
        unsupported |= {"custom_ignore_index"}
    return dict(unsupported=unsupported, input_kind=input_kind, target_kind=target_kind, deviations=deviations,
                variants=variants, z_loss_weighting=z_loss_weighting, returns=returns,
                differentiable_returns=differentiable, approximations=approximations, conventions=conventions,
                memory=memory)

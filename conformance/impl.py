"""Load the implementation under test and adapt it to one calling convention.

The object may be a function with ``torch.nn.functional.cross_entropy``'s signature, an
``nn.Module`` subclass constructed with ``nn.CrossEntropyLoss``'s keywords, or an instance of
one (the kit builds a fresh instance of its class for each set of options), or a form's
equivalent (``conformance.declarations``: what the object may declare about itself, its form
among them)."""
from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import declarations
from .declarations import ImplementationError
from .guards import GlobalState, ImplementationFault, calling
from .reference import Variant
from .softmax import SOFTMAX_FORMS, TORCH_SOFTMAX, SoftmaxVariant
from .vocabulary import FORMS, SOFTMAX_CONVENTIONS

__all__ = ["DEFAULT_SPEC", "Implementation", "ImplementationError", "LossOptions",
           "load_implementation", "implementation_of", "importable_name", "adapt"]

DEFAULT_SPEC = "torch.nn.functional:cross_entropy"

# What a run judges when no implementation is named: torch's own loss of each form it has
# (``conformance.defaults``); torch has no vocab-parallel loss with this signature.
DEFAULT_SPECS = {
    "logits": (DEFAULT_SPEC, "conformance.defaults:nll_loss"),
    "linear": ("torch.nn.functional:linear_cross_entropy", "conformance.defaults:chunked_linear_cross_entropy"),
    "softmax": ("torch.nn.functional:softmax",),
    "log_softmax": ("torch.nn.functional:log_softmax",),
}
# The families (suite modules) a default other than cross_entropy is judged on outside
# --conformance-deep, which judges it on every check: nll_loss meets torch's semantics there
# (weights, ignore_index inside and outside [0, C), K-dim, unbatched, each value and gradient
# against the truth), and the default run stays within 20 s on two cores (0.6 s for these).
DEFAULT_RUN_FAMILIES = {"conformance.defaults:nll_loss": ("features",)}
# The attributes ``--conformance-impl=module`` looks for: the one of them the module has.
DEFAULT_ATTRIBUTES = ("cross_entropy", "softmax", "log_softmax")

@dataclass(frozen=True)
class LossOptions:
    """The keywords of one call, as ``torch.nn.functional.cross_entropy`` takes them."""

    weight: Optional[Tensor] = None
    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    variant: Variant = Variant()  # the options beyond torch's (the implementation's keywords)

    def kwargs(self) -> dict[str, Any]:
        """torch's keywords (the variant travels apart: each implementation names it its own way)."""
        return {"weight": self.weight, "ignore_index": self.ignore_index, "reduction": self.reduction,
                "label_smoothing": self.label_smoothing}

    def describe(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        parts += [f"{name}={value!r}" for name, value in self.variant.options().items()]
        if self.weight is not None:
            parts.append("weight=<%d classes>" % self.weight.numel())
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Implementation:
    """The implementation under test, called as ``impl(input, target, options)``."""

    spec: str
    call: Callable[..., Tensor]
    unsupported: frozenset = field(default_factory=frozenset)
    input_kind: str = "logits"
    target_kind: str = "index"
    deviations: frozenset = field(default_factory=frozenset)
    framework: str = "torch"  # the framework of a loss adapted by conformance.adapters
    variants: dict = field(default_factory=dict)
    z_loss_weighting: str = "unweighted"
    returns: dict = field(default_factory=dict)
    differentiable_returns: frozenset = field(default_factory=frozenset)
    form: str = "logits"
    approximations: dict = field(default_factory=dict)
    conventions: dict = field(default_factory=lambda: {name: values[0] for name, values in SOFTMAX_CONVENTIONS.items()})
    memory: Optional[str] = None
    importable: bool = True   # load_implementation(spec) loads it (a closure from the hook cannot be)

    def load_code(self) -> list[str]:
        """The reproduce snippet's lines that load it as ``impl``: by its name, or, for an object
        that cannot be imported by name, through the hook that builds it."""
        wrap = "" if self.framework == "torch" else f", wrap=lambda obj: wrap(obj, {self.framework!r})"
        lines = [] if self.framework == "torch" else ["from conformance.adapters import wrap"]
        if self.importable:
            return lines + [f"impl = load_implementation({self.spec!r}{wrap})"]
        module, _, qualname = self.spec.partition(":")
        lines.append("from conformance.impl import implementation_of")
        if qualname.startswith("pytest_conformance_impl.<locals>."):
            return lines + [f"from {module} import pytest_conformance_impl   # {self.spec} cannot be imported by name",
                            f"impl = implementation_of(pytest_conformance_impl(config=None){wrap})   "
                            "# pass your pytest config if your hook reads it"]
        return lines + [f"obj = ...   # {self.spec} cannot be imported by name: the object your "
                        "pytest_conformance_impl returns", f"impl = implementation_of(obj{wrap})"]

    @property
    def name(self) -> str:
        """The attribute the spec names: the implementation's part of a check's id where a run
        judges several of one form (torch's linear loss and its chunked path)."""
        return self.spec.rpartition(":")[2]

    def __call__(self, input: Tensor, target: Tensor, options: LossOptions = LossOptions()) -> Tensor:
        """Call the implementation, holding it to its conduct: it returns a tensor on the input's
        device and leaves global torch state as it found it (see ``guards``)."""
        called = self._describe_call(input, target, options.describe())
        return self._tensor(self._guarded((input, target), self.keywords(options), called), input, called)

    def with_keywords(self, args: tuple, keywords: dict) -> Tensor:
        """The call with its keywords as the implementation names them, held to the same conduct:
        what a reproduce snippet's ``impl.call(x, t, ...)`` line (of any form: a linear loss's
        ``impl.call(hidden, linear_weight, target, ...)``) runs inside a check (``judge.snippet.Steps``)."""
        described = ", ".join([*(f"{tuple(a.shape)} {a.dtype}" if isinstance(a, Tensor) else repr(a) for a in args),
                               *(f"{name}=<{tuple(value.shape)}>" if isinstance(value, Tensor) else f"{name}={value!r}"
                                 for name, value in keywords.items())])
        called = f"on {described}"
        return self._tensor(self._guarded(args, keywords, called), args[0], called)

    def linear(self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Optional[Tensor],
               options: LossOptions = LossOptions()) -> Tensor:
        """Call a linear-form implementation (torch's ``linear_cross_entropy`` convention)."""
        called = (f"on input {tuple(input.shape)} {input.dtype}, linear_weight {tuple(linear_weight.shape)}, "
                  f"linear_bias {None if linear_bias is None else tuple(linear_bias.shape)}, target "
                  f"{tuple(target.shape)}, {options.describe()}")
        result = self._guarded((input, linear_weight, target), {"linear_bias": linear_bias, **self.keywords(options)},
                               called)
        return self._tensor(result, input, called)

    def vocab_parallel(self, input: Tensor, target: Tensor, *, group: Any, vocab_start: int, **options) -> Tensor:
        """Call a vocab-parallel implementation on this rank's class shard ``input`` (the rank
        group's executor calls it so, in every rank process), held to the same conduct as every
        other call: a tensor on the input's device, global torch state left as it was found."""
        call = LossOptions(**options)
        called = (f"on rank shard {tuple(input.shape)} {input.dtype} from class {vocab_start}, target "
                  f"{tuple(target.shape)}, {call.describe()}")
        result = self._guarded((input, target), {**self.keywords(call), "group": group, "vocab_start": vocab_start},
                               called)
        return self._tensor(result, input, called)

    def along(self, input: Tensor, dim: int, dtype: Optional[torch.dtype] = None, *,
              variant: SoftmaxVariant = TORCH_SOFTMAX) -> Tensor:
        """Call a softmax-form implementation (torch's ``softmax(input, dim, dtype=None)``; ``dtype``
        is passed only when given; the variant's options under the implementation's keywords, its
        mask in the implementation's ``mask_convention``), held to the same conduct as every other call."""
        options = variant.options()
        keywords = {} if dtype is None else {"dtype": dtype}
        keywords.update({self.variants[name]: ~value if name == "mask" and self.conventions["mask_convention"] == "drop"
                         else value for name, value in options.items()})
        taken = ", ".join(f"{name}=<{tuple(value.shape)}>" if name == "mask" else f"{name}={value!r}"
                          for name, value in options.items())
        called = (f"on input {tuple(input.shape)} {input.dtype}, dim={dim}" + (f", dtype={dtype}" if dtype else "")
                  + (f", {taken}" if taken else ""))
        return self._tensor(self._guarded((input, dim), keywords, called), input, called)

    def softmax_variant(self, variant: SoftmaxVariant) -> SoftmaxVariant:
        """A softmax problem's variant under this implementation's declared conventions."""
        return replace(variant, causal_alignment=self.conventions["causal_alignment"],
                       fully_masked_rows=self.conventions["fully_masked_rows"])

    def call_returning(self, auxiliary: str, input: Tensor, target: Tensor,
                       options: LossOptions = LossOptions()) -> tuple[Tensor, Tensor]:
        """Call it asking for ``auxiliary`` as well (its ``returns`` keyword set to True)."""
        called = self._describe_call(input, target, options.describe()) + f", {self.returns[auxiliary]}=True"
        result = self._guarded((input, target), {**self.keywords(options), self.returns[auxiliary]: True}, called)
        if isinstance(result, (tuple, list)):
            loss, aux = result[0], result[1]
        else:
            loss, aux = getattr(result, "loss", None), getattr(result, auxiliary, None)
        return self._tensor(loss, input, called), self._tensor(aux, input, called + f" ({auxiliary})")

    def keywords(self, options: LossOptions) -> dict[str, Any]:
        """The call's keywords: torch's, and the variant's under the implementation's names. A loss
        that declares label smoothing unsupported (``F.nll_loss``) is not given the keyword."""
        torch_keywords = {name: value for name, value in options.kwargs().items()
                          if not (name == "label_smoothing" and not value and name in self.unsupported)}
        return {**torch_keywords, **{self.variants[name]: value for name, value in options.variant.options().items()}}

    def reference_variant(self, options: LossOptions) -> Variant:
        """The problem's variant under this implementation's declared conventions."""
        return replace(options.variant, z_loss_weighting=self.z_loss_weighting)

    @staticmethod
    def _describe_call(input: Tensor, target: Tensor, options: str) -> str:
        return f"on input {tuple(input.shape)} {input.dtype}, target {tuple(target.shape)} {target.dtype}, {options}"

    def _guarded(self, args: tuple, keywords: dict, called: str) -> Any:
        state = GlobalState()
        called = f"{self.spec} {called}"
        try:
            with calling(called):
                result = self.call(*args, **keywords)
        except Exception as exc:
            state.restore_changes()
            exc.add_note(f"[conformance] raised by the implementation under test: {called}")
            raise
        state.check(f"during the call ({called})")
        return result

    def _tensor(self, result: Any, input: Tensor, called: str) -> Tensor:
        if not isinstance(result, Tensor):
            raise ImplementationFault(f"the implementation returned {type(result).__module__}."
                                      f"{type(result).__qualname__} {str(result)[:80]}, expected a torch.Tensor "
                                      f"({self.spec} {called})")
        if result.device != input.device:
            raise ImplementationFault(f"the implementation returned a tensor on {result.device} for an input on "
                                      f"{input.device} ({self.spec} {called})")
        return result

    def feed(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turn a case's logits and index target into what this implementation takes.

        Conversions run in float64 and round once to the case's dtype, so the reference is
        evaluated on exactly the values fed.
        """
        x = logits
        if self.input_kind != "logits":
            wide = logits.to(torch.float64).log_softmax(1 if logits.dim() > 1 else 0)
            x = (wide if self.input_kind == "log_probs" else wide.exp()).to(logits.dtype)
        t = target
        if self.target_kind == "onehot" and not target.is_floating_point():
            class_dim = 1 if logits.dim() > 1 else 0
            t = torch.nn.functional.one_hot(target, logits.shape[class_dim]).movedim(-1, class_dim).to(logits.dtype)
        return x, t


def _wrap_module_class(cls: type, form: str) -> Callable[..., Tensor]:
    if form in SOFTMAX_FORMS:
        def along(input, dim, dtype=None):
            return cls(dim=dim)(input if dtype is None else input.to(dtype))
        return along

    def call(input, target, **options):
        return cls(**options)(input, target)
    return call


def adapt(obj: Any, spec: str) -> Implementation:
    """Turn a user's function, module class or module instance into an ``Implementation``."""
    form = declarations.form_of(obj)
    if form not in FORMS:
        raise ImplementationError(f"{spec}: form={form!r}; expected one of {sorted(FORMS)}")
    if inspect.isclass(obj):
        if not issubclass(obj, torch.nn.Module):
            raise ImplementationError(f"{spec}: class {obj.__name__} is not a torch.nn.Module subclass")
        call = _wrap_module_class(obj, form)
    elif isinstance(obj, torch.nn.Module):
        call = _wrap_module_class(type(obj), form)
    elif callable(obj):
        call = obj
    else:
        raise ImplementationError(f"{spec}: {type(obj).__name__} object is not callable")
    return Implementation(spec=spec, call=call, form=form, framework=getattr(obj, "framework", "torch"),
                          **declarations.read(obj, form, spec))


def importable_name(obj: Any) -> Optional[str]:
    """``module:qualname`` of ``obj`` (of its class for a module instance, which the kit judges
    through its class) where importing that name gives the object back; None for a closure, a
    lambda, an object of ``__main__`` or one stored under another name."""
    target = type(obj) if isinstance(obj, torch.nn.Module) else obj
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or module == "__main__":
        return None
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is not None and found is target else None


def implementation_of(obj: Any, spec: Optional[str] = None,
                      wrap: Callable[[Any], Any] = lambda obj: obj) -> Implementation:
    """``obj`` (a hook's result, or what ``spec`` imported) adapted after ``wrap``, named where it is
    defined if that name imports it back, else by ``spec``; else by ``module:qualname`` all the
    same, marked as not importable (a closure: the reproduce snippet says how to build it)."""
    name = importable_name(obj) or spec
    importable = name is not None
    if not importable:
        target = obj if hasattr(obj, "__qualname__") else type(obj)
        name = f"{getattr(target, '__module__', None)}:{target.__qualname__}"
    declarations.refuse_stray(obj, name)
    return replace(adapt(wrap(obj), name), importable=importable)


def _default_attribute(module: Any, given: str) -> str:
    """The attribute ``--conformance-impl=module`` names: the one of ``DEFAULT_ATTRIBUTES`` the
    module has (a ``softmax`` or ``log_softmax`` counts where it is a softmax form, not a helper of
    another signature); a module with two must say which, once per form to judge both."""
    found = [name for name in DEFAULT_ATTRIBUTES if hasattr(module, name)
             and (name == DEFAULT_ATTRIBUTES[0] or declarations.form_of(getattr(module, name)) == name)]
    if len(found) > 1:
        every = " ".join(f"--conformance-impl={module.__name__}:{name}" for name in found)
        raise ImplementationError(f"{given}: module {module.__name__!r} has {' and '.join(found)}; name the one to "
                                  f"judge: --conformance-impl={module.__name__}:{found[0]} (or each, one per form: "
                                  f"{every})")
    return found[0] if found else DEFAULT_ATTRIBUTES[0]


def _import_object(spec: str) -> tuple[Any, str]:
    """What ``"pkg.module"`` (attribute ``DEFAULT_ATTRIBUTES``) or ``"pkg.module:attr"`` names, and
    the attribute."""
    module_name, _, attr = spec.partition(":")
    given = f"--conformance-impl={spec!r}"
    if not module_name:
        raise ImplementationError(f"{given}: expected 'package.module' or 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):  # a module it imports
            raise ImplementationError(f"{given}: importing {module_name!r} raised ModuleNotFoundError: {exc}") from None
        raise ImplementationError(f"{given}: cannot import module {module_name!r}: {exc} (pytest looks in the folder "
                                  f"it was started from and on sys.path: start it from the folder that holds "
                                  f"{exc.name!r}, or install your package: pip install -e .)") from None
    except Exception as exc:  # the user's module raised while importing
        raise ImplementationError(f"{given}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    attr = attr or _default_attribute(module, given)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImplementationError(f"{given}: module {module_name!r} has no attribute {attr!r}") from None
    return obj, attr


def load_implementation(spec: Optional[str] = None,
                        wrap: Callable[[Any], Any] = lambda obj: obj) -> Implementation:
    """Resolve ``"pkg.module"`` (attribute ``cross_entropy``, else ``softmax`` or ``log_softmax``) or
    ``"pkg.module:attr"`` (``attr`` may be dotted: ``Class.method``); ``wrap`` adapts the object first
    (a loss from another framework, ``conformance.adapters``)."""
    spec = spec or DEFAULT_SPEC
    obj, attr = _import_object(spec)
    return implementation_of(obj, f"{spec.partition(':')[0]}:{attr}", wrap)

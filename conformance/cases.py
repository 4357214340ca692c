"""Named input families. Each case is *defined by* a short plain-torch recipe, which the kit
executes to build the tensors, so the reproduction snippet printed on failure is exactly what
the check ran.

A recipe defines ``logits`` (already rounded to the case's dtype), ``target`` and ``weight``
(``None`` unless set), on the cpu; the case moves them to its device. Recipes seed the cpu's
generator, ``torch.default_generator.manual_seed(s)``: the same draws as ``torch.manual_seed(s)``,
which also queues a lazy seeding of every accelerator with a formatted stack (1.4 ms a call in
a pytest stack, 1.5 s of a default run).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import pytest
import torch
from torch import Tensor

from .impl import LossOptions
from .vocabulary import DTYPES, REDUCTIONS, dtype_name

__all__ = ["Case", "LinearCase", "Problem", "linear_case", "linear_problem_case", "problem", "from_recipe", "built",
           "on_device", "in_layout_of",
           "well_conditioned", "IDLE_FILLS", "ZERO_WEIGHT_FILLS", "idle_fill",
           "document_example", "upstream_recipe", "UPSTREAM_KINDS", "LOGIT_DISTRIBUTIONS",
           "logits_lines"]


@dataclass(frozen=True)
class Case:
    """One problem: its family, the recipe that built it, and the tensors on their device."""

    family: str
    recipe: str
    device: str
    logits: Tensor
    target: Tensor
    weight: Optional[Tensor]

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    @property
    def positions(self) -> tuple:
        """The shape of the per-position loss (the input's shape without the class dimension)."""
        shape = tuple(self.logits.shape)
        return shape[:1] + shape[2:] if len(shape) > 1 else ()

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.logits.shape) or "scalar"
        return f"case={self.family} shape={shape} dtype={dtype_name(self.dtype)} device={self.device}"


@dataclass(frozen=True)
class LinearCase:
    """A linear-CE problem: hidden states ``(N, H)``, the classifier weight ``(V, H)`` and bias
    (or ``None``), index targets and class weights, built by its recipe like a ``Case``, and
    which of the three inputs are trainable (require grad)."""

    family: str
    recipe: str
    device: str
    hidden: Tensor
    linear_weight: Tensor
    linear_bias: Optional[Tensor]
    target: Tensor
    weight: Optional[Tensor]
    requires_grad: tuple = ("input", "linear_weight", "linear_bias")

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def positions(self) -> tuple:
        return tuple(self.target.shape)

    def describe(self) -> str:
        (n, h), v = self.hidden.shape, self.linear_weight.shape[0]
        trainable = "" if len(self.requires_grad) == 3 else f" requires_grad={'+'.join(self.requires_grad)}"
        return (f"case={self.family} N={n} H={h} V={v} bias={self.linear_bias is not None}{trainable} "
                f"dtype={dtype_name(self.dtype)} device={self.device}")


@dataclass(frozen=True)
class Problem:
    """One call, whole (torch OpInfo's ``SampleInput``): the case's tensors, the loss options, the
    recipe of the upstream gradient backward is fed (``None``: forward only) and its kind
    (``UPSTREAM_KINDS``; empty for a recipe of the check's own), and a note for the verdict.
    Checks pass it around instead of its parts."""

    case: Case
    options: LossOptions = LossOptions()
    upstream: Optional[str] = None
    note: str = ""
    upstream_kind: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return self.case.dtype

    @property
    def device(self) -> str:
        return self.case.device

    @property
    def positions(self) -> tuple:
        return self.case.positions

    def call_options(self) -> LossOptions:
        """The call's keywords, with a fresh copy of the case's class weights: a loss that writes
        into the weights it is handed spoils neither the case nor the truth."""
        weight = None if self.case.weight is None else self.case.weight.clone()
        return replace(self.options, weight=weight)

    def upstream_gradient(self) -> Tensor:
        """The upstream gradient its recipe builds, on the case's device."""
        return built(self.upstream, "grad", self.device)

    def describe(self) -> str:
        """The params line of a failure: the case and every option of the call, the class weights
        (which travel on the case), the ignore_index the target holds and the upstream gradient."""
        parts = [self.case.describe(), replace(self.options, weight=self.case.weight).describe()]
        if self.options.ignore_index == LossOptions.ignore_index and not self.case.target.is_floating_point() and \
                bool((self.case.target == LossOptions.ignore_index).any()):
            parts.append(f"ignore_index={LossOptions.ignore_index}")
        if self.upstream is None:
            parts.append("forward only")
        else:
            parts.append(f"upstream={self.upstream_kind or 'its own (see reproduce)'}")
        return ", ".join(parts) + self.note

    __repr__ = describe

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """Hypothesis prints drawn values with this, not field by field (the recipe is in the judge's message)."""
        printer.text(self.describe())


def problem(case: Case, *, upstream: Optional[str] = "random", note: str = "", **options) -> Problem:
    """A problem on ``case`` with ``LossOptions(**options)`` and an upstream gradient of kind
    ``upstream`` (``UPSTREAM_KINDS``, or ``None`` for a forward-only problem)."""
    base = Problem(case=case, options=LossOptions(**options), note=note)
    if upstream is None:
        return base
    return replace(base, upstream=upstream_recipe(upstream, base.options.reduction, base.positions, case.dtype),
                   upstream_kind=upstream)


def sweep(values, *, deep: bool = False, features: Optional[dict] = None) -> list:
    """Parameters ``(value, dtype, reduction)`` of a boundary sweep: each value once, with a dtype
    and a reduction taken in turn (the default run covers each boundary once), or, ``deep``, with
    every dtype and reduction. ``features`` maps a value to the feature names it needs."""
    combos = [(v, d, r) for v in values for d in DTYPES for r in REDUCTIONS] if deep else \
        [(v, DTYPES[i % len(DTYPES)], REDUCTIONS[(i // len(DTYPES) + i) % 3])
         for i, v in enumerate(values)]
    features = features or {}
    label = (lambda v: "x".join(map(str, v))) if values and isinstance(values[0], tuple) else str
    return [pytest.param(v, d, r, id=f"{label(v)}-{dtype_name(d)}-{r}",
                         marks=[pytest.mark.feature(*features[v])] if v in features else [])
            for v, d, r in combos]


@functools.lru_cache(maxsize=1024)
def _compiled(recipe: str):
    """A recipe's code, compiled once: a check builds its case again from the recipe (a second
    call on fresh inputs, a snippet's steps), and a hypothesis recipe's literals take long to parse."""
    return compile(recipe, "<string>", "exec")


def _execute(recipe: str, device: str, names: tuple, optional: tuple) -> dict:
    """Run ``recipe`` and move what it defined (``names``; ``optional`` ones default to None) to ``device``."""
    namespace: dict = {"torch": torch, **dict.fromkeys(optional)}
    exec(_compiled(recipe), namespace)
    return {name: None if namespace[name] is None else namespace[name].to(device) for name in names + optional}


def built(code: str, name: str, device: str) -> Tensor:
    """The tensor ``name`` that ``code`` (a snippet's line, such as a direction or a tangent) builds, on ``device``."""
    return _execute(code, device, (name,), ())[name]


def on_device(t: Tensor, device: str) -> Tensor:
    """``t`` on ``device`` with the same storage, strides and offset.

    ``Tensor.to`` keeps strides only for dense layouts; a sliced view or a stride-0 tensor
    arrives contiguous on another device, so the whole storage is moved and viewed again.
    """
    if t.device.type == torch.device(device).type:
        return t
    size = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (size,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def in_layout_of(values: Tensor, layout: Tensor) -> Tensor:
    """``values`` copied into a fresh storage shaped like ``layout``'s (same strides and offset)."""
    if values.stride() == layout.stride() and values.storage_offset() == layout.storage_offset():
        return values
    storage = torch.zeros(layout.untyped_storage().nbytes() // layout.element_size(), dtype=values.dtype,
                          device=values.device)
    view = storage.as_strided(layout.shape, layout.stride(), layout.storage_offset())
    view.copy_(values)
    return view


def from_recipe(family: str, recipe: str, device: str) -> Case:
    """Execute ``recipe`` and wrap what it defined."""
    return Case(family=family, recipe=recipe.strip(), device=device,
                **_execute(recipe, device, ("logits", "target"), ("weight",)))


def linear_case(family: str, recipe: str, device: str) -> LinearCase:
    """Execute a linear recipe: it defines ``hidden``, ``linear_weight``, ``target`` and
    optionally ``linear_bias`` and ``weight``, on the cpu."""
    return LinearCase(family=family, recipe=recipe.strip(), device=device,
                      **_execute(recipe, device, ("hidden", "linear_weight", "target"), ("linear_bias", "weight")))


def linear_problem_case(n: int, hidden_size: int, vocab: int, dtype: torch.dtype, device: str, *, seed: int = 0,
                        family: str, bias: bool = True, positive: bool = False, confident: bool = False,
                        weight: bool = False, ignored: bool = False, huge_ignored: bool = False) -> LinearCase:
    """Hidden states ``(n, hidden_size)`` and a classifier of ``vocab`` classes, standard-normal
    (the weight scaled by ``1/sqrt(H)``, so logits are about unit-sized; the bias by 1/4).

    ``positive``: hidden states of one sign (a ReLU's output), so no product of a weight or bias
    gradient cancels another and an accumulator's rounding shows instead of averaging out;
    ``confident``: each row's weight is aligned with its hidden state (cut-cross-entropy's tests
    plant them so), its target logit about 12 above the rest; ``ignored``: a masked prompt (the
    first 30 % of the rows) and every 7th row after the middle, so chunks of rows keep different
    numbers of positions; ``weight``: class weights in [0.25, 1.25); ``huge_ignored``: the ignored
    rows' hidden states scaled to a norm of a quarter of the dtype's largest magnitude (1e30 at
    most), so their logits are huge but finite (a padded position's activations blown up; NaN ones
    are left out: ``dW = dlogits^T h`` is NaN through any matmul).
    """
    lines = [f"g = torch.Generator().manual_seed({seed})",
             f"hidden = torch.randn({n}, {hidden_size}, dtype=torch.float64, generator=g)" + ".abs()" * positive,
             f"linear_weight = torch.randn({vocab}, {hidden_size}, dtype=torch.float64, generator=g) "
             f"/ {hidden_size ** 0.5!r}"]
    if confident:
        lines += [f"target = torch.randperm({vocab}, generator=g)[:{n}]",
                  "linear_weight[target] += 12 * hidden / hidden.square().sum(1, keepdim=True)"]
    else:
        lines.append(f"target = torch.randint({vocab}, ({n},), generator=g)")
    if bias:
        lines.append(f"linear_bias = torch.randn({vocab}, dtype=torch.float64, generator=g) / 4")
    if ignored:
        lines += [f"target[:{n * 3 // 10}] = -100", f"target[{n // 2}::7] = -100"]
    if huge_ignored:
        lines += ["ignored = target == -100", "hidden[ignored] *= "
                  f"{min(1e30, torch.finfo(dtype).max / 4)!r} / hidden[ignored].norm(dim=1, keepdim=True)"]
    if weight:
        lines.append(f"weight = torch.rand({vocab}, dtype=torch.float64, generator=g) + 0.25")
    lines.append("hidden, linear_weight, linear_bias, weight = (None if t is None else "
                 f"t.to(torch.{dtype_name(dtype)}) for t in (hidden, linear_weight, linear_bias, weight))")
    return linear_case(family, "\n".join(lines), device)


def well_conditioned(n: int, c: int, dtype: torch.dtype, device: str, *, seed: int = 0, scale: float = 1.0,
                     shift: float = 0.0, extra_dims: tuple = (), weight: bool = False,
                     ignore_index: Optional[int] = None, soft_target: bool = False,
                     family: str = "well_conditioned") -> Case:
    """Standard-normal logits shaped ``(n, c, *extra_dims)``; each index target drawn among its
    row's classes with logit <= 0.

    The filter keeps the loss at least as large as the logsumexp, so the subtraction
    ``lse - z_y`` is well conditioned (see ``tolerance``): accuracy on ill-conditioned, confident
    rows is checked by its own family, not hidden in a looser bound here. Options: class weights
    in [0.25, 1.25), every third position's target set to ``ignore_index``, or a probability
    target (a softmax of scaled noise) instead of indices; ``shift`` is added to every logit after
    the targets are drawn.
    """
    name = dtype_name(dtype)
    shape = (n, c, *extra_dims)
    lines = [f"torch.default_generator.manual_seed({seed})",
             f"logits = (torch.randn({shape}, dtype=torch.float64) * {scale}).to(torch.{name})"]
    if soft_target:
        lines.append(f"target = torch.softmax(torch.randn({shape}, dtype=torch.float64) * 2, 1).to(torch.{name})")
    else:
        lines.append(f"target = torch.where(logits <= 0, torch.rand({shape}), -1.0).argmax(1)")
    if shift:
        lines.append(f"logits = (logits.double() + {shift!r}).to(torch.{name})")
    if ignore_index is not None:
        lines.append(f"target.view(-1)[::3] = {ignore_index}")
    if weight:
        lines.append(f"weight = (torch.rand({c}, dtype=torch.float64) + 0.25).to(torch.{name})")
    return from_recipe(family, "\n".join(lines), device)


def ignore_index_for(impl) -> Optional[int]:
    """-100 where the implementation takes ignore_index, else None: checks about something else
    (a buffer, a caller's tensor) feed ignored positions only to a loss that can take them, not
    to one without ignore_index (a one-hot target has none)."""
    return None if "ignore_index" in impl.unsupported else -100


# What a row that counts for nothing holds (test_idle_rows, test_vocab_parallel): masked classes, the
# dtype's largest finite magnitude and, in an ignored row, +inf and NaN.
IDLE_FILLS = ("-inf", "huge", "+inf", "nan")
# A zero class weight is a weight, not a mask: ``0 * (-log p)`` has a value only where ``log p`` is
# defined, so a zero-weight row holds finite and -inf logits only (an ignored row holds any).
ZERO_WEIGHT_FILLS = IDLE_FILLS[:2]


def idle_fill(fill: str, dtype: torch.dtype) -> str:
    """The code of ``fill`` (``IDLE_FILLS``) in ``dtype``: ``huge`` is 1e30 where the dtype holds it."""
    named = {"-inf": "float('-inf')", "+inf": "float('inf')", "nan": "float('nan')"}
    return named[fill] if fill in named else repr(min(1e30, torch.finfo(dtype).max))


def document_example(dtype: torch.dtype, device: str) -> Case:
    """The seed document's second example: a linear model's logits, batch 64, 8 inputs, 4 classes."""
    recipe = f"""
x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
target = torch.randint(4, size=(64,), generator=torch.Generator().manual_seed(2))
torch.default_generator.manual_seed(0)
model = torch.nn.Linear(8, 4)
logits = model(x).detach().to(torch.{dtype_name(dtype)})
"""
    return from_recipe("document_example", recipe, device)


UPSTREAM_KINDS = ("random", "scalar", "expanded")


def upstream_recipe(kind: str, reduction: str, shape: tuple, dtype: torch.dtype) -> str:
    """Code for the upstream gradient ``grad`` that the gradient checks feed to backward.

    ``random``: non-uniform per position (reduction none) or a scalar != 1; ``scalar``: a
    scalar != 1 broadcast to every position; ``expanded``: the stride-0 tensor that
    ``loss.sum().backward()`` produces.
    """
    name = dtype_name(dtype)
    if kind == "expanded" or (kind == "scalar" and reduction == "none"):
        value = "1.0" if kind == "expanded" else "1.75"
        return f"grad = torch.tensor({value}, dtype=torch.{name}).expand({tuple(shape)})"
    if reduction != "none":
        return f"grad = torch.tensor(1.75, dtype=torch.{name})"
    return (f"grad = (torch.rand({tuple(shape)}, dtype=torch.float64, "
            f"generator=torch.Generator().manual_seed(7)) * 2 + 0.25).to(torch.{name})")


# The logit distributions a case draws (a factor of the covering design, conformance.design).
LOGIT_DISTRIBUTIONS = {
    "normal": "standard-normal logits",
    "llm": "an LLM's head: one to three large logits and a Zipf-like tail whose classes, each below 1e-5, "
           "hold about a tenth of the probability (vocabularies of 32000 and more)",
    "peaked": "a sure head: one logit 15 above standard-normal ones",
    "flat": "an untrained head: logits within about 0.01 of each other",
    "capped": "a soft-capped head (Gemma 2's final cap 30): logits crowding near +-30",
    "offset": "a large common offset: normal logits times 3, less 1e4 (all negative; float32 and float64)",
}
# LLM-shaped rows: the share of the probability the tail holds, and the exponent of its Zipf-like decay
# (class of rank r: logit -0.6 log r), which keeps its largest probabilities near 1e-3 at 32000 classes
# and leaves most of its mass in classes below 1e-5 (tests/test_design.py proves it for every dtype).
LLM_TAIL_MASS = 0.15
LLM_TAIL_DECAY = 0.6


def logits_lines(distribution: str, n: int, c: int) -> list:
    """Recipe lines that draw float64 logits ``z`` of shape ``(n, c)`` from ``distribution``
    (``LOGIT_DISTRIBUTIONS``) with the generator ``g`` the recipe seeded."""
    normal = f"torch.randn({n}, {c}, dtype=torch.float64, generator=g)"
    if distribution == "normal":
        return [f"z = {normal}"]
    if distribution == "peaked":
        return [f"z = {normal}", f"z[torch.arange({n}), torch.randint({c}, ({n},), generator=g)] += 15.0"]
    if distribution == "flat":
        return [f"z = {normal} * 0.01"]
    if distribution == "capped":
        return [f"z = 30.0 * torch.tanh({normal} * 2.0)"]
    if distribution == "offset":
        return [f"z = {normal} * 3.0 - 1e4"]
    if distribution == "llm":
        return [f"rank = torch.stack([torch.randperm({c}, generator=g) for _ in range({n})]).double() + 1  # shuffled",
                f"z = -{LLM_TAIL_DECAY} * rank.log() + 0.1 * {normal}",
                f"head = rank <= 1 + torch.randint(3, ({n}, 1), generator=g)  # one to three large logits",
                "tail = z.masked_fill(head, float('-inf')).logsumexp(1, keepdim=True)",
                f"share = ({1 - LLM_TAIL_MASS!r} / {LLM_TAIL_MASS!r} / head.sum(1, keepdim=True)).log()",
                f"z = torch.where(head, tail + share + 0.1 * {normal}, z) + 3.0"]
    raise ValueError(f"distribution={distribution!r}; expected one of {sorted(LOGIT_DISTRIBUTIONS)}")

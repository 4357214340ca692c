"""Hypothesis strategies for cross-entropy problems, built on ``cases``.

A drawn problem is a ``cases.Problem`` on a case whose recipe holds its tensors as literals, so the
reproduction snippet a failing check prints is exact and needs nothing but torch and the kit.
Problems stay small (at most ``max_elements`` logits, 200 by default) to keep that snippet short;
shrinking makes it shorter still.

Logit families (``LOGIT_FAMILIES``), all in float64 before the recipe rounds them to the dtype:

``moderate``   uniform in [-4, 4]: the well-conditioned bulk;
``huge``       uniform in [-1e4, 1e4]: softmax saturates, most probabilities underflow;
``shifted``    moderate plus one common shift of 100 to 10000 in either direction;
``masked``     moderate with some non-target entries set to ``-inf`` (padding / causal masks);
``confident``  moderate with each kept target logit raised to its row's max + 10 (the rows
               where torch's CPU half loss returns -0.0, ``known_failures``;
               https://github.com/linkedin/Liger-Kernel/issues/1268).

Example::

    @given(data=st.data())
    def test_matches(judge, device, dtype, data):
        problem = data.draw(strategies.problems(dtype=dtype, device=device))
        judge.conforms(problem)
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import cases
from .vocabulary import FEATURES, REDUCTIONS, REFERENCE_TARGET_KINDS, dtype_name

__all__ = ["LOGIT_FAMILIES", "Problem", "shapes", "logits", "index_targets",
           "ignore_indices", "probability_targets", "class_weights", "reductions", "label_smoothings", "problems"]

LOGIT_FAMILIES = ("moderate", "huge", "shifted", "masked", "confident")

MODERATE = 4.0
HUGE = 1e4                 # far from overflow in every dtype (float16's largest is 65504)
SHIFT_RANGE = (100, 10_000)
CONFIDENT_MARGIN = 10.0
MIN_WEIGHT, MAX_WEIGHT = 0.25, 2.0   # positive: a zero weight sum makes the mean 0/0

# Families whose construction needs each position's target class.
_NEEDS_INDEX_TARGET = ("masked", "confident")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(f"{name}={value!r}: expected an int >= {minimum}")


def _check_shape(shape: object) -> tuple[int, ...]:
    if (not isinstance(shape, tuple) or len(shape) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape) or shape[1] < 1):
        raise InvalidArgument(f"shape={shape!r}: expected a tuple (N, C, *extra) of ints >= 0 with C >= 1")
    return shape


def _check_choices(name: str, values: Iterable[str], known: Sequence[str]) -> tuple[str, ...]:
    values = tuple(values)
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise InvalidArgument(f"{name}={values!r}: expected a non-empty selection of {known}")
    return values


def _position_rows(shape: tuple[int, ...]) -> list[list[int]]:
    """For each position, in the order the reference flattens them, the flat indices (row-major
    over ``(N, C, *extra)``) of its ``C`` logits."""
    n, c, inner = shape[0], shape[1], math.prod(shape[2:])
    return [[(i * c + k) * inner + j for k in range(c)] for i in range(n) for j in range(inner)]


def _positions(shape: tuple[int, ...]) -> int:
    return shape[0] * math.prod(shape[2:])


# The composites are decorated once, here: ``st.composite`` reads its function's source
# (inspect.getsource), which took 1.2 s of a default run when each call made a new one.
@st.composite
def _draw_shape(draw, min_batch: int, max_batch: int, min_classes: int, max_classes: int, max_extra_dims: int,
                max_extra_size: int, max_elements: int) -> tuple:
    batch_floor = max(min_batch, 1)
    c = draw(st.integers(min_classes, min(max_classes, max_elements // batch_floor)))
    extra: list[int] = []
    for _ in range(draw(st.integers(0, max_extra_dims))):
        room = max_elements // (batch_floor * c * math.prod(extra))
        extra.append(draw(st.integers(1, max(1, min(max_extra_size, room)))))
    room = max_elements // (c * math.prod(extra))
    n = draw(st.integers(min_batch, max(min_batch, min(max_batch, room))))
    return (n, c, *extra)


def shapes(*, max_elements: int = 200, min_batch: int = 0, max_batch: int = 16, min_classes: int = 1,
           max_classes: int = 16, max_extra_dims: int = 2, max_extra_size: int = 4) -> st.SearchStrategy[tuple]:
    """Input shapes ``(N, C, *extra)`` with ``N * C * prod(extra) <= max_elements``.

    The defaults reach ``N = 0`` (an empty batch), ``N = 1``, ``C = 1`` and up to two extra
    (K-dimensional) dimensions.
    """
    _check_int("max_elements", max_elements, minimum=1)
    _check_int("min_batch", min_batch, minimum=0)
    _check_int("max_batch", max_batch, minimum=min_batch)
    _check_int("min_classes", min_classes, minimum=1)
    _check_int("max_classes", max_classes, minimum=min_classes)
    _check_int("max_extra_dims", max_extra_dims, minimum=0)
    _check_int("max_extra_size", max_extra_size, minimum=1)
    if max(min_batch, 1) * min_classes > max_elements:
        raise InvalidArgument(f"min_batch={min_batch} and min_classes={min_classes} exceed "
                              f"max_elements={max_elements}")
    return _draw_shape(min_batch, max_batch, min_classes, max_classes, max_extra_dims, max_extra_size,
                       max_elements)


@st.composite
def _draw_logits(draw, shape: tuple, family: str, target: Optional[Sequence[int]], ignore_index: int,
                 dominant_class: bool, element: st.SearchStrategy[float]) -> list:
    count = math.prod(shape)
    values = draw(st.lists(element, min_size=count, max_size=count))
    if family == "shifted":
        shift = draw(st.integers(*SHIFT_RANGE)) * draw(st.sampled_from((1, -1)))
        values = [v + shift for v in values]
    for position, row in enumerate(_position_rows(shape)):
        kept = target is not None and target[position] != ignore_index
        if family == "confident" and kept:
            values[row[target[position]]] = max(values[i] for i in row) + CONFIDENT_MARGIN
        top = sorted(row, key=values.__getitem__, reverse=True)[:2]
        if not dominant_class and len(top) == 2:
            values[top[1]] = values[top[0]]
        if family == "masked":
            protected = {row[target[position]]} if kept else {top[0]}
            if not dominant_class:
                protected |= set(top)
            mask = draw(st.lists(st.booleans(), min_size=len(row), max_size=len(row)))
            for i, masked in zip(row, mask):
                if masked and i not in protected:
                    values[i] = -math.inf
    return values


def logits(shape: tuple, *, family: str = "moderate", target: Optional[Sequence[int]] = None,
           ignore_index: int = -100, dominant_class: bool = True) -> st.SearchStrategy[list]:
    """Flat float64 logit values (row-major over ``shape``) of one ``family``.

    ``masked`` and ``confident`` shape each row around its position's target class, so they need
    ``target`` (one class per position, ``ignore_index`` for ignored positions). With
    ``dominant_class=False`` each position's two largest logits are made equal, so no class has a
    probability above 1/2 (the rows float16/bfloat16 are judged on in test_properties, see
    ``no_dominant_class`` there); ``confident`` rows are dominated by construction.
    """
    shape = _check_shape(shape)
    if family not in LOGIT_FAMILIES:
        raise InvalidArgument(f"family={family!r}: expected one of {LOGIT_FAMILIES}")
    if family in _NEEDS_INDEX_TARGET:
        if target is None or len(target) != _positions(shape):
            raise InvalidArgument(f"family={family!r} needs target=<one class index per position "
                                  f"({_positions(shape)})>, got {target!r}")
    if family == "confident" and not dominant_class:
        raise InvalidArgument("family='confident' has a dominant class by construction; dominant_class=False "
                              "contradicts it")
    if not isinstance(ignore_index, int):
        raise InvalidArgument(f"ignore_index={ignore_index!r}: expected an int")
    bound = HUGE if family == "huge" else MODERATE
    element = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return _draw_logits(shape, family, target, ignore_index, dominant_class, element)


def ignore_indices(num_classes: int) -> st.SearchStrategy[int]:
    """torch's default -100, -1 (which must not wrap to the last class) or a class inside
    ``[0, C)`` (pytorch#69339, #91383)."""
    _check_int("num_classes", num_classes, minimum=1)
    return st.sampled_from((-100, -1)) | st.integers(0, num_classes - 1)


def index_targets(shape: tuple, *, ignore_index: Optional[int] = None) -> st.SearchStrategy[list]:
    """One class index per position (flattened ``(N, *extra)``); with ``ignore_index`` some
    positions take that value."""
    shape = _check_shape(shape)
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise InvalidArgument(f"ignore_index={ignore_index!r}: expected an int or None")
    element = st.integers(0, shape[1] - 1)
    if ignore_index is not None:
        element = element | st.just(ignore_index)
    return st.lists(element, min_size=_positions(shape), max_size=_positions(shape))


def probability_targets(shape: tuple) -> st.SearchStrategy[list]:
    """Flat float64 scores (row-major over ``shape``); the recipe turns them into a distribution
    per position with ``softmax(1)``."""
    shape = _check_shape(shape)
    count = math.prod(shape)
    return st.lists(st.floats(-MODERATE, MODERATE, allow_nan=False), min_size=count, max_size=count)


def class_weights(num_classes: int) -> st.SearchStrategy[list]:
    """Class weights in [0.25, 2]."""
    _check_int("num_classes", num_classes, minimum=1)
    return st.lists(st.floats(MIN_WEIGHT, MAX_WEIGHT), min_size=num_classes, max_size=num_classes)


def reductions(*, exclude: Iterable[str] = ()) -> st.SearchStrategy[str]:
    """``"none"``, ``"mean"`` or ``"sum"``, less those in ``exclude``."""
    exclude = tuple(exclude)
    if any(r not in REDUCTIONS for r in exclude) or set(exclude) >= set(REDUCTIONS):
        raise InvalidArgument(f"exclude={exclude!r}: expected a proper subset of {REDUCTIONS}")
    return st.sampled_from([r for r in REDUCTIONS if r not in exclude])


def label_smoothings() -> st.SearchStrategy[float]:
    """0 (no smoothing) or a value in [2^-20, 1]. A smoothing below float32's normal range (a
    subnormal like 2e-311, which hypothesis does draw) is 0 to an implementation computing in
    float32 but not to the float64 reference: where a probability underflows to 0 the truth is
    then ``eps/C * log 0 = inf``. No one trains with such a value, so it is not drawn."""
    return st.just(0.0) | st.floats(2.0 ** -20, 1.0)


def _literal(values: Sequence[float]) -> str:
    """A Python list literal that rebuilds ``values`` exactly (``repr`` of a float round-trips)."""
    def one(v: float) -> str:
        return repr(v) if math.isfinite(v) else ("torch.inf" if v > 0 else "-torch.inf")
    return "[" + ", ".join(one(v) for v in values) + "]"


def _dims(shape: Sequence[int]) -> str:
    return ", ".join(str(s) for s in shape)


# A drawn problem is a ``cases.Problem``: the case, the loss options, a random upstream gradient
# and the logit family in its note.
Problem = cases.Problem


@st.composite
def _draw_problem(draw, shape_strategy: st.SearchStrategy[tuple], families: tuple, target_kinds: tuple,
                  exclude: frozenset, dominant_class: bool, excluded_reductions: list, name: str,
                  device: str) -> Problem:
    shape = draw(shape_strategy)
    family = draw(st.sampled_from(families))
    kinds = [k for k in target_kinds if k == "index" or family not in _NEEDS_INDEX_TARGET]
    target_kind = draw(st.sampled_from(kinds))
    c, position_shape = shape[1], (shape[0], *shape[2:])
    ignore_index = -100
    if target_kind == "index":
        ignoring = "ignore_index" not in exclude and draw(st.booleans())
        if ignoring:   # -100 alone where only the default ignore_index is supported
            ignore_index = -100 if "custom_ignore_index" in exclude else draw(ignore_indices(c))
        target = draw(index_targets(shape, ignore_index=ignore_index if ignoring else None))
        values = draw(logits(shape, family=family, target=target, ignore_index=ignore_index,
                             dominant_class=dominant_class))
        target_line = (f"target = torch.tensor({_literal(target)}, dtype=torch.int64)"
                       f".reshape({_dims(position_shape)})")
    else:
        values = draw(logits(shape, family=family, dominant_class=dominant_class))
        scores = draw(probability_targets(shape))
        target_line = (f"target = torch.tensor({_literal(scores)}, dtype=torch.float64).reshape({_dims(shape)})"
                       f".softmax(1).to(torch.{name})")
    lines = [f"logits = torch.tensor({_literal(values)}, dtype=torch.float64).reshape({_dims(shape)})"
             f".to(torch.{name})", target_line]
    if "weight" not in exclude and draw(st.booleans()):
        lines.append(f"weight = torch.tensor({_literal(draw(class_weights(c)))}, dtype=torch.float64)"
                     f".to(torch.{name})")
    else:
        lines.append("weight = None")   # the snippet passes weight=weight
    smoothing = 0.0
    if family != "masked" and "label_smoothing" not in exclude:
        smoothing = draw(label_smoothings())
    case = cases.from_recipe(f"hypothesis-{family}", "\n".join(lines), device)
    return cases.problem(case, ignore_index=ignore_index, reduction=draw(reductions(exclude=excluded_reductions)),
                         label_smoothing=smoothing, upstream="random", note=f", hypothesis family={family}")


def problems(*, dtype: torch.dtype, device: str = "cpu", families: Iterable[str] = LOGIT_FAMILIES,
             target_kinds: Iterable[str] = REFERENCE_TARGET_KINDS, exclude: Iterable[str] = (),
             dominant_class: bool = True, max_elements: int = 200) -> st.SearchStrategy[Problem]:
    """Whole problems: shape, logits, target, weights, ignore_index, smoothing and reduction.

    ``exclude`` names features (``vocabulary.FEATURES``) the problems must not use, typically an
    implementation's ``unsupported`` set: ``weight``, ``ignore_index``, ``custom_ignore_index``
    (only -100 is drawn), ``label_smoothing``, ``probability_target``, ``kdim``, ``empty_batch``,
    ``reduction_none``, ``reduction_sum``; other names are accepted and do not affect the draw.
    ``masked`` and ``confident`` rows take index targets; ``masked`` rows take no label smoothing
    (a smoothed target puts weight on a ``-inf`` logit: the loss is infinite). ``dominant_class``
    is passed to ``logits``. Each problem carries a random upstream gradient and its logit family
    in its note and in its case's family (``hypothesis-<family>``).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgument(f"dtype={dtype!r}: expected a floating torch.dtype")
    if not isinstance(device, str):
        raise InvalidArgument(f"device={device!r}: expected a device name such as 'cpu'")
    if not isinstance(dominant_class, bool):
        raise InvalidArgument(f"dominant_class={dominant_class!r}: expected a bool")
    families = _check_choices("families", families, LOGIT_FAMILIES)
    target_kinds = _check_choices("target_kinds", target_kinds, REFERENCE_TARGET_KINDS)
    exclude = frozenset(exclude)
    if exclude - FEATURES.keys():
        raise InvalidArgument(f"exclude={sorted(exclude)!r}: unknown features {sorted(exclude - FEATURES.keys())}")
    if "probability_target" in exclude:
        target_kinds = tuple(k for k in target_kinds if k != "probs")
    if not target_kinds:
        raise InvalidArgument("target_kinds: only 'probs' was selected but probability_target is excluded")
    if "index" not in target_kinds:
        families = tuple(f for f in families if f not in _NEEDS_INDEX_TARGET)
        if not families:
            raise InvalidArgument(f"families: {_NEEDS_INDEX_TARGET} need index targets, which are not selected")
    if not dominant_class and families == ("confident",):
        raise InvalidArgument("families=('confident',) with dominant_class=False draws nothing")
    if not dominant_class:
        families = tuple(f for f in families if f != "confident")
    excluded_reductions = [r for r in ("none", "sum") if f"reduction_{r}" in exclude]
    name = dtype_name(dtype)
    shape_strategy = shapes(max_elements=max_elements, min_batch=1 if "empty_batch" in exclude else 0,
                            max_extra_dims=0 if "kdim" in exclude else 2)
    return _draw_problem(shape_strategy, families, target_kinds, exclude, dominant_class, excluded_reductions,
                         name, device)

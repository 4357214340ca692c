"""Views and layouts: the loss and its gradient do not depend on how the inputs sit in memory.

Non-contiguous logits (a transposed buffer, every other class, every other row, a row offset),
a target that is a view at a storage offset (flash-attention bedf8774: ``labels[1:]`` is not
16-byte aligned), channels-last K-dimensional input and a stride-0 (expanded) upstream gradient
for the K-dimensional ``reduction='none'`` loss (quack 3e97238). In every layout the input's
whole storage, including the elements the view skips, must be bitwise unchanged after forward
and after backward (Liger#272, unsloth#5002).
"""
import dataclasses

import pytest
import torch

from conformance import cases
from conformance.forms import logits as logits_form
from conformance.guards import storage_bits
from conformance.judge.snippet import Steps
from conformance.vocabulary import REDUCTIONS, dtype_name

# Each recipe builds ``logits`` in the layout named, with targets drawn among logits <= 0 as in
# cases.well_conditioned (the filter keeps half-precision rows well conditioned, see tolerance).
LOGIT_LAYOUTS = {
    "transposed": ("logits = torch.randn(({c}, {n}), dtype=torch.float64).to(torch.{name}).t()",
                   "logits.t().is_contiguous()"),
    "every other class": ("logits = torch.randn(({n}, 2 * {c}), dtype=torch.float64).to(torch.{name})[:, ::2]",
                          "logits.stride() == (2 * {c}, 2)"),
    "every other row": ("logits = torch.randn((2 * {n}, {c}), dtype=torch.float64).to(torch.{name})[::2]",
                        "logits.stride() == (2 * {c}, 1)"),
    "row offset": ("logits = torch.randn(({n} + 1, {c}), dtype=torch.float64).to(torch.{name})[1:]",
                   "logits.storage_offset() == {c}"),
}
WELL_CONDITIONED_TARGET = "target = torch.where(logits <= 0, torch.rand(logits.shape), -1.0).argmax(1)"


def _layout_case(family: str, recipe: str, device: str, expected_layout: str) -> cases.Case:
    """The case built on the cpu by its recipe, moved to ``device`` in the same layout.

    ``expected_layout`` is an expression over ``logits`` and ``target`` that must hold: it guards
    the recipe against silently building a contiguous tensor.
    """
    case = cases.from_recipe(family, recipe, "cpu")
    names = {"torch": torch, "logits": case.logits, "target": case.target}
    assert eval(expected_layout, names), f"recipe does not build the layout {expected_layout!r}:\n{recipe}"
    return dataclasses.replace(case, device=device, logits=cases.on_device(case.logits, device),
                               target=cases.on_device(case.target, device))


# The snippet's names of the tensors the caller owns.
OWNED = {"logits": "x", "target": "t", "upstream gradient": "grad"}
STORAGE_BITS = "from conformance.guards import storage_bits"


def _other_layout(t: torch.Tensor, layout: torch.Tensor) -> bool:
    return t.stride() != layout.stride() or t.storage_offset() != layout.storage_offset()


def check_in_layout(impl, judge, problem: cases.Problem) -> None:
    """Value and gradient against the float64 truth, and every tensor the caller owns bitwise
    unchanged, in the case's layout.

    The implementation is fed the case's tensors in their layouts (``Steps`` copies them whole
    storage and all; an input-kind conversion is copied back into the logits' layout), and the
    upstream gradient keeps its recipe's strides.
    """
    __tracebackhide__ = True
    case = problem.case
    backward = "backward" not in impl.unsupported
    upstream = problem.upstream
    if not backward:
        problem = dataclasses.replace(problem, upstream=None)
    steps = Steps(impl, problem)
    # An input-kind conversion (contiguous) copied into the logits' layout; the upstream gradient
    # moved to the device in its recipe's layout.
    relayout = [v for v, given in (("x", "logits"), ("t", "target")) if steps[v] is not steps[given]
                and steps[v].shape == case.logits.shape and _other_layout(steps[v], case.logits)]
    moved = case.device != "cpu"
    used = ["in_layout_of"] * bool(relayout) + ["on_device"] * moved
    steps(*[f"from conformance.cases import {', '.join(used)}"] * bool(used),
          *(f"{v} = in_layout_of({v}, logits)" for v in relayout), upstream,
          *[f"grad = on_device(grad, {case.device!r})"] * moved)
    # declared: then the logits' elements may change, their storage's others not
    declared = judge.declares("overwrites_logits")
    skipped = {v: ", skipped_only=True" * (declared and v == "x") for v in OWNED.values()}
    steps(STORAGE_BITS, f"{', '.join(v + '0' for v in OWNED.values())} = "
                        f"{', '.join(f'storage_bits({v}{skipped[v]})' for v in OWNED.values())}")

    def unchanged(stage: str) -> None:
        for name, v in OWNED.items():
            tensor = steps[v]
            if not torch.equal(storage_bits(tensor, skipped_only=bool(skipped[v])), steps[v + "0"]):
                where = "outside the view " * bool(skipped[v])
                judge.fail("inputs unmodified", problem, f"the storage of the {name} (shape {tuple(tensor.shape)}, "
                           f"strides {tensor.stride()}, offset {tensor.storage_offset()}) changed {where}during "
                           f"{stage}", show=steps.show(f"torch.equal(storage_bits({v}{skipped[v]}), {v}0)", "True"))

    call = logits_form.call_code(impl, problem)
    if backward:
        steps("x.requires_grad_()", f"loss = {call}")
    else:
        steps(f"with torch.no_grad():\n    loss = {call}")
    unchanged("forward")
    if backward:
        steps("loss.backward(grad)")
        unchanged("backward")
    pristine_x, pristine_t = steps.fed
    out = logits_form.Outcome(input=pristine_x, target=pristine_t, loss=steps["loss"].detach(),
                              grad=steps["x"].grad if backward else None, upstream=steps["grad"] if backward else None)
    judge.value(problem, out, steps["truth"], show=steps.show(logits_form.VALUE.actual, logits_form.VALUE.expected))
    if backward:
        judge.gradient(problem, out, steps["truth"],
                       show=steps.show(logits_form.GRADIENT.actual, logits_form.GRADIENT.expected))


@pytest.mark.feature("noncontiguous")
@pytest.mark.parametrize("layout", LOGIT_LAYOUTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_noncontiguous_logits(impl, judge, device, dtype, reduction, layout, seed):
    n, c = 9, 7
    build, expected = LOGIT_LAYOUTS[layout]
    recipe = "\n".join([f"torch.default_generator.manual_seed({seed})", build.format(n=n, c=c, name=dtype_name(dtype)),
                        WELL_CONDITIONED_TARGET])
    case = _layout_case(f"layout: {layout}", recipe, device, expected.format(c=c))
    check_in_layout(impl, judge, cases.problem(case, reduction=reduction, upstream="random", note=f", layout={layout}"))


@pytest.mark.feature("noncontiguous")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_target_view_at_storage_offset(impl, judge, device, dtype, reduction, seed):
    """``labels[1:]``: the target starts 8 bytes into its storage (flash-attention bedf8774)."""
    n, c = 11, 6
    recipe = f"""
torch.default_generator.manual_seed({seed})
logits = torch.randn(({n}, {c}), dtype=torch.float64).to(torch.{dtype_name(dtype)})
labels = torch.where(logits <= 0, torch.rand(logits.shape), -1.0).argmax(1)
labels = torch.cat([torch.tensor([{c - 1}]), labels])
target = labels[1:]
"""
    case = _layout_case("layout: target view", recipe, device, "target.storage_offset() == 1")
    check_in_layout(impl, judge, cases.problem(case, reduction=reduction, upstream="random",
                                               note=", target=labels[1:]"))


# Targets in the layouts a data pipeline hands over: every other label of a packed buffer, one
# label broadcast to every row (stride 0), a soft target that is a transposed view.
TARGET_LAYOUTS = {
    "strided": ("labels = torch.where(logits.repeat(2, 1) <= 0, torch.rand(2 * {n}, {c}), -1.0).argmax(1)\n"
                "target = labels[::2]", "target.stride() == (2,)", []),
    "expanded": ("target = torch.tensor([{c} - 2]).expand({n})", "target.stride() == (0,)", []),
    "transposed probability target": (
        "target = torch.softmax(torch.randn(({c}, {n}), dtype=torch.float64) * 2, 0).to(torch.{name}).t()",
        "not target.is_contiguous()", ["probability_target"]),
}


@pytest.mark.parametrize("layout", [pytest.param(name, marks=pytest.mark.feature("noncontiguous", *features))
                                    for name, (_, _, features) in TARGET_LAYOUTS.items()])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_target_layouts(impl, judge, device, dtype, reduction, layout, seed):
    """The target read through its strides, never as if contiguous from its storage."""
    n, c = 9, 7
    build, expected, _ = TARGET_LAYOUTS[layout]
    recipe = "\n".join([f"torch.default_generator.manual_seed({seed})",
                        f"logits = torch.randn(({n}, {c}), dtype=torch.float64).to(torch.{dtype_name(dtype)})",
                        build.format(n=n, c=c, name=dtype_name(dtype))])
    case = _layout_case(f"layout: target {layout}", recipe, device, expected)
    check_in_layout(impl, judge, cases.problem(case, reduction=reduction, upstream="random",
                                               note=f", target layout={layout}"))


KDIM_SHAPE = (3, 5, 4, 2)    # (N, C, H, W)
KDIM_LAYOUTS = {
    "contiguous": ("", "logits.is_contiguous()"),
    "channels_last": (".contiguous(memory_format=torch.channels_last)",
                      "logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous()"),
}
# Channels-last input with every reduction, and the stride-0 upstream gradient that
# loss.sum().backward() produces for reduction='none' (quack 3e97238), in both layouts.
KDIM_CASES = [
    *(pytest.param("channels_last", r, "random", marks=pytest.mark.feature("noncontiguous")) for r in REDUCTIONS),
    pytest.param("channels_last", "none", "expanded", marks=pytest.mark.feature("noncontiguous", "backward")),
    pytest.param("contiguous", "none", "expanded", marks=pytest.mark.feature("backward")),
]


@pytest.mark.feature("kdim")
@pytest.mark.parametrize("layout,reduction,upstream", KDIM_CASES)
def test_kdim_layouts(impl, judge, device, dtype, layout, reduction, upstream, seed):
    """(N, C, H, W) input, channels-last (the class dimension innermost in memory) or contiguous,
    with a per-position or stride-0 upstream gradient."""
    suffix, expected = KDIM_LAYOUTS[layout]
    recipe = "\n".join([
        f"torch.default_generator.manual_seed({seed})",
        f"logits = torch.randn({KDIM_SHAPE}, dtype=torch.float64).to(torch.{dtype_name(dtype)}){suffix}",
        WELL_CONDITIONED_TARGET])
    case = _layout_case(f"layout: K-dim {layout}", recipe, device, expected)
    check_in_layout(impl, judge, cases.problem(case, reduction=reduction, upstream=upstream,
                                               note=f", layout={layout}"))

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
from conformance.forms import Show
from conformance.forms import logits as logits_form
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


def _storage_bytes(t: torch.Tensor, *, skipped_only: bool = False) -> torch.Tensor:
    """A copy of the tensor's whole storage as bytes, the elements its view skips included;
    ``skipped_only``: with the view's own elements zeroed (what a loss that declares
    ``overwrites_logits`` must leave alone)."""
    copy = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage().clone())
    if skipped_only:
        copy.as_strided(t.shape, t.stride(), t.storage_offset()).zero_()
    return copy.view(torch.uint8)


def _on_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """``t`` on ``device`` with the same storage, strides and offset.

    ``Tensor.to`` keeps strides only for dense layouts; a sliced view or a stride-0 tensor
    arrives contiguous on another device, so the whole storage is moved and viewed again.
    """
    if t.device.type == torch.device(device).type:
        return t
    size = t.untyped_storage().nbytes() // t.element_size()
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), 0, (size,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def _like(values: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """``values`` copied into a fresh storage shaped like ``layout``'s (same strides and offset)."""
    if values.stride() == layout.stride() and values.storage_offset() == layout.storage_offset():
        return values
    storage = torch.zeros(layout.untyped_storage().nbytes() // layout.element_size(), dtype=values.dtype,
                          device=values.device)
    view = storage.as_strided(layout.shape, layout.stride(), layout.storage_offset())
    view.copy_(values)
    return view


def _layout_case(family: str, recipe: str, device: str, expected_layout: str) -> cases.Case:
    """The case built on the cpu by its recipe, moved to ``device`` in the same layout.

    ``expected_layout`` is an expression over ``logits`` and ``target`` that must hold: it guards
    the recipe against silently building a contiguous tensor.
    """
    case = cases.from_recipe(family, recipe, "cpu")
    names = {"torch": torch, "logits": case.logits, "target": case.target}
    assert eval(expected_layout, names), f"recipe does not build the layout {expected_layout!r}:\n{recipe}"
    return dataclasses.replace(case, device=device, logits=_on_device(case.logits, device),
                               target=_on_device(case.target, device))


_SNIPPET_NAMES = {"logits": "x", "target": "t", "upstream gradient": "grad"}


def _storage_show(impl, problem: cases.Problem, upstream: str, name: str, stage: str) -> Show:
    """The snippet's lines comparing the whole storage of the tensor ``name`` before and after
    ``stage`` (forward or backward); ``upstream``: the upstream gradient's recipe."""
    tensor = _SNIPPET_NAMES[name]
    steps = [upstream, "storage = lambda v: v.untyped_storage().cpu().tolist()", f"before = storage({tensor})"]
    if problem.upstream is not None:
        steps.append("x.requires_grad_()")
    steps.append(f"loss = {logits_form.call_code(impl, problem)}")
    if stage == "backward":
        steps.append("loss.backward(grad)")
    return Show(f"storage({tensor}) == before", "True", tuple(steps))


def check_in_layout(impl, judge, problem: cases.Problem) -> None:
    """Value and gradient against the float64 truth, and every tensor the caller owns bitwise
    unchanged, in the case's layout.

    The implementation is fed the case's tensors themselves (an input-kind conversion is copied
    back into the logits' layout), and the upstream gradient keeps its recipe's strides.
    """
    __tracebackhide__ = True
    case = problem.case
    x, t = impl.feed(case.logits, case.target)
    x = _like(x, case.logits)
    if t is not case.target and t.shape == case.logits.shape:
        t = _like(t, case.logits)
    backward = "backward" not in impl.unsupported
    leaf = x.detach().requires_grad_(backward)
    pristine_x, pristine_t = x.detach().clone(), t.detach().clone()
    namespace: dict = {"torch": torch}
    upstream = problem.upstream
    exec(upstream, namespace)
    grad = _on_device(namespace["grad"], case.device)
    if not backward:
        problem = dataclasses.replace(problem, upstream=None)
    owned = {"logits": leaf, "target": t, "upstream gradient": grad}
    # declared: then the logits' elements may change, their storage's others not
    declared = "overwrites_logits" in impl.deviations
    skipped_only = {name: declared and name == "logits" for name in owned}
    before = {name: _storage_bytes(tensor, skipped_only=skipped_only[name]) for name, tensor in owned.items()}

    def unchanged(stage: str) -> None:
        for name, tensor in owned.items():
            if not torch.equal(_storage_bytes(tensor, skipped_only=skipped_only[name]), before[name]):
                where = "outside the view " * skipped_only[name]
                judge.fail("inputs unmodified", problem, f"the storage of the {name} (shape {tuple(tensor.shape)}, "
                           f"strides {tensor.stride()}, offset {tensor.storage_offset()}) changed {where}during "
                           f"{stage}", show=_storage_show(impl, problem, upstream, name, stage))

    with torch.set_grad_enabled(backward):
        loss = impl(leaf, t, problem.call_options())
    unchanged("forward")
    if backward:
        loss.backward(grad)
        unchanged("backward")
    out = logits_form.Outcome(input=pristine_x, target=pristine_t, loss=loss.detach(),
                              grad=leaf.grad if backward else None, upstream=grad if backward else None)
    ev = logits_form.truth(impl, problem, out)
    judge.value(problem, out, ev)
    if backward:
        judge.gradient(problem, out, ev)


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

"""Structure: shapes and dtypes per reduction, untouched inputs, and the invariants of the loss."""
import math

import pytest
import torch

from conformance import cases
from conformance.forms import Show
from conformance.forms import logits as logits_form
from conformance.forms.protocol import upstream_lines
from conformance.guards import bits
from conformance.judge.snippet import IMPORT_BITS, Steps
from conformance.vocabulary import REDUCTIONS, dtype_name


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_output_shape_and_dtype(impl, judge, device, dtype, reduction, seed):
    """Every call already checks that the result is a tensor on the input's device (``Implementation``)."""
    problem = cases.problem(cases.well_conditioned(5, 6, dtype, device, seed=seed), reduction=reduction,
                            upstream=None)
    out = logits_form.forward(impl, problem)
    expected_shape = problem.case.target.shape if reduction == "none" else torch.Size([])
    if out.loss.shape != expected_shape:
        judge.fail("output shape", problem, f"loss shape {tuple(out.loss.shape)}, expected {tuple(expected_shape)}",
                   show=Show("tuple(loss.shape)", repr(tuple(expected_shape))))
    if out.loss.dtype != dtype:
        judge.deviation("float32_output", problem, out.loss.dtype)
        judge.fail("output dtype", problem, f"loss dtype {out.loss.dtype}, expected {dtype}",
                   show=Show("loss.dtype", f"'{dtype}'"))


def test_implementation_writes_nothing(impl, judge, device, dtype, seed, capfd):
    """A debug print left in a loss floods every training log and, on a GPU, synchronises the
    device each step: forward and backward write nothing to stdout or stderr."""
    backward = "backward" not in impl.unsupported
    problem = cases.problem(cases.well_conditioned(6, 5, dtype, device, seed=seed), reduction="mean",
                            upstream="scalar" if backward else None)
    capfd.readouterr()
    if backward:
        logits_form.forward_backward(impl, problem)
    else:
        logits_form.forward(impl, problem)
    out, err = capfd.readouterr()
    for stream, text in (("stdout", out), ("stderr", err)):
        if text:
            first = text.strip().splitlines()[0][:120] if text.strip() else repr(text[:40])
            judge.fail("writes nothing", problem, f"one forward and backward wrote {len(text)} characters to "
                       f"{stream}, starting: {first}", show=Show("'(the output above)'", "'nothing'"))


@pytest.mark.feature("backward")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inputs_never_modified(impl, judge, device, dtype, reduction, seed):
    problem = cases.problem(cases.well_conditioned(9, 7, dtype, device, seed=seed,
                                                   ignore_index=cases.ignore_index_for(impl)),
                            reduction=reduction, upstream="expanded" if reduction == "none" else "scalar")
    steps = Steps(impl, problem, truth=False)
    steps(IMPORT_BITS, "x0, t0 = bits(x), bits(t)", "x.requires_grad_()",
          f"loss = {logits_form.call_code(impl, problem)}")
    after_forward = (bits(steps["x"]), bits(steps["t"]))
    steps(*upstream_lines(problem.upstream, device), "loss.backward(grad)")
    after_backward = (bits(steps["x"]), bits(steps["t"]))
    changed = [(name, stage) for stage, (xa, ta) in (("forward", after_forward), ("backward", after_backward))
               for name, now, then in (("logits", xa, steps["x0"]), ("target", ta, steps["t0"]))
               if not torch.equal(now, then)]
    if changed:
        judge.deviation("overwrites_logits", problem, {name for name, _ in changed})
        judge.fail("input unmodified", problem, "modified: " + ", ".join(f"the {name} during {stage}"
                                                                         for name, stage in changed),
                   show=steps.show("torch.equal(bits(x), x0) and torch.equal(bits(t), t0)", "True"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_is_nonnegative(impl, judge, device, dtype, reduction, seed):
    problem = cases.problem(cases.well_conditioned(33, 5, dtype, device, seed=seed), reduction=reduction,
                            upstream=None)
    out = logits_form.forward(impl, problem)
    negative = (out.loss < 0).nonzero()
    if len(negative):
        index = tuple(negative[0].tolist())
        judge.fail("loss >= 0", problem, f"loss{list(index)} = {out.loss[index].item()!r} < 0",
                   show=Show("loss.min()", "'>= 0'"))


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5])
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_uniform_logits_give_log_c(impl, judge, device, dtype, num_classes, value):
    recipe = f"""
logits = torch.full((4, {num_classes}), {value}, dtype=torch.{dtype_name(dtype)})
target = torch.tensor([0, 1, {num_classes - 1}, 1])
"""
    problem = cases.problem(cases.from_recipe("uniform", recipe, device), reduction="none", upstream=None)
    out = logits_form.forward(impl, problem)
    ev = logits_form.truth(impl, problem, out)
    judge.value(problem, out, ev, identity="uniform logits give log C",
                expected=torch.full_like(ev.loss, math.log(num_classes)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.input_kind("logits")
def test_row_shift_changes_nothing(impl, judge, device, dtype, reduction, seed):
    """Logits on a 1/8 grid in [-4, 4] shifted by 16 stay exact in every dtype, so both calls see
    the same mathematical problem (shift invariance is a property of logits)."""
    name = dtype_name(dtype)
    base = f"""
g = torch.Generator().manual_seed({seed + 11})
grid = torch.randint(-32, 33, (6, 9), generator=g) / 8
target = torch.randint(9, (6,), generator=g)
"""
    plain = cases.from_recipe("grid", base + f"logits = grid.to(torch.{name})", device)
    shifted = cases.from_recipe("grid_shifted", base + f"logits = (grid + 16).to(torch.{name})", device)
    plain, shifted = (cases.problem(c, reduction=reduction, upstream=None) for c in (plain, shifted))
    out_plain, out_shifted = logits_form.forward(impl, plain), logits_form.forward(impl, shifted)
    ev_plain, ev_shifted = logits_form.truth(impl, plain, out_plain), logits_form.truth(impl, shifted, out_shifted)
    judge.within("adding a constant to a row changes nothing", shifted, out_shifted.loss, out_plain.loss.double(),
                 "value pair", show=Show("loss{at}", "'the unshifted loss'"), ev=ev_plain, other=ev_shifted)


@pytest.mark.feature("backward", "reduction_sum")
@pytest.mark.input_kind("logits")
def test_argmax_of_logits_is_argmax_of_softmax(impl, judge, device, dtype, seed):
    """softmax(z) = dL/dz + y for reduction='sum' with a unit upstream: its argmax is z's, on every
    row where the gradient's tolerance cannot reorder the two largest probabilities (in bfloat16
    a gradient near -1 is rounded by up to 2^-9, more than some gaps between probabilities)."""
    case = cases.well_conditioned(40, 12, dtype, device, seed=seed)
    problem = cases.Problem(case, cases.LossOptions(reduction="sum"),
                            upstream=f"grad = torch.tensor(1.0, dtype=torch.{dtype_name(dtype)})")
    out = logits_form.forward_backward(impl, problem)
    softmax = out.grad.double().cpu() + torch.nn.functional.one_hot(case.target.cpu(), 12)
    ev = logits_form.truth(impl, problem, out)
    p = ev.log_probs.exp()
    bound = judge.bound("gradient", dtype, ev=ev, grad_output=out.upstream).expand(p.shape)
    top = p.argmax(1, keepdim=True)
    decisive = (p - bound).gather(1, top)[:, 0] > (p + bound).scatter(1, top, -torch.inf).amax(1)
    mismatched = (softmax.argmax(1) != top[:, 0]) & decisive
    if bool(mismatched.any()):
        row = int(mismatched.nonzero()[0])
        judge.fail("argmax of logits is argmax of softmax", problem,
                   f"row {row}: argmax softmax (from the gradient) = {int(softmax[row].argmax())}, "
                   f"argmax logits = {int(case.logits[row].argmax())}",
                   show=Show(f"(x.grad[{row}] + torch.nn.functional.one_hot(t, 12)[{row}]).argmax()",
                             f"logits[{row}].argmax()"))


def test_outputs_are_not_reused_between_calls(impl, judge, device, dtype, seed):
    """A second call (on other logits of the same shape) must not overwrite the first call's result
    (aliased output buffers, Liger#507)."""
    problem = cases.problem(cases.well_conditioned(8, 5, dtype, device, seed=seed), reduction="none", upstream=None)
    steps = Steps(impl, problem, truth=False)
    steps(IMPORT_BITS, f"first = {logits_form.call_code(impl, problem)}", "kept = bits(first)",
          f"second = {logits_form.call_code(impl, problem, x='x * 2')}")
    first, second = steps["first"], steps["second"]
    if first.data_ptr() == second.data_ptr() or not torch.equal(bits(first), steps["kept"]):
        judge.fail("outputs are not reused between calls", problem,
                   "the second call's result overwrote the first call's",
                   show=steps.show("torch.equal(bits(first), kept) and first.data_ptr() != second.data_ptr()", "True"))

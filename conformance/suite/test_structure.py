"""Structure: shapes and dtypes per reduction, untouched inputs, and the invariants of the loss."""
import math

import pytest
import torch

from conformance import cases, run, tolerance
from conformance.impl import LossOptions

REDUCTIONS = ["none", "mean", "sum"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A bitwise copy (NaN-safe equality)."""
    return t.detach().clone().contiguous().view(torch.uint8) if t.numel() else t.detach().clone()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_output_shape_and_dtype(impl, judge, device, dtype, reduction, seed):
    """Every call already checks that the result is a tensor on the input's device (``Implementation``)."""
    case = cases.well_conditioned(5, 6, dtype, device, seed=seed)
    options = LossOptions(reduction=reduction)
    out = run.forward(impl, case, options)
    expected_shape = case.target.shape if reduction == "none" else torch.Size([])
    if out.loss.shape != expected_shape:
        judge.fail("output shape", f"loss shape {tuple(out.loss.shape)}, expected {tuple(expected_shape)}",
                   case=case, options=options)
    if out.loss.dtype != dtype:
        judge.fail("output dtype", f"loss dtype {out.loss.dtype}, expected {dtype}", case=case, options=options)


def test_implementation_writes_nothing(impl, judge, device, dtype, seed, capfd):
    """A debug print left in a loss floods every training log and, on a GPU, synchronises the
    device each step: forward and backward write nothing to stdout or stderr."""
    case = cases.well_conditioned(6, 5, dtype, device, seed=seed)
    options = LossOptions(reduction="mean")
    x, t = impl.feed(case.logits, case.target)
    capfd.readouterr()
    loss = impl(x.detach().requires_grad_(), t, options)
    if "backward" not in impl.unsupported:
        loss.backward()
    out, err = capfd.readouterr()
    for stream, text in (("stdout", out), ("stderr", err)):
        if text:
            first = text.strip().splitlines()[0][:120] if text.strip() else repr(text[:40])
            judge.fail("writes nothing", f"one forward and backward wrote {len(text)} characters to {stream}, "
                       f"starting: {first}", case=case, options=options)


@pytest.mark.feature("backward")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inputs_never_modified(impl, judge, device, dtype, reduction, seed):
    ignore = None if impl.target_kind == "onehot" else -100
    case = cases.well_conditioned(9, 7, dtype, device, seed=seed, ignore_index=ignore)
    options = LossOptions(reduction=reduction)
    x, t = impl.feed(case.logits, case.target)
    before = (_bits(x), _bits(t))
    leaf = x.detach().requires_grad_()
    leaf_before = _bits(leaf)
    loss = impl(leaf, t, options)
    after_forward = (_bits(leaf), _bits(t))
    loss.backward(torch.ones_like(loss))
    after_backward = (_bits(leaf), _bits(t))
    for stage, (xa, ta) in (("forward", after_forward), ("backward", after_backward)):
        if not torch.equal(xa, leaf_before) or not torch.equal(before[0], leaf_before):
            judge.fail("input unmodified", f"the logits were modified during {stage}", case=case, options=options)
        if not torch.equal(ta, before[1]):
            judge.fail("input unmodified", f"the target was modified during {stage}", case=case, options=options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_is_nonnegative(impl, judge, device, dtype, reduction, seed):
    case = cases.well_conditioned(33, 5, dtype, device, seed=seed)
    options = LossOptions(reduction=reduction)
    out = run.forward(impl, case, options)
    negative = (out.loss < 0).nonzero()
    if len(negative):
        index = tuple(negative[0].tolist())
        judge.fail("loss >= 0", f"loss{list(index)} = {out.loss[index].item()!r} < 0", case=case, options=options)


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5])
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_uniform_logits_give_log_c(impl, judge, device, dtype, num_classes, value):
    recipe = f"""
logits = torch.full((4, {num_classes}), {value}, dtype=torch.{cases.dtype_name(dtype)})
target = torch.tensor([0, 1, {num_classes - 1}, 1])
"""
    case = cases.from_recipe("uniform", recipe, device)
    options = LossOptions(reduction="none")
    out = run.forward(impl, case, options)
    ev = run.truth(impl, out, case, options)
    log_c = torch.full_like(ev.loss, math.log(num_classes))
    judge.close("uniform logits give log C", out.loss, log_c, tolerance.value_bound(ev, dtype),
                case=case, options=options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_shift_changes_nothing(impl, judge, device, dtype, reduction, seed):
    """Logits on a 1/8 grid in [-4, 4] shifted by 16 stay exact in every dtype, so both calls see
    the same mathematical problem."""
    if impl.input_kind != "logits":
        pytest.skip("shift invariance is a property of logits")
    name = cases.dtype_name(dtype)
    base = f"""
g = torch.Generator().manual_seed({seed + 11})
grid = torch.randint(-32, 33, (6, 9), generator=g) / 8
target = torch.randint(9, (6,), generator=g)
"""
    plain = cases.from_recipe("grid", base + f"logits = grid.to(torch.{name})", device)
    shifted = cases.from_recipe("grid_shifted", base + f"logits = (grid + 16).to(torch.{name})", device)
    options = LossOptions(reduction=reduction)
    out_plain, out_shifted = run.forward(impl, plain, options), run.forward(impl, shifted, options)
    ev_plain, ev_shifted = run.truth(impl, out_plain, plain, options), run.truth(impl, out_shifted, shifted, options)
    bound = tolerance.value_bound(ev_plain, dtype) + tolerance.value_bound(ev_shifted, dtype)
    judge.close("adding a constant to a row changes nothing", out_shifted.loss, out_plain.loss.double(), bound,
                case=shifted, options=options)


@pytest.mark.feature("backward")
def test_argmax_of_logits_is_argmax_of_softmax(impl, judge, device, dtype, seed):
    """softmax(z) = dL/dz + y for reduction='sum' with a unit upstream: its argmax is z's, on every
    row where the gradient's tolerance cannot reorder the two largest probabilities (in bfloat16
    a gradient near -1 is rounded by up to 2^-9, more than some gaps between probabilities)."""
    if impl.input_kind != "logits":
        pytest.skip("the softmax is recovered from the gradient with respect to logits")
    case = cases.well_conditioned(40, 12, dtype, device, seed=seed)
    options = LossOptions(reduction="sum")
    out = run.forward_backward(impl, case, options, cases.upstream_recipe("scalar", "sum", (), dtype)
                               .replace("1.75", "1.0"))
    softmax = out.grad.double().cpu() + torch.nn.functional.one_hot(case.target.cpu(), 12)
    ev = run.truth(impl, out, case, options)
    p, bound = ev.log_probs.exp(), tolerance.grad_bound(ev, out.upstream, dtype).expand(ev.log_probs.shape)
    top = p.argmax(1, keepdim=True)
    decisive = (p - bound).gather(1, top)[:, 0] > (p + bound).scatter(1, top, -torch.inf).amax(1)
    mismatched = (softmax.argmax(1) != top[:, 0]) & decisive
    if bool(mismatched.any()):
        row = int(mismatched.nonzero()[0])
        judge.fail("argmax of logits is argmax of softmax",
                   f"row {row}: argmax softmax (from the gradient) = {int(softmax[row].argmax())}, "
                   f"argmax logits = {int(case.logits[row].argmax())}", case=case, options=options)


def test_outputs_are_not_reused_between_calls(impl, judge, device, dtype, seed):
    """A second call must not overwrite the first call's result (aliased output buffers, Liger#507)."""
    first_case = cases.well_conditioned(8, 5, dtype, device, seed=seed)
    second_case = cases.well_conditioned(8, 5, dtype, device, seed=seed + 1)
    options = LossOptions(reduction="none")
    first = run.forward(impl, first_case, options).loss
    kept = _bits(first)
    second = run.forward(impl, second_case, options).loss
    if first.data_ptr() == second.data_ptr() or not torch.equal(_bits(first), kept):
        judge.fail("outputs are not reused between calls",
                   "the second call's result overwrote the first call's", case=second_case, options=options)

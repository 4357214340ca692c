"""torch's semantics, exactly: class weights, ignore_index, label smoothing, probability targets,
K-dimensional and unbatched inputs, edge cases and invalid inputs."""
import math

import pytest
import torch

from conformance import cases, run, tolerance
from conformance.guards import ImplementationFault
from conformance.impl import LossOptions

REDUCTIONS = ["none", "mean", "sum"]


@pytest.mark.feature("weight")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_weights(judge, device, dtype, reduction, seed):
    """Each position scaled by weight[target]; mean divides by the kept positions' weight sum."""
    case = cases.well_conditioned(13, 6, dtype, device, seed=seed, weight=True)
    judge.conforms(case, LossOptions(reduction=reduction))


# -1 must not wrap into the last class's weight; 2 lies inside [0, C) (pytorch#69339, #91383).
IGNORE_INDICES = [-100, -1, 2]


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignore_index", IGNORE_INDICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index(judge, device, dtype, reduction, ignore_index, weighted, seed):
    """Ignored positions: zero loss, exactly zero gradient, out of the mean's denominator."""
    case = cases.well_conditioned(14, 5, dtype, device, seed=seed, weight=weighted, ignore_index=ignore_index)
    options = LossOptions(reduction=reduction, ignore_index=ignore_index)
    out = judge.conforms(case, options)
    if out.grad is not None:
        ignored = case.target == ignore_index
        leaked = out.grad[ignored].abs().amax() if bool(ignored.any()) else torch.tensor(0.0)
        if float(leaked) != 0.0:
            judge.fail("ignored positions have exactly zero gradient",
                       f"largest |gradient| on an ignored position is {float(leaked)!r}", case=case, options=options)
    if reduction == "none":
        ignored_loss = out.loss[case.target == ignore_index]
        if bool((ignored_loss != 0).any()):
            judge.fail("ignored positions have zero loss", f"losses {ignored_loss.tolist()}", case=case,
                       options=options)


@pytest.mark.feature("label_smoothing")
@pytest.mark.parametrize("variant", ["plain", "weighted", "ignored", "weighted+ignored"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_label_smoothing(judge, device, dtype, reduction, variant, seed):
    """Target (1-eps)*onehot + eps/C over all C classes; weights scale the smoothing term; ignored
    positions stay out of it (pytorch#104776, #73205)."""
    ignore_index = 1 if "ignored" in variant else None
    case = cases.well_conditioned(11, 7, dtype, device, seed=seed, weight="weighted" in variant,
                                  ignore_index=ignore_index)
    options = LossOptions(reduction=reduction, label_smoothing=0.15,
                          ignore_index=-100 if ignore_index is None else ignore_index)
    judge.conforms(case, options)


SMOOTHED = pytest.mark.feature("label_smoothing")


@pytest.mark.feature("probability_target")
@pytest.mark.parametrize("variant", ["plain", "weighted", pytest.param("smoothed", marks=SMOOTHED),
                                     pytest.param("weighted+smoothed", marks=SMOOTHED)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets(judge, device, dtype, reduction, variant, seed):
    """Soft targets: mean divides by the number of positions, never by a weight sum (pytorch#107680)."""
    case = cases.well_conditioned(9, 6, dtype, device, seed=seed, weight="weighted" in variant, soft_target=True)
    judge.conforms(case, LossOptions(reduction=reduction, label_smoothing=0.2 if "smoothed" in variant else 0.0))


@pytest.mark.feature("probability_target", "backward")
def test_gradient_with_respect_to_soft_target(impl, judge, device, dtype, seed):
    """d(loss)/d(target) is -log softmax(z) (times the weights and the upstream)."""
    if impl.input_kind != "logits":
        pytest.skip("the identity is stated for logits")
    case = cases.well_conditioned(6, 5, dtype, device, seed=seed, soft_target=True)
    options = LossOptions(reduction="sum")
    target = case.target.clone().requires_grad_()
    impl(case.logits, target, options).backward()
    ev = run.truth(impl, run.Outcome(case.logits, case.target, torch.empty(())), case, options)
    expected = -ev.log_probs.reshape(case.logits.shape)
    # one rounding of each log-probability to the dtype beyond the loss's own bound
    bound = tolerance.value_bound(run.truth(impl, run.Outcome(case.logits, case.target, torch.empty(())), case,
                                            LossOptions(reduction="none")), dtype)[:, None] \
        + 2 * tolerance.unit_roundoff(dtype) * expected.abs()
    judge.close("d loss / d target = -log softmax", target.grad, expected, bound, case=case, options=options)


@pytest.mark.feature("kdim", "weight", "ignore_index")
@pytest.mark.parametrize("extra_dims", [(4,), (3, 2), (2, 1, 3)], ids=lambda d: "x".join(map(str, d)))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k_dimensional(judge, device, dtype, reduction, extra_dims, seed):
    """Input (N, C, d1, ..., dk), class dimension 1."""
    case = cases.well_conditioned(3, 5, dtype, device, seed=seed, extra_dims=extra_dims, weight=True,
                                  ignore_index=0)
    judge.conforms(case, LossOptions(reduction=reduction, ignore_index=0))


@pytest.mark.feature("kdim", "probability_target", "label_smoothing")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k_dimensional_probability_target(judge, device, dtype, reduction, seed):
    case = cases.well_conditioned(3, 5, dtype, device, seed=seed, extra_dims=(2, 3), soft_target=True)
    judge.conforms(case, LossOptions(reduction=reduction, label_smoothing=0.1))


@pytest.mark.feature("unbatched")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched(judge, device, dtype, reduction, seed):
    """Input (C,) with a scalar target."""
    name = cases.dtype_name(dtype)
    recipe = f"""
torch.manual_seed({seed})
logits = torch.randn(7, dtype=torch.float64).to(torch.{name})
target = torch.where(logits <= 0, torch.rand(7), -1.0).argmax()
"""
    judge.conforms(cases.from_recipe("unbatched", recipe, device), LossOptions(reduction=reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(impl, judge, device, dtype, reduction):
    """An empty batch: mean is NaN, sum is 0, none is empty; the gradient is empty."""
    recipe = f"""
logits = torch.empty(0, 5, dtype=torch.{cases.dtype_name(dtype)})
target = torch.empty(0, dtype=torch.long)
"""
    case = cases.from_recipe("empty", recipe, device)
    options = LossOptions(reduction=reduction)
    out = run.forward(impl, case, options)
    declared = reduction == "mean" and "all_ignored_mean_zero" in impl.deviations
    expected = {"none": torch.empty(0), "mean": torch.tensor(0.0 if declared else math.nan),
                "sum": torch.tensor(0.0)}[reduction]
    judge.close("empty batch", out.loss, expected, torch.zeros(()), case=case, options=options)
    if declared:
        pytest.xfail("declared deviation all_ignored_mean_zero: mean over no position is 0, torch gives NaN")


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored(impl, judge, device, dtype, reduction):
    """No kept position: mean is NaN in torch (pytorch#116349), sum and none are 0, the gradient 0."""
    recipe = f"""
torch.manual_seed(3)
logits = torch.randn(4, 6, dtype=torch.float64).to(torch.{cases.dtype_name(dtype)})
target = torch.full((4,), -100)
"""
    case = cases.from_recipe("all_ignored", recipe, device)
    options = LossOptions(reduction=reduction)
    backward = "backward" not in impl.unsupported
    grad_code = cases.upstream_recipe("scalar", reduction, (4,), dtype)
    out = run.forward_backward(impl, case, options, grad_code) if backward else run.forward(impl, case, options)
    declared = reduction == "mean" and "all_ignored_mean_zero" in impl.deviations
    expected = run.truth(impl, out, case, options).loss
    if declared:
        expected = torch.zeros(())
    judge.close("all targets ignored", out.loss, expected, torch.zeros(()), case=case, options=options)
    if backward:
        judge.close("all targets ignored: gradient", out.grad, torch.zeros(out.grad.shape), torch.zeros(()),
                    case=case, options=options)
    if declared:
        pytest.xfail("declared deviation all_ignored_mean_zero: mean over no kept position is 0, torch gives NaN")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_class(judge, device, dtype, reduction, seed):
    """C = 1: every log-probability is 0, so is the loss and its gradient."""
    recipe = f"""
torch.manual_seed({seed})
logits = torch.randn(5, 1, dtype=torch.float64).to(torch.{cases.dtype_name(dtype)})
target = torch.zeros(5, dtype=torch.long)
"""
    judge.conforms(cases.from_recipe("single_class", recipe, device), LossOptions(reduction=reduction))


INVALID_INPUTS = {
    "target == C": "target = torch.tensor([0, 1, 5, 2])",
    "target < 0, not ignore_index": "target = torch.tensor([0, -2, 1, 2])",
    "float target shaped like indices": "target = torch.tensor([0., 1., 2., 3.])",
    "batch size mismatch": "target = torch.tensor([0, 1, 2])",
}


@pytest.mark.feature("input_validation")
@pytest.mark.parametrize("problem", INVALID_INPUTS)
def test_invalid_input_raises(impl, judge, device, problem):
    """Silently accepting an invalid target hides data bugs (pytorch#108148): it must raise."""
    recipe = f"""
torch.manual_seed(0)
logits = torch.randn(4, 5)
{INVALID_INPUTS[problem]}
"""
    case = cases.from_recipe("invalid", recipe, device)
    options = LossOptions(reduction="mean")
    try:
        x, t = impl.feed(case.logits, case.target)
        loss = impl(x, t, options)
        if device != "cpu":
            loss.cpu()  # device-side asserts surface on synchronisation
    except ImplementationFault:
        raise
    except Exception:
        return
    judge.fail("invalid input raises", f"{problem}: returned {loss!r} instead of raising", case=case,
               options=options)

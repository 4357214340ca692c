"""torch's semantics, exactly: class weights, ignore_index, label smoothing, probability targets,
K-dimensional and unbatched inputs, edge cases and invalid inputs."""
import math

import pytest
import torch

from conformance import cases
from conformance.forms import Show
from conformance.forms import logits as logits_form
from conformance.guards import ImplementationFault
from conformance.judge.snippet import Steps
from conformance.vocabulary import REDUCTIONS, dtype_name

WEIGHTED = pytest.mark.feature("weight")
SMOOTHED = pytest.mark.feature("label_smoothing")
CUSTOM_IGNORE = pytest.mark.feature("custom_ignore_index")


@pytest.mark.feature("weight")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_weights(judge, device, dtype, reduction, seed):
    """Each position scaled by weight[target]; mean divides by the kept positions' weight sum."""
    judge.conforms(cases.problem(cases.well_conditioned(13, 6, dtype, device, seed=seed, weight=True),
                                 reduction=reduction))


# -1 must not wrap into the last class's weight; 2 lies inside [0, C) (pytorch#69339, #91383).
IGNORE_INDICES = [-100, pytest.param(-1, marks=CUSTOM_IGNORE), pytest.param(2, marks=CUSTOM_IGNORE)]


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("weighted", [False, pytest.param(True, marks=WEIGHTED)], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignore_index", IGNORE_INDICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index(judge, device, dtype, reduction, ignore_index, weighted, seed):
    """Ignored positions: zero loss, exactly zero gradient, out of the mean's denominator."""
    case = cases.well_conditioned(14, 5, dtype, device, seed=seed, weight=weighted, ignore_index=ignore_index)
    problem = cases.problem(case, reduction=reduction, ignore_index=ignore_index)
    out = judge.conforms(problem)
    ignored = case.target == ignore_index
    if out.grad is not None:
        leaked = out.grad[ignored].abs().amax() if bool(ignored.any()) else torch.tensor(0.0)
        if float(leaked) != 0.0:
            judge.fail("ignored positions have exactly zero gradient", problem,
                       f"largest |gradient| on an ignored position is {float(leaked)!r}",
                       show=Show(f"x.grad[t == {ignore_index}].abs().max()", "0.0"))
    if reduction == "none" and bool((out.loss[ignored] != 0).any()):
        judge.fail("ignored positions have zero loss", problem, f"losses {out.loss[ignored].tolist()}",
                   show=Show(f"loss[t == {ignore_index}]", "0.0"))


# Outside [0, C) on both sides, C itself and far past it: torch ignores the positions that hold it
# and never reads weight[ignore_index] (pytorch#69339, #91383).
IGNORE_ANYWHERE = {"C": "{c}", "C + 7": "{c} + 7", "-5": "-5", "-1000": "-1000", "2^31 - 1": "2 ** 31 - 1"}


@pytest.mark.feature("ignore_index", "custom_ignore_index", "weight")
@pytest.mark.parametrize("where", IGNORE_ANYWHERE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_anywhere(judge, device, dtype, reduction, where, seed):
    """An ignore_index outside the classes is an ignored label like any other, never an index error."""
    c = 6
    ignore_index = eval(IGNORE_ANYWHERE[where].format(c=c))
    case = cases.well_conditioned(12, c, dtype, device, seed=seed, weight=True, ignore_index=ignore_index)
    problem = cases.problem(case, reduction=reduction, ignore_index=ignore_index)
    judge.conforms(problem)


def _each_and_both(first: str, first_mark, second: str, second_mark) -> list:
    """The four variants of two options: plain, each alone, and both."""
    return ["plain", pytest.param(first, marks=first_mark), pytest.param(second, marks=second_mark),
            pytest.param(f"{first}+{second}", marks=[first_mark, second_mark])]


@pytest.mark.feature("label_smoothing")
@pytest.mark.parametrize("variant", _each_and_both("weighted", WEIGHTED, "ignored", CUSTOM_IGNORE))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_label_smoothing(judge, device, dtype, reduction, variant, seed):
    """Target (1-eps)*onehot + eps/C over all C classes; weights scale the smoothing term; ignored
    positions stay out of it (pytorch#104776, #73205)."""
    ignore_index = 1 if "ignored" in variant else None
    case = cases.well_conditioned(11, 7, dtype, device, seed=seed, weight="weighted" in variant,
                                  ignore_index=ignore_index)
    judge.conforms(cases.problem(case, reduction=reduction, label_smoothing=0.15,
                                 ignore_index=-100 if ignore_index is None else ignore_index))


@pytest.mark.feature("probability_target")
@pytest.mark.parametrize("variant", _each_and_both("weighted", WEIGHTED, "smoothed", SMOOTHED))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets(judge, device, dtype, reduction, variant, seed):
    """Soft targets: mean divides by the number of positions, never by a weight sum (pytorch#107680)."""
    case = cases.well_conditioned(9, 6, dtype, device, seed=seed, weight="weighted" in variant, soft_target=True)
    judge.conforms(cases.problem(case, reduction=reduction, label_smoothing=0.2 if "smoothed" in variant else 0.0))


@pytest.mark.feature("probability_target", "backward")
@pytest.mark.input_kind("logits")
def test_gradient_with_respect_to_soft_target(impl, judge, device, dtype, seed):
    """d(loss)/d(target) is -log softmax(z) (times the weights and the upstream)."""
    problem = cases.problem(cases.well_conditioned(6, 5, dtype, device, seed=seed, soft_target=True),
                            reduction="sum", upstream=None)
    steps = Steps(impl, problem)
    steps("t.requires_grad_()", f"{logits_form.call_code(impl, problem)}.backward()")
    row_problem = cases.problem(problem.case, reduction="none", upstream=None)
    row_ev = logits_form.truth(impl, row_problem,
                               logits_form.Outcome(problem.case.logits, problem.case.target, torch.empty(())))
    target = steps["t"]
    judge.within("d loss / d target = -log softmax", problem, target.grad, -row_ev.log_probs.reshape(target.shape),
                 "soft target gradient", row_ev=row_ev,
                 show=steps.show("t.grad{at}", "-truth.log_probs.reshape(t.shape){at}"))


@pytest.mark.feature("kdim", "weight", "ignore_index", "custom_ignore_index")
@pytest.mark.parametrize("extra_dims", [(4,), (3, 2), (2, 1, 3)], ids=lambda d: "x".join(map(str, d)))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k_dimensional(judge, device, dtype, reduction, extra_dims, seed):
    """Input (N, C, d1, ..., dk), class dimension 1."""
    case = cases.well_conditioned(3, 5, dtype, device, seed=seed, extra_dims=extra_dims, weight=True,
                                  ignore_index=0)
    judge.conforms(cases.problem(case, reduction=reduction, ignore_index=0))


@pytest.mark.feature("kdim", "probability_target", "label_smoothing")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_k_dimensional_probability_target(judge, device, dtype, reduction, seed):
    case = cases.well_conditioned(3, 5, dtype, device, seed=seed, extra_dims=(2, 3), soft_target=True)
    judge.conforms(cases.problem(case, reduction=reduction, label_smoothing=0.1))


@pytest.mark.feature("unbatched")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched(judge, device, dtype, reduction, seed):
    """Input (C,) with a scalar target."""
    recipe = f"""
torch.default_generator.manual_seed({seed})
logits = torch.randn(7, dtype=torch.float64).to(torch.{dtype_name(dtype)})
target = torch.where(logits <= 0, torch.rand(7), -1.0).argmax()
"""
    judge.conforms(cases.problem(cases.from_recipe("unbatched", recipe, device), reduction=reduction))


@pytest.mark.feature("empty_batch")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(impl, judge, device, dtype, reduction):
    """An empty batch: mean is NaN, sum is 0, none is empty; the gradient is empty."""
    recipe = f"""
logits = torch.empty(0, 5, dtype=torch.{dtype_name(dtype)})
target = torch.empty(0, dtype=torch.long)
"""
    problem = cases.problem(cases.from_recipe("empty", recipe, device), reduction=reduction, upstream=None)
    out = logits_form.forward(impl, problem)
    judge.deviation("all_ignored_mean_zero", problem, out.loss, identity="empty batch")
    expected = {"none": torch.empty(0), "mean": torch.tensor(math.nan), "sum": torch.tensor(0.0)}[reduction]
    judge.exactly("empty batch", problem, out.loss, expected)


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored(impl, judge, device, dtype, reduction):
    """No kept position: mean is NaN in torch (pytorch#116349), sum and none are 0, the gradient 0."""
    recipe = f"""
torch.default_generator.manual_seed(3)
logits = torch.randn(4, 6, dtype=torch.float64).to(torch.{dtype_name(dtype)})
target = torch.full((4,), -100)
"""
    backward = "backward" not in impl.unsupported
    problem = cases.problem(cases.from_recipe("all_ignored", recipe, device), reduction=reduction,
                            upstream="scalar" if backward else None)
    out = logits_form.forward_backward(impl, problem) if backward else logits_form.forward(impl, problem)
    if backward:
        judge.exactly("all targets ignored: gradient", problem, out.grad, torch.zeros(out.grad.shape),
                      show=Show("x.grad{at}", "0.0"))
    judge.deviation("all_ignored_mean_zero", problem, out.loss, identity="all targets ignored")
    judge.exactly("all targets ignored", problem, out.loss, logits_form.truth(impl, problem, out).loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_class(judge, device, dtype, reduction, seed):
    """C = 1: every log-probability is 0, so is the loss and its gradient."""
    recipe = f"""
torch.default_generator.manual_seed({seed})
logits = torch.randn(5, 1, dtype=torch.float64).to(torch.{dtype_name(dtype)})
target = torch.zeros(5, dtype=torch.long)
"""
    judge.conforms(cases.problem(cases.from_recipe("single_class", recipe, device), reduction=reduction))


INVALID_INPUTS = {
    "target == C": "target = torch.tensor([0, 1, 5, 2])",
    "target < 0, not ignore_index": "target = torch.tensor([0, -2, 1, 2])",
    "float target shaped like indices": "target = torch.tensor([0., 1., 2., 3.])",
    "batch size mismatch": "target = torch.tensor([0, 1, 2])",
}


@pytest.mark.feature("input_validation")
@pytest.mark.parametrize("problem_name", INVALID_INPUTS)
def test_invalid_input_raises(impl, judge, device, problem_name):
    """Silently accepting an invalid target hides data bugs (pytorch#108148): it must raise."""
    recipe = f"""
torch.default_generator.manual_seed(0)
logits = torch.randn(4, 5)
{INVALID_INPUTS[problem_name]}
"""
    problem = cases.problem(cases.from_recipe("invalid", recipe, device), upstream=None)
    try:
        steps = Steps(impl, problem, truth=False)
        # device-side asserts surface on synchronisation
        steps(f"loss = {logits_form.call_code(impl, problem)}", *["loss.cpu()"] * (device != "cpu"))
    except ImplementationFault:
        raise
    except Exception:
        return
    judge.fail("invalid input raises", problem, f"{problem_name}: returned {steps['loss']!r} instead of raising",
               show=steps.show("loss", "'an exception'"))

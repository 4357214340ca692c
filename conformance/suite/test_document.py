"""The seed document's claims: the four ways to write the loss agree, the implementation agrees
with them, and a network trained with the implementation learns XOR."""
import pytest
import torch

from conformance import cases
from conformance.document import DOCUMENT_PATHS, XOR_SEED, XOR_STEPS, XOR_TARGET
from conformance.forms import logits as logits_form
from conformance.judge.snippet import Steps
from conformance.vocabulary import REDUCTIONS, dtype_name


@pytest.mark.parametrize("path", DOCUMENT_PATHS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_document_paths_agree_with_truth(judge, device, dtype, reduction, path, seed):
    problem = cases.problem(cases.well_conditioned(64, 4, dtype, device, seed=seed), reduction=reduction,
                            upstream=None)
    judge.document_path(problem, path, f"evaluate(logits, target, reduction={reduction!r})",
                        identity=f"document path {path}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_document_example(impl, judge, device, dtype, reduction):
    """The document's own example (batch 64, 8 inputs, 4 classes, a linear model, seed 0)."""
    problem = cases.problem(cases.document_example(dtype, device), reduction=reduction, upstream=None)
    out = logits_form.forward(impl, problem)
    judge.value(problem, out, logits_form.truth(impl, problem, out), identity="document example")


# 0.2 s a dtype (the implementation's 1000-step training; the reference's, 0.7 s, once a process):
# the document's float32 by default, every dtype when deep (a half dtype's value and gradient are
# judged by the value and gradient checks).
@pytest.mark.default_dtypes(torch.float32)
@pytest.mark.feature("backward")
@pytest.mark.input_kind("logits")   # the document's network outputs logits
def test_network_learns_xor(impl, judge, device, dtype):
    name = dtype_name(dtype)
    recipe = f"""
logits = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]], dtype=torch.{name})
target = torch.tensor({XOR_TARGET})
# the network: torch.manual_seed({XOR_SEED}); Sequential(Linear(2, 5), ReLU(), Linear(5, 2)); \
SGD lr 0.1, {XOR_STEPS} steps
"""
    problem = cases.problem(cases.from_recipe("xor", recipe, device), upstream=None)
    # The snippet trains both networks (a second or two) and prints what the check compared; the
    # reference run keeps each step's evaluation, from which the trajectory's bound is built.
    steps = Steps(impl, problem, truth=False)
    loss_name = f"the implementation's loss ({impl.spec})"
    steps("from conformance.document import reference_xor, train_xor",
          f"loss_fn = lambda z, y: (lambda x, t: {logits_form.call_code(impl, problem)})(*impl.feed(z, y))",
          f"predicted, losses, _ = train_xor(loss_fn, torch.{name}, {device!r}, "
          f"loss_name={loss_name!r})",
          f"reference_predicted, reference_losses, step_evaluations = reference_xor(torch.{name}, {device!r})")
    predicted, losses = steps["predicted"], steps["losses"]
    if predicted != XOR_TARGET:
        judge.fail("XOR is learnt", problem, f"after {XOR_STEPS} steps the network predicts {predicted}, "
                                             f"expected {XOR_TARGET} (the reference run predicts "
                                             f"{steps['reference_predicted']})",
                   show=steps.show("predicted", repr(XOR_TARGET)))
    judge.within("XOR loss trajectory tracks the float64 reference run", problem, losses,
                 steps["reference_losses"].double(), "xor trajectory",
                 show=steps.show("losses{at}.item()", "reference_losses{at}.item()"),
                 step_evaluations=steps["step_evaluations"])

"""The seed document's claims: the four ways to write the loss agree, the implementation agrees
with them, and a network trained with the implementation learns XOR."""
import pytest
import torch

from conformance import cases
from conformance.document import DOCUMENT_PATHS
from conformance.forms import logits as logits_form
from conformance.guards import calling
from conformance.judge.snippet import Steps
from conformance.reference import evaluate
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


class ReferenceLoss(torch.autograd.Function):
    """The float64 reference as a loss: its value and closed-form gradient, rounded to the dtype;
    each step's evaluation is appended to ``record`` (the trajectory's bounds are built from them)."""

    @staticmethod
    def forward(ctx, logits, target, record=None):
        ctx.evaluation, ctx.dtype = evaluate(logits, target), logits.dtype
        if record is not None:
            record.append(ctx.evaluation)
        return ctx.evaluation.loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.evaluation.grad(grad_output).to(ctx.dtype), None, None


XOR_SEED = 1           # a seed whose 2-5-2 network learns XOR with the reference loss in every dtype
XOR_STEPS = 1000
# The document's optimizer, torch.optim.SGD(lr=0.1), is this update: plain SGD steps
# ``p.add_(p.grad, alpha=-lr)``, the same operation. Written out, because importing torch.optim
# imports dynamo, 2.4 s of a default run that lasts about 20.
XOR_LEARNING_RATE = 0.1
XOR_TARGET = [0, 1, 1, 0]


def train_xor(loss_fn, dtype: torch.dtype, device: str, *, loss_name: str = "the given loss") -> tuple:
    """The document's network trained on XOR with ``loss_fn(logits, target)``: the predictions
    after ``XOR_STEPS`` SGD steps, every step's loss and every step's logits. The two runs the
    check compares share every operation but the loss (``tolerance.xor_trajectory_bound``).
    A timeout names the training run and the steps it had done (``loss_name``: whose loss)."""
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype, device=device)
    y = torch.tensor(XOR_TARGET, device=device)
    torch.manual_seed(XOR_SEED)
    model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).to(device, dtype)
    losses, logits = [], []
    with calling(f"the {XOR_STEPS}-step XOR training run with {loss_name}", steps=XOR_STEPS) as training:
        for step in range(XOR_STEPS):
            training.done = step
            z = model(x)
            loss = loss_fn(z, y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(parameter.grad, alpha=-XOR_LEARNING_RATE)
            losses.append(loss.detach())
            logits.append(z.detach())
    return model(x).argmax(1).tolist(), torch.stack(losses), torch.stack(logits)


# 0.7 s a dtype (two 1000-step trainings): the document's float32 by default, every dtype when
# deep (a half dtype's value and gradient are judged by the value and gradient checks).
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
    steps("from conformance.suite.test_document import ReferenceLoss, train_xor",
          f"loss_fn = lambda z, y: (lambda x, t: {logits_form.call_code(impl, problem)})(*impl.feed(z, y))",
          f"predicted, losses, _ = train_xor(loss_fn, torch.{name}, {device!r}, "
          f"loss_name={loss_name!r})",
          "step_evaluations = []",
          f"reference_predicted, reference_losses, _ = train_xor(lambda z, y: ReferenceLoss.apply(z, y, "
          f"step_evaluations), torch.{name}, {device!r}, loss_name='the float64 reference loss')")
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

"""The seed document's claims: the four ways to write the loss agree, the implementation agrees
with them, and a network trained with the implementation learns XOR."""
import pytest
import torch
import torch.nn.functional as F

from conformance import cases, run, tolerance
from conformance.impl import LossOptions
from conformance.reference import evaluate

REDUCTIONS = ["none", "mean", "sum"]


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    return per_row.sum() / per_row.shape[0] if reduction == "mean" else per_row.sum()


# The document's four paths, in the case's dtype. The last two take the log of a probability that
# was rounded to the dtype: that costs up to one rounding of p, i.e. u_o absolute in log space.
DOCUMENT_PATHS = {
    "CrossEntropyLoss": (lambda z, y, r: F.cross_entropy(z, y, reduction=r), False),
    "LogSoftmax+NLLLoss": (lambda z, y, r: F.nll_loss(F.log_softmax(z, 1), y, reduction=r), False),
    "Softmax+log+NLLLoss": (lambda z, y, r: F.nll_loss(torch.log(F.softmax(z, 1)), y, reduction=r), True),
    "-(onehot*log softmax).sum()/N": (
        lambda z, y, r: _reduce(-(F.one_hot(y, z.shape[1]) * torch.log(F.softmax(z, 1))).sum(1), r), True),
}


@pytest.mark.parametrize("path", DOCUMENT_PATHS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_document_paths_agree_with_truth(judge, device, dtype, reduction, path, seed):
    case = cases.well_conditioned(64, 4, dtype, device, seed=seed)
    fn, logs_rounded_probability = DOCUMENT_PATHS[path]
    options = LossOptions(reduction=reduction)
    ev = evaluate(case.logits, case.target, reduction=reduction)
    bound = tolerance.value_bound(ev, dtype)
    if logs_rounded_probability:
        rows = ev.row_loss.shape[0] if reduction == "sum" else 1
        bound = bound + tolerance.unit_roundoff(dtype) * rows
    judge.close(f"document path {path}", fn(case.logits, case.target, reduction), ev.loss, bound,
                case=case, options=options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_document_example(impl, judge, device, dtype, reduction):
    """The document's own example (batch 64, 8 inputs, 4 classes, a linear model, seed 0)."""
    case = cases.document_example(dtype, device)
    options = LossOptions(reduction=reduction)
    out = run.forward(impl, case, options)
    ev = run.truth(impl, out, case, options)
    judge.close("document example", out.loss, ev.loss, tolerance.value_bound(ev, dtype), case=case, options=options)


class _ReferenceLoss(torch.autograd.Function):
    """The float64 reference as a loss: its value and closed-form gradient, rounded to the dtype."""

    @staticmethod
    def forward(ctx, logits, target):
        ctx.evaluation, ctx.dtype = evaluate(logits, target), logits.dtype
        return ctx.evaluation.loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.evaluation.grad(grad_output).to(ctx.dtype), None


XOR_SEED = 1           # a seed whose 2-5-2 network learns XOR with the reference loss in every dtype
XOR_STEPS = 1000
# The two runs share every operation but the loss. Each step's loss and gradient meet their bounds;
# an error made at step s stays in the weights, so step t is judged against the largest step bound
# so far, and SGD's contraction near the minimum keeps the accumulated drift to a few such steps
# (measured here: at most 2 roundings of the early loss in every dtype). We allow 8.
XOR_TRAJECTORY_BOUNDS = 8


def _train_xor(loss_fn, dtype, device):
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype, device=device)
    y = torch.tensor([0, 1, 1, 0], device=device)
    torch.manual_seed(XOR_SEED)
    model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).to(device, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, logits = [], []
    for _ in range(XOR_STEPS):
        z = model(x)
        loss = loss_fn(z, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        logits.append(z.detach())
    return model(x).argmax(1).tolist(), torch.stack(losses), torch.stack(logits)


@pytest.mark.feature("backward")
def test_network_learns_xor(impl, judge, device, dtype):
    if impl.input_kind != "logits":
        pytest.skip("the document's network outputs logits")
    recipe = f"""
logits = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]], dtype=torch.{cases.dtype_name(dtype)})
target = torch.tensor([0, 1, 1, 0])
# the network: torch.manual_seed({XOR_SEED}); Sequential(Linear(2, 5), ReLU(), Linear(5, 2)); SGD lr 0.1, {XOR_STEPS} steps
"""
    case = cases.from_recipe("xor", recipe, device)
    options = LossOptions()
    predicted, losses, _ = _train_xor(lambda z, y: impl(*impl.feed(z, y), options), dtype, device)
    expected_predicted, reference_losses, reference_logits = _train_xor(_ReferenceLoss.apply, dtype, device)
    if predicted != [0, 1, 1, 0]:
        judge.fail("XOR is learnt", f"after {XOR_STEPS} steps the network predicts {predicted}, "
                                    f"expected [0, 1, 1, 0] (the reference run predicts {expected_predicted})",
                   case=case, options=options)
    step_bounds = torch.stack([tolerance.value_bound(evaluate(z, case.target), dtype) for z in reference_logits])
    step_bounds = step_bounds.cummax(0).values
    judge.close("XOR loss trajectory tracks the float64 reference run", losses, reference_losses.double(),
                XOR_TRAJECTORY_BOUNDS * step_bounds, case=case, options=options)

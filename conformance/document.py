"""The seed document's four ways to write the loss (cross_entropy; nll_loss of log_softmax; nll_loss
of the log of softmax; the one-hot sum), as code over ``logits`` and ``target`` that a check runs
as a recorded step (``judge.snippet.Steps``) and its reproduce snippet prints, so the two never
differ; and the document's network, trained on XOR with a loss or with the float64 reference."""
from __future__ import annotations

import functools

import torch

from .guards import calling
from .reference import evaluate

__all__ = ["DOCUMENT_PATHS", "document_path_code", "ReferenceLoss", "train_xor", "reference_xor", "XOR_SEED",
           "XOR_STEPS", "XOR_TARGET"]

# The document's four paths, in the case's dtype, as code over ``logits`` and ``target`` (the
# check evaluates the very code its reproduce snippet prints). The last two take the log of a
# probability that was rounded to the dtype (``tolerance.document_path_bound``).
_ONE_HOT_ROWS = "(-(F.one_hot(target, logits.shape[1]) * torch.log(F.softmax(logits, 1))).sum(1))"
_REDUCED = {"none": "{}", "sum": "{}.sum()", "mean": "({0}.sum() / {0}.shape[0])"}
DOCUMENT_PATHS = {
    "CrossEntropyLoss": ("F.cross_entropy(logits, target, reduction={reduction!r})", False),
    "LogSoftmax+NLLLoss": ("F.nll_loss(F.log_softmax(logits, 1), target, reduction={reduction!r})", False),
    "Softmax+log+NLLLoss": ("F.nll_loss(torch.log(F.softmax(logits, 1)), target, reduction={reduction!r})", True),
    "-(onehot*log softmax).sum()/N": ("{one_hot_rows}", True),
}


def document_path_code(path: str, reduction: str) -> str:
    """The document's ``path`` as an expression over ``logits`` and ``target`` (``torch``, ``F``)."""
    code = DOCUMENT_PATHS[path][0].format(reduction=reduction, one_hot_rows=_ONE_HOT_ROWS)
    return _REDUCED[reduction].format(code) if path.startswith("-(onehot") else code


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


@functools.lru_cache(maxsize=None)
def reference_xor(dtype: torch.dtype, device: str) -> tuple:
    """The network trained with the float64 reference loss: its predictions, every step's loss and
    every step's evaluation (the trajectory's bounds are built from them). It depends on nothing
    an implementation does, so a process trains it once per dtype and device (0.7 s, three times
    the implementation's run): the self-tests judge a hundred losses in one process."""
    step_evaluations = []
    predicted, losses, _ = train_xor(lambda z, y: ReferenceLoss.apply(z, y, step_evaluations), dtype, device,
                                     loss_name="the float64 reference loss")
    return predicted, losses, tuple(step_evaluations)

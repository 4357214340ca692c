"""Call the implementation on a case the way a training step does: forward, then backward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .cases import Case
from .impl import Implementation, LossOptions
from .reference import Evaluation, evaluate

__all__ = ["Outcome", "forward", "forward_backward", "truth", "options_for"]


@dataclass(frozen=True)
class Outcome:
    """The fed input and target, the loss, and (after backward) the input's gradient and the upstream."""

    input: Tensor
    target: Tensor
    loss: Tensor
    grad: Optional[Tensor] = None
    upstream: Optional[Tensor] = None


def truth(impl: Implementation, outcome: Outcome, case: Case, options: LossOptions) -> Evaluation:
    """The float64 reference on exactly what the implementation was fed."""
    return evaluate(outcome.input, outcome.target, weight=case.weight, ignore_index=options.ignore_index,
                    reduction=options.reduction, label_smoothing=options.label_smoothing,
                    input_kind=impl.input_kind)


def options_for(case: Case, options: LossOptions) -> LossOptions:
    """The call's options with the case's class weights."""
    return LossOptions(weight=case.weight, ignore_index=options.ignore_index, reduction=options.reduction,
                       label_smoothing=options.label_smoothing)


def forward(impl: Implementation, case: Case, options: LossOptions) -> Outcome:
    x, t = impl.feed(case.logits, case.target)
    with torch.no_grad():
        loss = impl(x, t, options_for(case, options))
    return Outcome(input=x, target=t, loss=loss)


def forward_backward(impl: Implementation, case: Case, options: LossOptions, upstream: str) -> Outcome:
    """Forward with ``requires_grad``, then ``loss.backward(grad)`` with ``grad`` built by ``upstream``."""
    x, t = impl.feed(case.logits, case.target)
    x = x.detach().requires_grad_()
    loss = impl(x, t, options_for(case, options))
    namespace: dict = {"torch": torch}
    exec(upstream, namespace)
    grad = namespace["grad"].to(case.device)
    loss.backward(grad)
    return Outcome(input=x.detach(), target=t, loss=loss.detach(), grad=x.grad, upstream=grad)

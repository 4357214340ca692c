"""The document's gradient identity: dL/dz = (softmax(z) - y) times the upstream gradient over the
mean's divisor, with non-uniform, scalar and expanded (stride-0) upstream gradients; a second
call on identical inputs gives the same bits (run to run)."""
import pytest
import torch

from conformance import cases
from conformance.forms import Show
from conformance.forms import logits as logits_form
from conformance.reference import to_rows
from conformance.suite.test_value import over_shapes, shaped_problem
from conformance.vocabulary import REDUCTIONS

pytestmark = pytest.mark.feature("backward")

# An expanded (stride-0) upstream gradient only arises from reduction='none'.
REDUCTION_UPSTREAMS = [(r, u) for r in REDUCTIONS for u in cases.UPSTREAM_KINDS if u != "expanded" or r == "none"]


@over_shapes
@pytest.mark.parametrize("reduction,upstream", REDUCTION_UPSTREAMS, ids=[f"{r}-{u}" for r, u in REDUCTION_UPSTREAMS])
def test_gradient_is_softmax_minus_target(impl, judge, device, dtype, reduction, upstream, shape, seed):
    problem = shaped_problem(shape, dtype, device, seed, reduction=reduction, upstream=upstream)
    out = logits_form.forward_backward(impl, problem)
    ev = logits_form.truth(impl, problem, out)
    judge.gradient(problem, out, ev)
    judge.repeats(problem, out, ev)
    if impl.input_kind == "logits":
        # Each row of softmax(z) - y sums to zero, and every component lies in [-A, A] times the scale.
        grad_rows = to_rows(out.grad.double().cpu(), class_dim=True)
        row_sums = grad_rows.sum(1)
        judge.within("gradient rows sum to zero", problem, row_sums, torch.zeros_like(row_sums), "gradient row sums",
                     show=Show("x.grad.double().sum(1){at}", "0.0"), ev=ev, grad_output=out.upstream)
        scale = ev.upstream_rows(out.upstream).abs() * ev.weighted_target.sum(1)
        excess = (grad_rows.abs() - scale[:, None]).clamp(min=0)
        judge.within("gradient components within the scale", problem, excess.reshape(out.grad.shape),
                     torch.zeros(out.grad.shape), "gradient",
                     show=Show("x.grad{at}.abs()", "'at most A |upstream| per position'"),
                     ev=ev, grad_output=out.upstream)

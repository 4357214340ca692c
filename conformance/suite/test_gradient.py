"""The document's gradient identity: dL/dz = (softmax(z) - y) times the upstream gradient over the
mean's divisor, with non-uniform, scalar and expanded (stride-0) upstream gradients."""
import pytest
import torch

from conformance import cases, run, tolerance
from conformance.cases import UPSTREAM_KINDS
from conformance.impl import LossOptions

SHAPES = [(1, 10), (7, 3), (67, 130)]
REDUCTIONS = ["none", "mean", "sum"]

pytestmark = pytest.mark.feature("backward")


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1).reshape(-1, t.shape[1]) if t.dim() > 1 else t.reshape(1, -1)


# An expanded (stride-0) upstream gradient only arises from reduction='none'.
REDUCTION_UPSTREAMS = [(r, u) for r in REDUCTIONS for u in UPSTREAM_KINDS if u != "expanded" or r == "none"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
@pytest.mark.parametrize("reduction,upstream", REDUCTION_UPSTREAMS, ids=[f"{r}-{u}" for r, u in REDUCTION_UPSTREAMS])
def test_gradient_is_softmax_minus_target(impl, judge, device, dtype, reduction, upstream, shape, seed):
    case = cases.well_conditioned(*shape, dtype, device, seed=seed)
    options = LossOptions(reduction=reduction)
    grad_code = cases.upstream_recipe(upstream, reduction, shape[:1], dtype)
    out = run.forward_backward(impl, case, options, grad_code)
    ev = run.truth(impl, out, case, options)
    bound = tolerance.grad_bound(ev, out.upstream, dtype)
    judge.close("gradient", out.grad, ev.grad(out.upstream), bound, case=case, options=options,
                upstream=grad_code, note=f", upstream={upstream}")
    if impl.input_kind == "logits":
        # Each row of softmax(z) - y sums to zero, and every component lies in [-A, A] times the scale.
        row_sums = _rows(out.grad.double()).sum(1)
        judge.close("gradient rows sum to zero", row_sums, torch.zeros_like(row_sums), _rows(bound).sum(1),
                    case=case, options=options, upstream=grad_code)
        scale = ev.upstream_rows(out.upstream).abs() * ev.weighted_target.sum(1)
        excess = (_rows(out.grad.double()).abs() - scale[:, None]).clamp(min=0)
        judge.close("gradient components within the scale", excess, torch.zeros_like(excess), _rows(bound),
                    case=case, options=options, upstream=grad_code)

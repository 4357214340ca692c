"""The loss value against the float64 truth on the same rounded inputs."""
import pytest

from conformance import cases, run, tolerance
from conformance.impl import LossOptions

SHAPES = [(1, 10), (7, 3), (67, 130)]
REDUCTIONS = ["none", "mean", "sum"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_value_matches_truth(impl, judge, device, dtype, reduction, shape, seed):
    case = cases.well_conditioned(*shape, dtype, device, seed=seed)
    options = LossOptions(reduction=reduction)
    out = run.forward(impl, case, options)
    ev = run.truth(impl, out, case, options)
    judge.close("value", out.loss, ev.loss, tolerance.value_bound(ev, dtype), case=case, options=options)

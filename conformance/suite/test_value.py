"""The loss value against the float64 truth on the same rounded inputs, and the same bits from a
second call on identical inputs (run to run)."""
import pytest

from conformance import cases
from conformance.forms import logits as logits_form
from conformance.vocabulary import REDUCTIONS

SHAPES = [(1, 10), (7, 3), (67, 130)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_value_matches_truth(impl, judge, device, dtype, reduction, shape, seed):
    problem = cases.problem(cases.well_conditioned(*shape, dtype, device, seed=seed), reduction=reduction,
                            upstream=None)
    out = logits_form.forward(impl, problem)
    ev = logits_form.truth(impl, problem, out)
    judge.value(problem, out, ev)
    judge.repeats(problem, out, ev)

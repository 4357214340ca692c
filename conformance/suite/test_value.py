"""The loss value against the float64 truth on the same rounded inputs, and the same bits from a
second call on identical inputs (run to run); and the value and gradient over the covering design
(conformance.design): widths, logit distributions, target placements, features and layouts, every
pair of their levels met in some case."""
import pytest

from conformance import cases, designed
from conformance.forms import logits as logits_form
from conformance.vocabulary import REDUCTIONS

# The shapes the value and the gradient identities (test_gradient.py) are judged on: one row, fewer
# classes than rows, many rows of many classes.
SHAPES = [(1, 10), (7, 3), (67, 130)]
over_shapes = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)


def shaped_problem(shape: tuple, dtype, device: str, seed: int, **options) -> cases.Problem:
    """A problem on well-conditioned logits of ``shape`` (``cases.well_conditioned``) under ``options``."""
    return cases.problem(cases.well_conditioned(*shape, dtype, device, seed=seed), **options)


@over_shapes
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_value_matches_truth(impl, judge, device, dtype, reduction, shape, seed):
    problem = shaped_problem(shape, dtype, device, seed, reduction=reduction, upstream=None)
    out = logits_form.forward(impl, problem)
    ev = logits_form.truth(impl, problem, out)
    judge.value(problem, out, ev)
    judge.repeats(problem, out, ev)


@pytest.mark.design("value")
def test_value_and_gradient_over_the_design(judge, device, dtype, reduction, row, seed):
    """One row of the covering design: a bug that needs two things at once (a large vocabulary in
    float32, a target at its row's maximum in a wide row, an LLM's long tail in half precision)
    meets them here."""
    index, levels = row
    judge.conforms(designed.logits_problem(levels, index, device, seed))

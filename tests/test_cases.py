"""Every case is defined by its recipe: executing the printed recipe rebuilds the same tensors."""
import pytest
import torch

from conformance import cases
from conformance.cases import from_recipe

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("builder", [
    lambda dt: cases.well_conditioned(7, 5, dt, "cpu", seed=3),
    lambda dt: cases.well_conditioned(3, 4, dt, "cpu", seed=1, extra_dims=(2, 2), weight=True, ignore_index=-1),
    lambda dt: cases.well_conditioned(3, 4, dt, "cpu", seed=2, soft_target=True),
    lambda dt: cases.document_example(dt, "cpu"),
])
def test_recipe_rebuilds_the_case(builder, dtype):
    case = builder(dtype)
    again = from_recipe(case.family, case.recipe, "cpu")
    assert torch.equal(case.logits.view(torch.uint8), again.logits.view(torch.uint8))
    assert torch.equal(case.target, again.target)
    assert (case.weight is None) == (again.weight is None)


def test_well_conditioned_targets_have_nonpositive_logits():
    case = cases.well_conditioned(50, 10, torch.float32, "cpu", seed=0)
    assert (case.logits.gather(1, case.target[:, None]) <= 0).all()

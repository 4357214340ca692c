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


def test_params_line_names_every_option_of_the_call():
    """The class weights travel on the case, not in the options: the params line of a failure
    must still name them, the default ignore_index the target holds, and the upstream gradient."""
    case = cases.well_conditioned(14, 5, torch.float64, "cpu", weight=True, ignore_index=-100)
    line = cases.problem(case, reduction="mean", ignore_index=-100).describe()
    assert line == ("case=well_conditioned shape=14x5 dtype=float64 device=cpu, reduction='mean', "
                    "weight=<5 classes>, ignore_index=-100, upstream=random")
    smoothed = cases.problem(cases.well_conditioned(4, 3, torch.float32, "cpu"), reduction="sum",
                             label_smoothing=0.1, upstream=None).describe()
    assert smoothed.endswith("reduction='sum', label_smoothing=0.1, forward only")

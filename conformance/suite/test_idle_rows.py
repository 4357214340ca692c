"""Rows that count for nothing: an ignored (padding) position and a position whose target class
has weight 0 contribute exactly 0 to the loss and the gradient whatever their logits hold, and
nothing of them leaks into the reduction or the other rows (TRL PR #7252's entropy: ``0 * -inf``
is NaN). Deterministic cases in every dtype; the property tests draw such rows on some seeds only.

The logits such rows hold here are ``-inf`` (masked classes), the dtype's largest finite
magnitude (1e30 where the dtype holds it) and, in an ignored position, ``+inf`` and NaN: a padded
position's hidden state is NaN when attention masked its whole row. An ignored position is absent
from the function (torch documents that it "does not contribute to the input gradient"), so its
loss is 0 whatever it holds, as torch's is. Its gradient there is 0 only for a kernel that masks
the row rather than multiplying it by 0: torch 2.13's own is NaN (``0 - softmax * 0`` over a NaN
softmax), and so are the kernels that follow it, so a non-zero gradient there is the probed gap
``nonfinite_ignored_rows`` (``--conformance-require`` makes it a failure), and the rest of the call
is judged as usual. A zero class weight is a weight, not a mask: ``w * (-log p)`` with an
undefined ``log p`` has no value the semantics fixes, so its row holds finite and ``-inf`` logits
only, away from its target.
"""
import pytest
import torch

from conformance import cases
from conformance.cases import IDLE_FILLS, ZERO_WEIGHT_FILLS, idle_fill
from conformance.vocabulary import dtype_name

IDLE = (1, 4)   # the rows that count for nothing, among 6 rows of 7 classes
# (kind, fill) of the idle rows: a mask (ignore_index) holds any logits, a zero weight finite and -inf
IDLE_ROWS = [pytest.param(kind, fill, marks=pytest.mark.feature(feature), id=f"{kind}-{fill}")
             for kind, feature, fills in (("ignored", "ignore_index", IDLE_FILLS),
                                          ("zero weight", "weight", ZERO_WEIGHT_FILLS))
             for fill in fills]


def _case(kind: str, fill: str, dtype: torch.dtype, device: str, seed: int) -> cases.Case:
    """Kept rows with targets among classes 1 to 6; the idle rows hold ``fill`` in two of their
    non-target classes and are ignored, or target class 0, weighted 0."""
    idle_target = "-100" if kind == "ignored" else "0"
    weight = (f"weight = torch.ones(7, dtype=torch.{dtype_name(dtype)})\nweight[0] = 0"
              if kind == "zero weight" else "")
    recipe = "\n".join(filter(None, [
        f"g = torch.Generator().manual_seed({seed})",
        "logits = torch.randn(6, 7, dtype=torch.float64, generator=g)",
        "target = torch.randint(1, 7, (6,), generator=g)",
        f"target[{list(IDLE)}] = {idle_target}",
        f"logits[{list(IDLE)}, 2] = logits[{list(IDLE)}, 5] = {idle_fill(fill, dtype)}",
        weight,
        f"logits = logits.to(torch.{dtype_name(dtype)})"]))
    return cases.from_recipe(f"rows that count for nothing ({kind}, {fill})", recipe, device)


@pytest.mark.parametrize(("kind", "fill"), IDLE_ROWS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_rows_that_count_for_nothing(judge, device, dtype, reduction, kind, fill, seed):
    """The idle rows' loss ('none') and gradient are exactly 0, and every other row and the
    reduction are judged against the truth, in which the idle rows are absent."""
    problem = cases.problem(_case(kind, fill, dtype, device, seed), reduction=reduction)
    judge.idle_rows(problem, judge.call(problem))

"""Rows that count for nothing: an ignored (padding) position and a position whose target class
has weight 0 contribute exactly 0 to the loss and the gradient whatever their logits hold, and
nothing of them leaks into the reduction or the other rows (TRL PR #7252's entropy: ``0 * -inf``
is NaN). Deterministic cases in every dtype; the property tests draw such rows on some seeds only.

The logits such rows hold here are ``-inf`` (masked classes) and the dtype's largest finite
magnitude, 1e30 where the dtype holds it. ``+inf``, NaN and a row masked whole are left out: torch
2.13's own loss gives those rows a NaN gradient (``0 - softmax * 0`` over a NaN softmax) and NaN
for a zero-weight target at ``-inf`` (``0 * inf``), as the kit's float64 formula fixtures do.
"""
import pytest
import torch

from conformance import cases
from conformance.forms import Show
from conformance.vocabulary import dtype_name

IDLE = (1, 4)   # the rows that count for nothing, among 6 rows of 7 classes
KINDS = [pytest.param("ignored", marks=pytest.mark.feature("ignore_index")),
         pytest.param("zero weight", marks=pytest.mark.feature("weight"))]
FILLS = ("-inf", "huge")


def _fill(fill: str, dtype: torch.dtype) -> str:
    return "float('-inf')" if fill == "-inf" else repr(min(1e30, torch.finfo(dtype).max))


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
        f"logits[{list(IDLE)}, 2] = logits[{list(IDLE)}, 5] = {_fill(fill, dtype)}",
        weight,
        f"logits = logits.to(torch.{dtype_name(dtype)})"]))
    return cases.from_recipe(f"rows that count for nothing ({kind}, {fill})", recipe, device)


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_rows_that_count_for_nothing(judge, device, dtype, reduction, kind, fill, seed):
    """The idle rows' loss ('none') and gradient are exactly 0, and every other row and the
    reduction are judged against the truth, in which the idle rows are absent."""
    problem = cases.problem(_case(kind, fill, dtype, device, seed), reduction=reduction)
    out = judge.conforms(problem)
    rows = list(IDLE)
    if reduction == "none":
        judge.exactly("rows that count for nothing: loss", problem, out.loss[rows], torch.zeros(len(rows)),
                      show=Show(f"loss[{rows}]", "0.0"))
    if out.grad is not None:
        judge.exactly("rows that count for nothing: gradient", problem, out.grad[rows],
                      torch.zeros(out.grad[rows].shape), show=Show(f"x.grad[{rows}]", "0.0"))

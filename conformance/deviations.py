"""What each declared deviation (``vocabulary.DEVIATIONS``) changes, as data in one table (torch
OpInfo's ``DecorateInfo`` is the model): the checks it concerns, what it allows there, and the
reason of the expected failure it makes. A check asks the judge one question
(``Judge.deviation``): the judge applies the entries of the deviations the implementation declares
(``Expectations.deviations``), so no test body writes a reason or decides what a deviation explains.

A deviation with no ``explains`` is never an expected failure: it changes how a check judges
(``simplex_gradient``, ``nondeterministic``: their own bounds, in ``tolerance``; ``overwrites_logits``
also where a check calls twice or reads the storage around a view: ``Judge.declares``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .cases import Problem
from .vocabulary import HALF_DTYPES, dtype_name

__all__ = ["Deviation", "TABLE", "OVERWRITABLE"]

# The names under which a check reports that the call wrote into the caller's logits (``distributed.ARGUMENTS``).
OVERWRITABLE = frozenset({"logits", "logits shard"})


@dataclass(frozen=True)
class Deviation:
    """One deviation: the ``checks`` (test names) it concerns, what it ``allows`` there (in words),
    and, where it makes an expected failure, the problems it ``concerns``, the ``expected`` value
    the loss gives instead of torch's (a loss that declares it must give it) or whether it
    ``explains`` the observation a check hands over, and the ``reason`` (``{observed}``: the
    observation in words, ``{dtype}``: the problem's)."""

    name: str
    checks: tuple
    allows: str
    reason: str = ""
    expected: Optional[float] = None
    explains: Optional[Callable[[object], bool]] = None
    concerns: Callable[[Problem], bool] = lambda problem: True

    def reason_for(self, problem: Problem, observed) -> str:
        words = " and ".join(sorted(observed)) if isinstance(observed, (set, frozenset)) else str(observed)
        return f"declared deviation {self.name}: {self.reason.format(observed=words, dtype=dtype_name(problem.dtype))}"


TABLE = {entry.name: entry for entry in (
    Deviation("all_ignored_mean_zero", ("test_empty_batch", "test_all_targets_ignored"),
              "reduction='mean' over no kept position gives 0 (torch: NaN); the gradient is still 0",
              reason="mean over no kept position is 0, torch gives NaN (Liger#153)", expected=0.0,
              concerns=lambda problem: problem.options.reduction == "mean"),
    Deviation("overwrites_logits", ("test_inputs_never_modified", "test_vocab_parallel_leaves_its_arguments_unchanged",
                                    "test_noncontiguous_logits", "test_target_view_at_storage_offset",
                                    "test_target_layouts", "test_kdim_layouts", "test_gradients_accumulate"),
              "forward or backward writes into the logits' elements (their storage outside the view, the target, "
              "the weights and the upstream gradient stay unchanged); a check that calls twice hands them anew",
              reason="the call overwrote the {observed}",
              explains=lambda changed: bool(changed) and set(changed) <= OVERWRITABLE),
    Deviation("float32_output", ("test_output_shape_and_dtype",),
              "a float32 loss for float16/bfloat16 inputs (every other dtype gives its own)",
              reason="a float32 loss for {dtype} inputs",
              explains=lambda dtype: dtype == torch.float32, concerns=lambda problem: problem.dtype in HALF_DTYPES),
    Deviation("simplex_gradient", ("test_gradient_is_softmax_minus_target", "test_masked_vocabulary",
                                   "test_wide_masked_prefix"),
              "every gradient of the logits form judged after projecting each position onto its sum-zero "
              "subspace (tolerance.identities, Gradient along the simplex); masked classes hold one value per "
              "position, not 0"),
    Deviation("nondeterministic", ("test_value_matches_truth", "test_gradient_is_softmax_minus_target"),
              "a second call on identical inputs within the bound of a reordered sum (tolerance.limits, run to run) "
              "instead of bitwise equal"),
)}

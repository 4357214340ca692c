"""The covering design: which cases the design-driven checks run.

A bug that needs two things at once (a path a large vocabulary takes, judged in float32; a cap
mistake at a small cap; a target-path mistake when the target is the row's maximum) goes through
a suite that meets each parameter in one place. So each family of checks names the factors its
cases draw from (``FACTORS``) and runs the rows of a covering array of strength ``t`` over them:
every combination of levels of any ``t`` factors meets in at least one case (2 by default, 3 in
the deep run), a few dozen cases instead of the product of thousands.

The array comes from covertable (pinned in pyproject.toml): a greedy construction with declarative
constraints whose ``salt`` makes it deterministic for the run's ``--conformance-seed``. Checked
beside it on PyPI: allpairspy 2.5.1 (no seed, constraints only as a filter of partial rows) and
pypict 0.3.0 (a native build). Combinations a constraint forbids (LLM-shaped logits need a
vocabulary of at least 32000) are not required; ``Design.covered`` counts what the rows cover of
the rest, and the self-test (tests/test_design.py) proves it is all of it for every family.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from covertable import make, sorters

__all__ = ["FACTORS", "WIDTHS", "LLM_WIDTHS", "Design", "design", "feasible", "strength"]

# (rows, classes) of each width class: a small problem, one class past a block of 1024, one past
# the 4096 block, and the vocabularies of Llama 2 (32000) and Qwen 2 (151936, past nine blocks of
# 16384 and not a multiple of it), kept to two rows.
WIDTHS = {"small": (12, 37), "block": (3, 1025), "wide": (2, 4097), "vocab": (2, 32000), "huge": (2, 151936)}
LLM_WIDTHS = ("vocab", "huge")   # LLM-shaped logits (cases.LOGIT_DISTRIBUTIONS) need a real vocabulary

_COMMON = {
    "dtype": ("float64", "float32", "float16", "bfloat16"),
    "reduction": ("none", "mean", "sum"),
    # class weights, every third position ignored, label smoothing 0.1, and all three at once
    "features": ("plain", "weighted", "ignored", "smoothed", "all"),
    # the target among the small logits (below its row's median), at the row's maximum, or at its minimum
    "placement": ("small", "max", "far"),
    "distribution": ("normal", "llm", "peaked", "flat", "capped"),
}

FACTORS = {
    # the value and gradient of torch's loss (test_value.py)
    "value": {**_COMMON, "width": tuple(WIDTHS), "layout": ("contiguous", "strided")},
    # the variants (test_variants.py): each parameter off, small, typical, large and, for the scale,
    # negative; the huge vocabulary is left to the value family
    "variants": {**_COMMON, "width": ("small", "block", "wide", "vocab"),
                 "logit_scale": ("off", "0.0625", "-1.0", "16.0"),
                 "softcap": ("off", "2.5", "30.0", "1000.0"),
                 "z_loss": ("off", "0.0001", "0.001", "0.1")},
}
_VARIANTS = ("logit_scale", "softcap", "z_loss")
_CONSTRAINED = (("distribution", "width"), _VARIANTS)   # the factors each rule of ``feasible`` reads


def feasible(family: str, levels: dict) -> bool:
    """Whether a (partial) assignment of levels can be part of a case of ``family``: LLM-shaped
    logits need a vocabulary, and a variant case has at least one variant on (without one it is the
    value family's case)."""
    if levels.get("distribution") == "llm" and levels.get("width", "vocab") not in LLM_WIDTHS:
        return False
    if family == "variants" and all(name in levels for name in _VARIANTS):
        return any(levels[name] != "off" for name in _VARIANTS)
    return True


def strength(deep: bool) -> int:
    return 3 if deep else 2


@dataclass(frozen=True)
class Design:
    """The rows of one family's covering array and what they cover: ``covered`` of the ``required``
    (feasible) combinations of ``strength`` levels."""

    family: str
    strength: int
    seed: int
    rows: tuple
    covered: int
    required: int

    def describe(self) -> str:
        return (f"{self.family}: {len(self.rows)} cases cover {self.covered} of {self.required} "
                f"{'pairs' if self.strength == 2 else f'{self.strength}-tuples'} of levels")


def _combinations(factors: dict, t: int):
    for names in itertools.combinations(sorted(factors), t):
        for levels in itertools.product(*(factors[name] for name in names)):
            yield tuple(zip(names, levels))


@functools.lru_cache(maxsize=None)
def design(family: str, t: int, seed: int) -> Design:
    """The covering array of strength ``t`` for ``family``, the same for the same seed."""
    factors = FACTORS[family]
    # each constraint names only the factors it reads: covertable checks it as soon as they are set
    constraints = [{"operator": "fn", "requires": list(names), "evaluate": lambda row: feasible(family, row)}
                   for names in _CONSTRAINED if all(name in factors for name in names)]
    made = make({name: list(levels) for name, levels in factors.items()}, strength=t, salt=f"seed-{seed}",
                 sorter=sorters.hash, constraints=constraints)
    rows = tuple({name: row[name] for name in factors} for row in made)
    seen = {tuple((name, row[name]) for name in names)
            for row in rows for names in itertools.combinations(sorted(factors), t)}
    required = [combo for combo in _combinations(factors, t) if feasible(family, dict(combo))]
    return Design(family=family, strength=t, seed=seed, rows=rows,
                  covered=sum(combo in seen for combo in required), required=len(required))

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

from .vocabulary import DTYPE_NAMES, REDUCTIONS, SOFTMAX_UPSTREAM_KINDS, WIDE_DTYPES, dtype_name

__all__ = ["FACTORS", "WIDTHS", "SOFTMAX_WIDTHS", "LINEAR_SIZES", "LLM_WIDTHS", "VARIANT_FACTORS", "Design",
           "design", "feasible", "strength"]

# (rows, classes) of each width class: a small problem, one class past a block of 1024, one past
# the 4096 block, and the vocabularies of Llama 2 (32000) and Qwen 2 (151936, past nine blocks of
# 16384 and not a multiple of it), kept to two rows.
WIDTHS = {"small": (12, 37), "block": (3, 1025), "wide": (2, 4097), "vocab": (2, 32000), "huge": (2, 151936)}
LLM_WIDTHS = ("vocab", "huge")   # LLM-shaped logits (cases.LOGIT_DISTRIBUTIONS) need a real vocabulary
# (rows, width) of the softmax forms' width classes: one below, at and past the 1024 block, past
# the 4096 block, and Llama 2's vocabulary, few rows at the large widths.
SOFTMAX_WIDTHS = {"small": (9, 37), "1023": (3, 1023), "1024": (3, 1024), "1025": (3, 1025), "4097": (2, 4097),
                  "vocab": (1, 32000)}
# The linear family's sizes: hidden sizes (small, odd, wider), vocabularies (small and odd, one past a
# block of 1024, Llama 2's) and row counts (few, one past a chunk of 64, two chunks and a ragged three),
# kept small: each case's float64 truth forms its N x V logits and (V, H) products.
LINEAR_SIZES = {"hidden": {"8": 8, "31": 31, "64": 64},
                "vocab": {"small": 123, "block": 1025, "vocab": 32000},
                "rows": {"few": 5, "chunk": 65, "ragged": 131}}
_WIDE = tuple(map(dtype_name, WIDE_DTYPES))   # a large offset stays a distribution only where its spacing is below 1e-2

_COMMON = {
    "dtype": DTYPE_NAMES,
    "reduction": REDUCTIONS,
    # class weights, every third position ignored, label smoothing 0.1, and all three at once
    "features": ("plain", "weighted", "ignored", "smoothed", "all"),
    # the target among the small logits (below its row's median), at the row's maximum, or at its minimum
    "placement": ("small", "max", "far"),
    "distribution": ("normal", "llm", "peaked", "flat", "capped"),
}
# the softmax forms' logits: cases.LOGIT_DISTRIBUTIONS and a large common offset
_SOFTMAX_DISTRIBUTIONS = ("normal", "llm", "peaked", "flat", "offset")

FACTORS = {
    # the value and gradient of torch's loss (test_value.py)
    "value": {**_COMMON, "width": tuple(WIDTHS), "layout": ("contiguous", "strided")},
    # the variants (test_variants.py): each parameter off, small, typical, large and, for the scale,
    # negative; the huge vocabulary is left to the value family
    "variants": {**_COMMON, "width": ("small", "block", "wide", "vocab"),
                 "logit_scale": ("off", "0.0625", "-1.0", "16.0"),
                 "softcap": ("off", "2.5", "30.0", "1000.0"),
                 "z_loss": ("off", "0.0001", "0.001", "0.1")},
    # the softmax forms' output and gradient (test_softmax.py, test_log_softmax.py): along the last
    # dim or another (any_dim), fed each upstream gradient kind, contiguous or a strided view
    "softmax": {"dtype": DTYPE_NAMES, "width": tuple(SOFTMAX_WIDTHS), "dim": ("last", "not_last"),
                "upstream": SOFTMAX_UPSTREAM_KINDS, "distribution": _SOFTMAX_DISTRIBUTIONS,
                "layout": ("contiguous", "strided")},
    # the softmax variants: a scale small, negative or large, a cap small or large, a random mask, on
    # attention scores (rows of keys, not a vocabulary: no LLM-shaped logits)
    "softmax_variants": {"dtype": DTYPE_NAMES, "width": ("small", "1025", "4097"),
                         "distribution": tuple(d for d in _SOFTMAX_DISTRIBUTIONS if d != "llm"),
                         "scale": ("off", "0.0625", "-2.0", "8.0"),
                         "softcap": ("off", "2.0", "50.0"), "mask": ("off", "random")},
    # the linear losses (test_linear.py): sizes around chunks and blocks, hidden states standard
    # normal, of one sign (a ReLU's), or aligned with their target's weight (confident rows)
    "linear": {"dtype": DTYPE_NAMES, "reduction": REDUCTIONS, "features": _COMMON["features"],
               **{name: tuple(sizes) for name, sizes in LINEAR_SIZES.items()},
               "distribution": ("normal", "positive", "confident"), "bias": ("on", "off")},
}
VARIANT_FACTORS = {"variants": ("logit_scale", "softcap", "z_loss"), "softmax_variants": ("scale", "softcap", "mask")}
# the factors each rule of ``feasible`` reads
_CONSTRAINED = (("distribution", "width"), ("distribution", "dtype"), ("vocab", "rows"), ("vocab", "hidden"),
                ("distribution", "vocab", "rows"), *VARIANT_FACTORS.values())


def feasible(family: str, levels: dict) -> bool:
    """Whether a (partial) assignment of levels can be part of a case of ``family``: LLM-shaped
    logits need a vocabulary; a large offset (1e4) needs float32 or float64 (float16's spacing
    there is 8, bfloat16's 64: the row is a few steps, not a distribution); a variant case has at
    least one variant on (without one it is the plain family's case); a linear case with
    confident rows has a distinct target per row (rows <= vocabulary), and a real vocabulary is
    met with few rows and the small hidden size (5 x 8 x 32000, near test_linear_at_scale's: the
    float64 truth's (V, H) products cost 0.1 s a case there, 1 s at H = 128)."""
    distribution, vocab, rows = levels.get("distribution"), levels.get("vocab"), levels.get("rows")
    if distribution == "llm" and levels.get("width", "vocab") not in LLM_WIDTHS:
        return False
    if distribution == "offset" and levels.get("dtype", "float64") not in _WIDE:
        return False
    if vocab == "vocab" and (rows not in (None, "few") or levels.get("hidden", "8") != "8"):
        return False
    if distribution == "confident" and vocab and rows and LINEAR_SIZES["rows"][rows] > LINEAR_SIZES["vocab"][vocab]:
        return False
    variants = VARIANT_FACTORS.get(family, ())
    if variants and all(name in levels for name in variants):
        return any(levels[name] != "off" for name in variants)
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

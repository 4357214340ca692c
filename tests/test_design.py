"""The covering design (conformance.design): every combination of levels of any t factors meets in
some case, for every family (the logits loss's value and variants, the softmax forms and their
variants, the linear losses), at strength 2 (the default run) and 3 (the deep run), counted here
by brute force apart from the design's own count, and only what cannot be left out; the same rows
for the same seed; and the LLM-shaped logits every family draws hold their long tail in every dtype."""
import itertools
import json

import pytest
import torch

from conformance import cases, design
from conformance.vocabulary import DTYPES

# Per family, combinations that cannot be (design.feasible): the rows never hold them, and only
# they (and what holds them) are left out of the count of what the rows must cover.
INFEASIBLE = {
    "value": [{"distribution": "llm", "width": "small"}],
    "variants": [{"distribution": "llm", "width": "block"},
                 {"logit_scale": "off", "softcap": "off", "z_loss": "off"}],
    "softmax": [{"distribution": "llm", "width": "1025"}, {"distribution": "offset", "dtype": "bfloat16"}],
    "softmax_variants": [{"distribution": "offset", "dtype": "float16"},
                         {"scale": "off", "softcap": "off", "mask": "off"}],
    "linear": [{"vocab": "vocab", "rows": "chunk"}, {"vocab": "vocab", "hidden": "64"},
               {"distribution": "confident", "vocab": "small", "rows": "ragged"}],
}


def test_every_family_states_what_it_cannot_be():
    assert set(INFEASIBLE) == set(design.FACTORS)
    for family, combinations in INFEASIBLE.items():
        assert all(not design.feasible(family, combination) for combination in combinations), family


@pytest.mark.parametrize("strength", [2, 3])
@pytest.mark.parametrize("family", list(design.FACTORS))
def test_every_combination_of_levels_meets_in_a_case(family, strength):
    factors = design.FACTORS[family]
    built = design.design(family, strength, 0)
    missing = []
    for names in itertools.combinations(factors, strength):
        for levels in itertools.product(*(factors[name] for name in names)):
            wanted = dict(zip(names, levels))
            if design.feasible(family, wanted) and not any(
                    all(row[name] == level for name, level in wanted.items()) for row in built.rows):
                missing.append(wanted)
    assert not missing, missing[:5]
    assert built.covered == built.required > 0
    assert all(design.feasible(family, row) for row in built.rows)
    for infeasible in INFEASIBLE[family]:
        assert not any(all(row[k] == v for k, v in infeasible.items()) for row in built.rows), infeasible


def test_the_design_is_the_same_for_a_seed_and_another_for_another():
    first = design.design("value", 2, 0).rows
    design.design.cache_clear()
    assert design.design("value", 2, 0).rows == first
    assert design.design("value", 2, 1).rows != first


@pytest.mark.parametrize("vocab", [32000, 50257, 128256, 151936, 262144])
def test_llm_shaped_logits_hold_a_long_tail_in_every_dtype(vocab):
    """One to three large logits, and classes each below 1e-5 that together hold at least 5 % of
    the probability, after rounding to every dtype, for several seeds."""
    for seed in range(3):
        namespace = {"torch": torch}
        exec("\n".join([f"g = torch.Generator().manual_seed({seed})", *cases.logits_lines("llm", 4, vocab)]),
             namespace)
        for dtype in DTYPES:
            p = namespace["z"].to(dtype).double().softmax(1)
            tail = torch.where(p < 1e-5, p, 0.0).sum(1)
            assert bool((tail >= 0.05).all()), (vocab, seed, dtype, tail)
            large = (p > 0.1).sum(1)
            assert bool(((large >= 1) & (large <= 3)).all()), (vocab, seed, dtype, large)


def test_the_run_says_the_design_strength_and_the_pairs_it_covers(suite, pytester):
    report = pytester.path / "run.json"
    result = suite("-k", "over_the_design and float64", f"--conformance-report={report}")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    built = {family: design.design(family, 2, 0) for family in ("value", "softmax", "linear")}
    result.stdout.fnmatch_lines(["Covering design: strength 2, seed 0*"] + [
        f"*{family} *{len(d.rows)}*{d.covered} of {d.required} pairs*" for family, d in built.items()])
    recorded = json.loads(report.read_text())["environment"]["design"]
    assert recorded["strength"] == 2
    # the families whose rows torch's losses and softmax forms judge; the variants' rows are all unsupported
    assert {family: d["covered"] for family, d in recorded["families"].items()} == {
        family: d.covered for family, d in built.items()}

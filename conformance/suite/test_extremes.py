"""Extreme logits: huge, shifted, masked with -inf, +inf and NaN, confident and peaked rows, and
class counts that leave tiling remainders. Values and gradients, every dtype where representable."""
import pytest
import torch
import torch.nn.functional as F

from conformance import cases
from conformance.forms import Show
from conformance.forms import logits as logits_form
from conformance.vocabulary import DTYPES, WIDE_DTYPES, dtype_name

# A subset on purpose: sum is mean times the kept count, so it adds no extreme of its own.
REDUCTIONS = ["none", "mean"]


def _case(family: str, dtype: torch.dtype, device: str, body: str, *, n: int = 6, c: int = 10, seed: int = 0):
    """Standard-normal float64 ``z`` and a random target, transformed by ``body`` into ``logits``."""
    recipe = f"""
torch.default_generator.manual_seed({seed})
z = torch.randn({n}, {c}, dtype=torch.float64)
target = torch.randint({c}, ({n},))
{body.strip()}
logits = logits.to(torch.{dtype_name(dtype)})
"""
    return cases.from_recipe(family, recipe, device)


def _limit(dtype: torch.dtype, c: int) -> float:
    """A magnitude whose loss (at most twice it) stays finite in the dtype."""
    return float(torch.finfo(dtype).max) / (4 * c)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_logits(judge, device, dtype, reduction, seed):
    m = _limit(dtype, 10)
    case = _case("huge", dtype, device, f"logits = (z * 1e4).clamp(-{m!r}, {m!r})", seed=seed)
    judge.conforms(cases.problem(case, reduction=reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logits_near_largest_finite(judge, device, dtype, reduction, seed):
    case = _case("near_max", dtype, device, f"logits = z.sign() * {_limit(dtype, 10)!r}", seed=seed)
    judge.conforms(cases.problem(case, reduction=reduction))


SHIFTS = [(dt, s) for dt in DTYPES for s in (1e3,)] + [(dt, 1e30) for dt in WIDE_DTYPES]


@pytest.mark.parametrize("dtype,shift", SHIFTS, ids=lambda v: dtype_name(v) if isinstance(v, torch.dtype) else f"{v:g}")
def test_large_common_shift(judge, device, dtype, shift, seed):
    """Adding a constant to a row changes nothing: a kernel that forms lse = m + log s and then
    subtracts the target logit loses log s under a large shift."""
    case = _case("shifted", dtype, device, f"logits = z + {shift!r}", seed=seed)
    judge.conforms(cases.problem(case, reduction="none"))


def test_rows_of_very_different_scales(judge, device, dtype, seed):
    """Per-row, not per-batch, max subtraction: rows scaled from 1e-2 to 1e3 in one batch."""
    body = "logits = z * torch.logspace(-2, 3, z.shape[0], dtype=torch.float64)[:, None]"
    judge.conforms(cases.problem(_case("mixed_scales", dtype, device, body, n=8, seed=seed), reduction="none"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_vocabulary(judge, device, dtype, reduction, seed):
    """-inf on non-target classes: finite loss, exactly zero gradient there."""
    body = """
mask = torch.rand(z.shape, generator=torch.Generator().manual_seed(5)) < 0.5
mask[torch.arange(z.shape[0]), target] = False
logits = z.masked_fill(mask, float('-inf'))
"""
    problem = cases.problem(_case("masked", dtype, device, body, seed=seed), reduction=reduction)
    out = judge.conforms(problem)
    judge.masked_gradient(problem, out.grad, torch.isneginf(problem.case.logits),
                          show=Show("x.grad[torch.isneginf(x.detach())].abs().max()", "0.0"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_leading_blocks_masked(judge, device, dtype, reduction, seed):
    """The first 256 of 300 classes -inf in every row: online-softmax kernels that rescale by
    exp(-inf - -inf) produce NaN (flash-attention#1930)."""
    body = """
target = 256 + target % 44
logits = z.clone()
logits[:, :256] = float('-inf')
"""
    judge.conforms(cases.problem(_case("leading_masked", dtype, device, body, c=300, seed=seed), reduction=reduction))


def test_nonfinite_logits_stay_in_their_row(impl, judge, device, dtype, seed):
    """-inf target logit gives +inf; NaN in a row gives NaN in that row only; +inf on a non-target
    class gives torch's NaN or the limit +inf (``reference.Evaluation.loss_limit``), in that row
    only."""
    body = """
logits = z.clone()
logits[1, target[1]] = float('-inf')
logits[2, (target[2] + 1) % z.shape[1]] = float('inf')
logits[4, 0] = float('nan')
"""
    problem = cases.problem(_case("nonfinite", dtype, device, body, seed=seed), reduction="none", upstream=None)
    out = logits_form.forward(impl, problem)
    ev = logits_form.truth(impl, problem, out)
    judge.value(problem, out, ev, identity="non-finite logits stay in their row", also=ev.loss_limit)


CONFIDENCE = [10, 20]


def _confident(dtype, device, margin, seed):
    """The target logit is ``margin`` above the row's max: the loss is tiny (about C e^-margin) but
    representable, and the target component of the gradient is its negative."""
    body = f"logits = z.clone(); logits[torch.arange(z.shape[0]), target] = z.amax(1) + {margin}"
    return _case(f"confident+{margin}", dtype, device, body, seed=seed)


@pytest.mark.parametrize("margin", CONFIDENCE)
def test_confident_rows_value(impl, judge, device, dtype, margin, seed):
    problem = cases.problem(_confident(dtype, device, margin, seed), reduction="none", upstream=None)
    out = logits_form.forward(impl, problem)
    judge.value(problem, out, logits_form.truth(impl, problem, out), identity="confident rows: value")


@pytest.mark.feature("backward")
@pytest.mark.parametrize("margin", CONFIDENCE)
def test_confident_rows_gradient(impl, judge, device, dtype, margin, seed):
    """The target component 1 - p_y must keep its relative accuracy (Liger#1268)."""
    problem = cases.problem(_confident(dtype, device, margin, seed), reduction="none", upstream="expanded")
    out = logits_form.forward_backward(impl, problem)
    judge.gradient(problem, out, logits_form.truth(impl, problem, out), identity="confident rows: gradient")


def test_peaked_rows_where_softmax_underflows(impl, judge, device, dtype, seed):
    """The target's logit 1000 below the max: its probability underflows to 0 in every dtype, so
    the document's third path, log(softmax), returns inf; the implementation must stay finite."""
    body = "logits = z.clone(); logits[torch.arange(z.shape[0]), target] = z.amax(1) - 1000"
    case = _case("peaked", dtype, device, body, seed=seed)
    document_third_path = F.nll_loss(torch.log(F.softmax(case.logits, 1)), case.target, reduction="none")
    assert bool(torch.isinf(document_third_path).all()), "log(softmax) was expected to overflow to inf here"
    judge.conforms(cases.problem(case, reduction="none"))


LARGE_CLASS_COUNTS = [32000, 50257, 2 ** 17 + 1]


# float32 and float64 at these widths are the covering design's (test_value.py's vocab and huge
# widths in every dtype); the default run keeps the half dtypes here, every dtype when deep.
@pytest.mark.default_dtypes(torch.float16, torch.bfloat16)
@pytest.mark.parametrize("num_classes", LARGE_CLASS_COUNTS)
def test_large_class_counts(judge, device, dtype, num_classes, seed):
    """Vocabulary sizes that are not powers of two, batch 3: tiling remainders in both dimensions."""
    case = cases.well_conditioned(3, num_classes, dtype, device, seed=seed, family="large_vocabulary")
    judge.conforms(cases.problem(case, reduction="mean"))

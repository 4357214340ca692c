"""Softmax kernels (``FORM = "softmax"``; ``test_log_softmax`` runs the same checks on the
log-softmax form): the output and its vector-Jacobian product against the float64 truth under the
bounds of ``tolerance.softmax``, on the cases where softmax kernels break: widths around
block sizes, a dim other than the last, strided views, offsets, underflow, and non-finite rows
that must stay in their row; rows that sum to 1, the inputs left as they were, and the document's
paths built from the implementation's pieces.
"""

import pytest
import torch

from conformance import cases, designed
from conformance.forms import Show
from conformance.forms.softmax import UPSTREAM_KINDS, softmax_problem
from conformance.judge.snippet import Steps
from conformance.softmax import SoftmaxVariant, evaluate_softmax
from conformance.vocabulary import DTYPES, dtype_name

FORM = "softmax"

WIDE = (torch.float64, torch.float32)


def _randn(shape: tuple, dtype: torch.dtype, seed: int, body: str = "", scale: float = 3.0) -> str:
    """A recipe of ``x``: normal entries times ``scale``, then ``body`` in float64, rounded to ``dtype``."""
    lines = [f"torch.default_generator.manual_seed({seed})",
             f"x = torch.randn({tuple(shape)}, dtype=torch.float64) * {scale!r}"]
    lines += [body] if body else []
    return "\n".join(lines + [f"x = x.to(torch.{dtype_name(dtype)})"])


def _checked(judge, problem):
    """What the call must not do (change its input, return another dtype), then every quantity of
    the call against the truth."""
    problem = judge.as_supported(problem)
    out = judge.call(problem)
    if not ((out.fed == out.input) | (out.fed.isnan() & out.input.isnan())).all():
        judge.fail("input unchanged", problem, "the call modified its input", show=Show("x", "'x as built'"))
    if out.output.dtype != problem.dtype:
        judge.fail("output dtype", problem, f"returned {out.output.dtype} for {problem.dtype}",
                   show=Show("y.dtype", f"torch.{dtype_name(problem.dtype)}"))
    return judge.conforms(problem, out)


# name -> (shape, dim): the last, first and a middle dim of 2-D, 3-D and 4-D (attention-shaped) inputs.
SHAPES = {"rows": ((9, 100), -1), "single_column": ((7, 1), -1), "first_dim": ((37, 5, 3), 0),
          "middle_dim": ((3, 41, 5), 1), "attention_last": ((2, 3, 5, 33), -1), "attention_heads": ((2, 17, 4, 3), 1)}


# The default run takes the shapes the covering design (test_output_and_gradient_over_the_design)
# does not pose, with a random upstream gradient; --conformance-deep every pair. The design's rows
# are 2-D along the last dim or the first (the outermost, as first_dim's), with each upstream
# gradient, in every dtype.
_DEFAULT_PAIRS = [(shape, "random") for shape in ("single_column", "middle_dim", "attention_last", "attention_heads")]
ANY_DIM = pytest.mark.feature("any_dim")


def _dim_marks(shape: str) -> list:
    """A shape along a dim other than the last needs ``any_dim`` (a kernel of the last dim only
    declares it unsupported)."""
    size, dim = SHAPES[shape]
    return [ANY_DIM] if dim % len(size) != len(size) - 1 else []


PAIRS = [pytest.param(shape, upstream, id=f"{shape}-{upstream}",
                      marks=_dim_marks(shape) + ([] if (shape, upstream) in _DEFAULT_PAIRS else [pytest.mark.deep]))
         for shape in SHAPES for upstream in UPSTREAM_KINDS]
# Costly checks run in two dtypes by default (plugin: default_dtypes), every dtype when deep.
DEFAULT_DTYPES = (torch.float32, torch.bfloat16)


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("shape,upstream", PAIRS)
def test_value_and_gradient(judge, device, dtype, shape, upstream, seed):
    """The output and the VJP with a random, a scalar broadcast (stride 0) and a transposed upstream gradient."""
    size, dim = SHAPES[shape]
    _checked(judge, softmax_problem(shape, _randn(size, dtype, seed), device, dim, upstream=upstream))


@pytest.mark.design("softmax")
def test_output_and_gradient_over_the_design(judge, device, dtype, row, seed):
    """One row of the softmax forms' covering design: widths at block boundaries and a
    vocabulary's, the dim, the upstream gradient, the distribution (an LLM's long tail, a large
    offset) and the layout, every pair met in some row (a path wrong only past a block in float32
    along another dim shows here)."""
    index, levels = row
    _checked(judge, softmax_problem(device=device, **designed.softmax_arguments(levels, index, seed)))


# Widths around the block sizes kernels tile by (2^k - 1, 2^k, 2^k + 1) and odd widths between 512
# and 1024 (pytorch#147284); the default run takes 15 to 17, --conformance-deep all of them. The
# design's widths 1023 to 1025 and 4097 meet every dtype and its all-negative rows (offset) there.
DEFAULT_WIDTHS = [15, 16, 17, 1023, 1024, 1025, 4097]
DESIGNED_WIDTHS = {1023, 1024, 1025, 4097}
DEEP_WIDTHS = sorted(({2 ** k + d for k in range(4, 18) for d in (-1, 0, 1)} | set(range(513, 1024, 34)))
                     - set(DEFAULT_WIDTHS))


def _widths():
    return [pytest.param(w, d, id=f"{w}-{dtype_name(d)}", marks=[pytest.mark.deep] * (w in DESIGNED_WIDTHS))
            for i, w in enumerate(DEFAULT_WIDTHS) for d in (DTYPES[i % len(DTYPES)],)] + \
           [pytest.param(w, d, id=f"{w}-{dtype_name(d)}", marks=pytest.mark.deep) for w in DEEP_WIDTHS for d in DTYPES]


@pytest.mark.parametrize("width,dtype", _widths())
def test_block_widths(judge, device, width, dtype, seed):
    """All-negative rows at a width around a block size: a tail block loaded without a -inf fill
    adds exp(0 - m) terms; a max started at 0 underflows the row."""
    rows = 3 if width > 5000 else 5
    _checked(judge, softmax_problem(f"width {width}", _randn((rows, width), dtype, seed, "x = -x.abs() - 20"),
                                    device))


# Row counts at and past a launch grid's 65535 limit on one axis (a kernel launching a program per
# row wraps or drops the rest) and past a persistent kernel's program count (a loop over rows with
# the wrong stride: Liger PRs #1139, #1147): the default run takes one, --conformance-deep all.
ROW_COUNTS = [pytest.param(rows, marks=[] if rows == 65537 else [pytest.mark.deep]) for rows in (65535, 65536, 65537)]


@pytest.mark.default_dtypes(torch.float32)
@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_rows_past_the_grid_limit(judge, device, dtype, rows, seed):
    """Every row of a tall input, each normalised on its own: a row past the grid or the persistent
    loop's last program left unwritten, or written with another row's values, fails."""
    _checked(judge, softmax_problem(f"{rows} rows", _randn((rows, 3), dtype, seed), device))


# name -> (the recipe's body over x (9, 65), the dtypes it is stated for).
EXTREMES = {
    "all_negative": ("x = -x.abs() - 30", DTYPES),
    "constant_rows": ("x[:] = 2.5", DTYPES),
    "offset_plus_1e4": ("x = x + 1e4", WIDE),
    "offset_minus_1e7": ("x = x - 1e7", WIDE),
    "peaked_underflow": ("x[:, 3] += 120", DTYPES),
    "neg_inf_entries": ("x[:, ::3] = float('-inf')", DTYPES),
}


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("extreme", EXTREMES)
def test_extremes(judge, device, dtype, extreme, seed):
    """Rows where kernels lose accuracy or the row: offsets (pytorch#38839 at -1e7), probabilities
    that underflow to 0 or to subnormals, -inf entries (exactly 0 and zero gradient)."""
    body, dtypes = EXTREMES[extreme]
    if dtype not in dtypes:
        pytest.skip(f"{extreme} is not representable in {dtype_name(dtype)}")
    _checked(judge, softmax_problem(extreme, _randn((9, 65), dtype, seed, body), device))


# name -> the row made non-finite: its output is NaN (torch's), every other row untouched.
NONFINITE_ROWS = {"all_neg_inf": "x[2] = float('-inf')", "nan": "x[2, 7] = float('nan')",
                  "pos_inf": "x[2, 7] = float('inf')"}


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("row", NONFINITE_ROWS)
def test_nonfinite_row_stays_in_its_row(judge, device, dtype, row, seed):
    """A row of -inf, or holding NaN or +inf, is NaN (torch's); it never leaks into other rows, and
    a NaN dropped by the max reduce (torch-xpu-ops PR #5022) gives a finite row where NaN is due."""
    _checked(judge, softmax_problem(f"{row} row", _randn((5, 40), dtype, seed, NONFINITE_ROWS[row]), device,
                                    upstream=None))


# name -> how the fed view is made from a contiguous tensor x0. A slice's strides are the design's
# strided layout (every second element, each width and dtype): it runs in the deep run only.
LAYOUTS = {"transposed": "x = x0.t()", "sliced": "x = x0[::2, 1:-1]", "expanded": "x = x0[:1].expand(6, -1)"}


@pytest.mark.feature("noncontiguous")
@pytest.mark.default_dtypes(torch.float32, torch.float16)
@pytest.mark.parametrize("layout", [pytest.param(name, marks=[pytest.mark.deep] * (name == "sliced"))
                                    for name in LAYOUTS])
def test_strided_input(judge, device, dtype, layout, seed):
    """A transposed, sliced or expanded (stride 0) view, read through its strides (FlagGems PR #5723)."""
    recipe = _randn((37, 12), dtype, seed).replace("x =", "x0 =").replace("x.to(", "x0.to(") + "\n" + LAYOUTS[layout]
    _checked(judge, softmax_problem(layout, recipe, device))


@pytest.mark.feature("empty_batch")
@pytest.mark.default_dtypes(torch.float32)
def test_empty_batch(judge, device, dtype):
    problem = softmax_problem("empty batch", _randn((0, 7), dtype, 0), device)
    out = judge.conforms(problem)
    if out.output.shape != problem.input.shape:
        judge.fail("empty batch", problem, f"output shape {tuple(out.output.shape)}", show=Show("y.shape", "(0, 7)"))


# input dtype -> the dtype= argument: a half input computed and returned in float32, and one
# rounded down to a half dtype first.
CASTS = [(torch.float16, torch.float32), (torch.float32, torch.bfloat16)]


@pytest.mark.feature("dtype_argument")
@pytest.mark.parametrize("dtype,cast", CASTS, ids=lambda d: dtype_name(d))
def test_dtype_argument(judge, device, dtype, cast, seed):
    """``dtype=`` casts the input before the operation and the output has that dtype (torch's):
    the value against the truth of the cast input (forward only: the gradient goes back through
    the cast)."""
    _checked(judge, softmax_problem("dtype argument", _randn((9, 65), dtype, seed), device, upstream=None,
                                    cast=cast))


@pytest.mark.default_dtypes(torch.float32, torch.float16)
@pytest.mark.parametrize("width", [7, 1025])
def test_rows_sum_to_one(judge, device, dtype, width, seed):
    """Each row sums to 1 within the sum of its elements' bounds, and every element is in [0, 1]."""
    problem = softmax_problem("rows sum to 1", _randn((9, width), dtype, seed), device, upstream=None)
    out = judge.conforms(problem)
    sev = evaluate_softmax(out.input, -1, "softmax")
    judge.within("rows sum to 1", problem, out.output.double().sum(-1, keepdim=True), torch.ones(9, 1),
                 "softmax row sums", show=Show("y.double().sum(-1)[{at}[0]].item()", "1.0"), sev=sev)
    outside = (out.output < 0) | (out.output > 1)
    if bool(outside.any()):
        judge.fail("elements in [0, 1]", problem, f"{int(outside.sum())} elements outside [0, 1], e.g. "
                   f"{out.output[outside][0].item()!r}", show=Show("y.min().item(), y.max()", "'[0, 1]'"))


# Variants (README, "Softmax variants"): run only for an implementation that declares them (the
# ``feature`` marks), otherwise listed as "not taken". Inputs are attention scores (B, H, Sq, Sk).
# A recipe that defines ``mask`` (True takes part) poses the problem under it; the random masks
# drop about 30 % of the entries and broadcast over the heads (mask (B, 1, Sq, Sk)).
_MASK = "mask = torch.rand({shape}) > 0.3"


def _mask(shape: tuple, *lines: str) -> str:
    return "\n".join([_MASK.format(shape=(shape[0], 1) + tuple(shape[2:]))] + list(lines))


def _variant_problem(family: str, shape: tuple, body: str, dtype, device, seed: int, options: dict):
    return softmax_problem(family, _randn(shape, dtype, seed, body), device, variant=SoftmaxVariant(**options))


def _variant_params(table: dict) -> list:
    return [pytest.param(name, id=name, marks=[pytest.mark.feature(*features)])
            for name, (*_, features) in table.items()]


# name -> (shape, the recipe's body, the variant's options, the features it needs). The negative
# scale meets rows whose scaled range passes float32's exp range (a max taken before the scale
# overflows); the small cap saturates, the large one barely bends.
VARIANT_SETTINGS = {
    "scale": ((2, 3, 16, 40), "", dict(scale=0.125), ("scale",)),
    "negative_scale": ((2, 3, 16, 40), "x = x * 6", dict(scale=-2.0), ("scale",)),
    "small_cap": ((2, 3, 16, 40), "x = x * 4", dict(softcap=2.0), ("softcap",)),
    "large_cap": ((2, 3, 16, 40), "x = x * 10", dict(softcap=50.0), ("softcap",)),
    "broadcast_mask": ((2, 3, 16, 40), _mask((2, 3, 16, 40)), {}, ("mask",)),
    "scale_cap_mask_causal": ((2, 3, 12, 40), _mask((2, 3, 12, 40)), dict(scale=-0.5, softcap=5.0, causal=True),
                              ("scale", "softcap", "mask", "causal")),
}


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("setting", _variant_params(VARIANT_SETTINGS))
def test_variant_value_and_gradient(judge, device, dtype, setting, seed):
    """The output and its gradient with the variants on (applied as scale, cap, mask, causal),
    against the float64 truth of the same rounded input: scale applied twice or with the wrong
    sign, a cap in the wrong place, a mask misread show here."""
    shape, body, options, _ = VARIANT_SETTINGS[setting]
    _checked(judge, _variant_problem(setting, shape, body, dtype, device, seed, options))


@pytest.mark.design("softmax_variants")
def test_variant_output_and_gradient_over_the_design(judge, device, dtype, row, seed):
    """One row of the softmax variants' covering design: a scale small, negative or large, a cap
    small or large and a random mask, met with the widths, dtypes and distributions (a cap mistake
    negligible at 50 and large at 2 shows here)."""
    index, levels = row
    _checked(judge, softmax_problem(device=device, **designed.softmax_arguments(levels, index, seed)))


# name -> (B, H, Sq, Sk): square, fewer and more queries than keys (where top-left and bottom-right
# differ; equal lengths pass either, rocm-libraries PR #10999), one query (decoding), and
# sequences below and across 128 (Megatron-LM #132).
CAUSAL_SHAPES = {"square_24": (2, 3, 24, 24), "short_queries": (2, 3, 9, 40), "long_queries": (2, 3, 40, 9),
                 "one_query": (1, 2, 1, 33), "square_129": (1, 2, 129, 129)}


@pytest.mark.feature("causal")
@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("lengths", [pytest.param(name, marks=[pytest.mark.deep] * (name == "square_129"))
                                     for name in CAUSAL_SHAPES])
def test_causal_mask(judge, device, dtype, lengths, seed):
    """A causal mask over (Sq, Sk), aligned as declared (``causal_alignment``): its rows keep the
    keys at or below their diagonal, the others are exactly 0 with gradient 0."""
    _checked(judge, _variant_problem(lengths, CAUSAL_SHAPES[lengths], "", dtype, device, seed, dict(causal=True)))


# name -> the offset of the kept scores: a kernel that fills masked entries with a finite value
# (-10000, -5e4) gives them weight where a kept score lies below its fill (flashinfer PR #4401).
MASKED_OFFSETS = {"kept_near_0": ("", DTYPES), "kept_at_minus_1e5": ("x = x - 1e5", WIDE),
                  "kept_at_plus_1e4": ("x = x + 1e4", WIDE)}


@pytest.mark.feature("mask")
@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("offset", MASKED_OFFSETS)
def test_masked_entries_take_no_part(judge, device, dtype, offset, seed):
    """Every masked entry of a row that keeps one is exactly 0 (-inf for log-softmax) with
    gradient exactly 0, whatever the kept scores' offset."""
    body, dtypes = MASKED_OFFSETS[offset]
    if dtype not in dtypes:
        pytest.skip(f"{offset} is not representable in {dtype_name(dtype)}")
    shape = (2, 3, 8, 40)
    body = "\n".join(filter(None, [body, _mask(shape)]))
    _checked(judge, _variant_problem(offset, shape, body, dtype, device, seed, {}))


# name -> (shape, the recipe's body, the variant's options, the features): rows masked whole by the
# mask (at query 3 of every batch and head), besides one whose input is -inf, and by a causal mask
# with more queries than keys (under bottom_right, the first Sq - Sk rows keep nothing).
FULLY_MASKED = {
    "by_mask": ((2, 3, 10, 24), _mask((2, 3, 10, 24), "mask[:, :, 3] = False"), {}, ("mask",)),
    "by_mask_and_neg_inf_input": ((2, 3, 10, 24), _mask((2, 3, 10, 24), "mask[:, :, 3] = False",
                                                        "x[1, 2, 6] = float('-inf')"), {}, ("mask",)),
    "by_causal": ((2, 3, 20, 8), "", dict(causal=True), ("causal",)),
}


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
@pytest.mark.parametrize("rows", _variant_params(FULLY_MASKED))
def test_fully_masked_rows_follow_the_declaration(judge, device, dtype, rows, seed):
    """A row that keeps nothing is what ``fully_masked_rows`` declares: NaN (torch's; its gradient
    judged only to stay in its row), 0 (-inf) or 1/n (-log n) with gradient 0; the rows beside it
    are judged as any row."""
    shape, body, options, _ = FULLY_MASKED[rows]
    _checked(judge, _variant_problem(rows, shape, body, dtype, device, seed, options))


def _document_path(form: str) -> tuple:
    """The document's path that uses the implementation's piece, as code over ``x`` and ``target``,
    and whether it takes the log of a probability rounded to the dtype."""
    if form == "softmax":
        return "F.nll_loss(torch.log(impl.along(x, 1)), target)", True
    return "F.nll_loss(impl.along(x, 1), target)", False


@pytest.mark.default_dtypes(*DEFAULT_DTYPES)
def test_document_path_with_the_implementation(judge, impl, device, dtype, seed):
    """The document's paths with the user's piece: ``nll_loss(log(softmax(z)), y)`` or
    ``nll_loss(log_softmax(z), y)`` against the cross-entropy truth (the first with the
    document path's bound for a rounded probability, ``tolerance.document_path_bound``)."""
    case = cases.well_conditioned(64, 4, dtype, device, seed=seed)
    problem = softmax_problem("document path", case.recipe + "\nx = logits", device, 1, upstream=None)
    code, rounded = _document_path(impl.form)
    steps = Steps.replaying(impl, problem)
    steps(*[f"target = target.to({device!r})"] * (device != "cpu"), "import torch.nn.functional as F",
          "from conformance.reference import evaluate", "reference = evaluate(x, target)", f"loss = {code}")
    judge.within(f"document path {code}", problem, steps["loss"], steps["reference"].loss, "document path",
                 show=steps.show("loss.item()", "reference.loss.item()"), ev=steps["reference"],
                 logs_rounded_probability=rounded)


__all__ = ["test_value_and_gradient", "test_output_and_gradient_over_the_design",
           "test_variant_output_and_gradient_over_the_design", "test_block_widths", "test_extremes",
           "test_nonfinite_row_stays_in_its_row",
           "test_strided_input", "test_empty_batch", "test_document_path_with_the_implementation",
           "test_dtype_argument", "test_variant_value_and_gradient", "test_causal_mask",
           "test_masked_entries_take_no_part", "test_fully_masked_rows_follow_the_declaration",
           "test_rows_past_the_grid_limit"]

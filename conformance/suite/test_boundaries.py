"""Kernel-shaped inputs: the sizes where tiled kernels switch paths.

Triton and CUDA losses tile the classes in blocks of a power of two (flash-attention's forward
block is ``min(next_pow2(C), 16384)``), the rows in chunks (2048 and 4096 are common) and launch
one program per row on a grid whose y and z dimensions stop at 65535; they index labels in
narrow integers. Each boundary is a place for a remainder to be dropped, a normalisation to be
done per chunk, an index to wrap. The cases are kept cheap by keeping the other dimension small
(many classes x few rows, many rows x few classes).

The default run covers each boundary once, its dtype and reduction taken in turn
(``sweep`` markers, parametrized by the plugin); ``--conformance-deep`` runs every boundary in
every dtype and reduction.
"""
import pytest
import torch

from conformance import cases
from conformance.forms import Show
from conformance.vocabulary import dtype_name

# Block widths of class tiles: around every power of two from 2^10 to 2^18, and the
# vocabularies of real models (Llama 2, GPT-2, Llama 3, Qwen 2, Gemma).
CLASS_COUNTS = sorted({2 ** k + d for k in range(10, 19) for d in (-1, 0, 1)}
                      | {32000, 50257, 128256, 151936, 262144})
# Row chunks and the CUDA launch-grid limit in y and z (65535 blocks).
ROW_COUNTS = [255, 256, 257, 1023, 1025, 2047, 2048, 2049, 4095, 4097, 8193, 65535, 65536, 65537]


def _wide(n: int, c: int, dtype: torch.dtype, device: str, seed: int, family: str, body: str = "") -> cases.Case:
    """Standard-normal logits (n, c) and targets among each row's classes of probability <= 1/2
    (a loss of at least log 2, the shift-invariant form of cases.well_conditioned's filter, which
    with few classes leaves rows where the logsumexp is larger than the loss), transformed by
    ``body``."""
    recipe = "\n".join([
        f"g = torch.Generator().manual_seed({seed})",
        f"logits = torch.randn(({n}, {c}), dtype=torch.float64, generator=g)",
        f"target = torch.where(logits.softmax(1) <= 0.5, torch.rand(({n}, {c}), generator=g), -1.0).argmax(1)",
        body.strip(),
        f"logits = logits.to(torch.{dtype_name(dtype)})"])
    return cases.from_recipe(family, recipe, device)


@pytest.mark.sweep("num_classes", CLASS_COUNTS)
def test_class_count_boundaries(judge, device, num_classes, dtype, reduction, seed):
    """Two rows of ``C`` classes, ``C`` at and around a block width: a remainder block dropped or
    read past its end shows in the value and the gradient."""
    case = _wide(2, num_classes, dtype, device, seed, "class-count boundary")
    judge.conforms(cases.problem(case, reduction=reduction))


@pytest.mark.sweep("num_rows", ROW_COUNTS)
def test_row_count_boundaries(judge, device, num_rows, dtype, reduction, seed):
    """``N`` rows of 3 classes, ``N`` at and around a chunk size or the launch-grid limit."""
    judge.conforms(cases.problem(_wide(num_rows, 3, dtype, device, seed, "row-count boundary"), reduction=reduction))


# Labels where an int8, uint8, int16, uint16 or a 17-bit index would wrap, in a vocabulary of 2^17 + 1.
WIDE_LABELS = [0, 127, 128, 255, 256, 32767, 32768, 65535, 65536, 65537, 131071, 131072]


@pytest.mark.sweep("num_classes", [2 ** 17 + 1])
def test_labels_across_index_widths(judge, device, num_classes, dtype, reduction, seed):
    """One row per label of ``WIDE_LABELS``: a label stored in a narrow integer reads another class."""
    body = f"target = torch.tensor({WIDE_LABELS})\nlogits[torch.arange({len(WIDE_LABELS)}), target] = -1.0"
    case = _wide(len(WIDE_LABELS), num_classes, dtype, device, seed, "labels across index widths", body)
    judge.conforms(cases.problem(case, reduction=reduction))


LARGE_C = 4099        # past the 4096 block, not a multiple of any power of two
FEATURE_VARIANTS = {
    "weighted": dict(weight=True),
    "ignored": dict(ignore_index=-100),
    "smoothed": dict(smoothing=0.1),
    "weighted+ignored+smoothed": dict(weight=True, ignore_index=-100, smoothing=0.1),
    "probability target": dict(soft_target=True),
    "K-dim": dict(extra_dims=(3,)),
}
FEATURE_MARKS = {"weighted": ["weight"], "ignored": ["ignore_index"], "smoothed": ["label_smoothing"],
                 "weighted+ignored+smoothed": ["weight", "ignore_index", "label_smoothing"],
                 "probability target": ["probability_target"], "K-dim": ["kdim"]}


@pytest.mark.sweep("variant", list(FEATURE_VARIANTS), features=FEATURE_MARKS)
def test_features_at_large_size(judge, device, variant, dtype, reduction, seed):
    """Every feature with ``C = 4099`` classes: weights, ignored rows, smoothing, soft targets
    and K-dim input through the tiled path, not only the small one."""
    options = dict(FEATURE_VARIANTS[variant])
    smoothing = options.pop("smoothing", 0.0)
    n = 3 if "extra_dims" in options else 9
    case = cases.well_conditioned(n, LARGE_C, dtype, device, seed=seed, family=f"large size, {variant}", **options)
    judge.conforms(cases.problem(case, reduction=reduction, label_smoothing=smoothing))


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_name)
def test_ignored_rows_unevenly_spread(judge, device, dtype, reduction, seed):
    """4500 rows, row ``i`` ignored with probability ``i / N``: chunks of rows hold very different
    numbers of kept rows, so a mean normalised per chunk (torchtune PR #1875) differs from the
    global one."""
    body = "target[torch.rand(4500, generator=g) < torch.arange(4500) / 4500] = -100"
    case = _wide(4500, 7, dtype, device, seed, "ignored rows unevenly spread", body)
    judge.conforms(cases.problem(case, reduction=reduction))


# Masked prefixes as wide as the widest block, and masks ending exactly on a block boundary.
MASKED_PREFIXES = [1024, 4096, 16384, 2 ** 17]


@pytest.mark.sweep("prefix", MASKED_PREFIXES)
def test_wide_masked_prefix(judge, device, prefix, dtype, reduction, seed):
    """The first ``prefix`` classes of every row ``-inf``: an online softmax that rescales by
    ``exp(-inf - -inf)`` over whole masked blocks gives NaN (flash-attention#1930 at its own
    block width, 16384); the masked classes get exactly zero gradient."""
    body = f"logits[:, :{prefix}] = float('-inf')\ntarget = {prefix} + target % 77"
    problem = cases.problem(_wide(2, prefix + 77, dtype, device, seed, "wide masked prefix", body),
                            reduction=reduction)
    out = judge.conforms(problem)
    judge.masked_gradient(problem, out.grad, torch.isneginf(problem.case.logits),
                          show=Show(f"x.grad[:, :{prefix}].abs().max()", "0.0"))


# Odd row counts, each problem above torch's parallel grain (32768 elements).
THREADED_SHAPES = [(1023, 65), (4097, 17), (17, 4099)]


@pytest.mark.sweep("shape", THREADED_SHAPES)
def test_values_and_gradients_with_threads(judge, device, shape, dtype, reduction, seed):
    """The kit runs its checks single-threaded (fast for small problems), which hides a CPU
    kernel whose parallel split drops or double-counts rows: these call it with 2 threads and
    odd row counts. The truth and the judging stay on one thread: on two busy cores every op
    split over two threads waits for the slower one, tenfold at times (tests/conftest.py)."""
    case = _wide(*shape, dtype, device, seed, "two threads")
    problem = judge.as_supported(cases.problem(case, reduction=reduction,
                                               note=", 2 threads (torch.set_num_threads(2))"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = judge.call(problem)
    finally:
        torch.set_num_threads(threads)
    judge.conforms(problem, out)

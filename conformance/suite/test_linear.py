"""Linear cross entropy: losses that take the hidden states and the classifier weight and never
materialise the logits (torch's ``linear_cross_entropy``, Liger-Kernel's fused linear loss,
cut-cross-entropy, chunked losses). The value and the gradients with respect to the hidden
states, the weight and the bias are judged against the float64 composition (``linear``) under
the matmul-error bounds of ``tolerance``. The cases are cut where chunked kernels break: sizes
that leave remainders in every dimension, batches of many chunks with a ragged last one, rows
ignored unevenly over the chunks, vocabularies of 32k to 256k, confident rows, and hidden states
of one sign, under which an accumulator kept in the half dtype cannot hide behind cancellation;
and ignored rows whose hidden states make their logits huge, which count for nothing
(test_idle_rows' finite fill; NaN ones are left out: ``dW = dlogits^T h`` is NaN through any matmul).
"""
from dataclasses import replace

import pytest
import torch

from conformance import cases, designed
from conformance.forms import Show, linear
from conformance.vocabulary import dtype_name

FORM = "linear"

# name -> (N, H, V, the case's options, the loss's options). N and V are odd or prime where a
# chunk or block size would otherwise divide them.
CASES = {
    "odd-mean": (47, 31, 123, {}, dict(reduction="mean")),
    "odd_unbiased-none": (47, 31, 123, dict(bias=False), dict(reduction="none")),
    "weighted_ignored_smoothed-sum": (61, 24, 257, dict(weight=True, ignored=True),
                                      dict(reduction="sum", ignore_index=-100, label_smoothing=0.1)),
    "confident-mean": (40, 32, 97, dict(confident=True), dict(reduction="mean")),
    # ignored rows whose huge logits must count for nothing (test_idle_rows' finite fill)
    "ignored_huge-mean": (47, 31, 123, dict(ignored=True, huge_ignored=True), dict(reduction="mean",
                                                                                     ignore_index=-100)),
}
# Where chunking and vocabulary blocks matter, in the dtypes of training (each is 10-50x the
# cost of a case above): vocabularies of 32k and 256k at small N and H; 256 x 8 x 1024 is 128
# row chunks for a loss that sizes them by V / H as torch's chunked path does; 515 x 8 x 512
# leaves a ragged last chunk, with rows ignored unevenly over the chunks.
SCALE_CASES = {
    "vocab_32000-sum": (9, 8, 32000, {}, dict(reduction="sum")),
    "vocab_262144-mean": (2, 4, 262144, {}, dict(reduction="mean")),
    "many_chunks_positive-mean": (256, 8, 1024, dict(positive=True), dict(reduction="mean")),
    "ragged_chunks_ignored-mean": (515, 8, 512, dict(ignored=True), dict(reduction="mean", ignore_index=-100)),
}
SCALE_DTYPES = [torch.float32, torch.bfloat16]
# The cases the linear design (test_linear_over_the_design) covers run in the deep run only: the
# features, reductions, odd sizes, an unbiased loss and confident rows are its levels, each met with
# every dtype, Llama 2's vocabulary its real one and a ragged last chunk with ignored rows its rows.
DESIGNED = {"odd-mean", "odd_unbiased-none", "weighted_ignored_smoothed-sum", "confident-mean", "vocab_32000-sum",
            "ragged_chunks_ignored-mean"}
_FEATURES = {"weight": "weight", "ignore_index": "ignore_index", "label_smoothing": "label_smoothing"}


def _features(case_options: dict, loss_options: dict) -> list:
    named = [feature for key, feature in _FEATURES.items() if key in case_options or key in loss_options]
    return named + ([f"reduction_{loss_options['reduction']}"] if loss_options["reduction"] != "mean" else [])


def _params(table: dict) -> list:
    """Each case with its features and its size: the N x V logits it forms or avoids."""
    return [pytest.param(name, marks=[pytest.mark.feature(*_features(*spec[3:])), pytest.mark.size(spec[0] * spec[2],
                                                                                                     "name")]
                         + [pytest.mark.deep] * (name in DESIGNED))
            for name, spec in table.items()]


def linear_problem(name: str, impl, dtype, device, seed, *, upstream="random") -> cases.Problem:
    """The named case; biased unless the case says otherwise or the implementation takes no bias."""
    n, h, v, case_options, loss_options = {**CASES, **SCALE_CASES}[name]
    case_options = {"bias": "linear_bias" not in impl.unsupported, **case_options}
    case = cases.linear_problem_case(n, h, v, dtype, device, seed=seed, family=f"linear_{name}", **case_options)
    return cases.problem(case, upstream=upstream, **loss_options)


@pytest.mark.parametrize("name", _params(CASES))
def test_linear_loss_and_gradients(judge, device, dtype, name, seed):
    """The loss and the gradients of the hidden states, the weight and the bias."""
    judge.conforms(linear_problem(name, judge.impl, dtype, device, seed))


def _scale_params() -> list:
    """Each scale case in each of SCALE_DTYPES; float32 in the deep run only (float32 is the design's
    at a real vocabulary and at rows of many chunks, with every dtype; bfloat16 is where the
    accumulators of these sizes show)."""
    return [pytest.param(case.values[0], dtype, id=f"{case.values[0]}-{dtype_name(dtype)}",
                         marks=[*case.marks, *[pytest.mark.deep] * (dtype == torch.float32)])
            for case in _params(SCALE_CASES) for dtype in SCALE_DTYPES]


@pytest.mark.parametrize("name,dtype", _scale_params())
def test_linear_at_scale(judge, device, dtype, name, seed):
    """The same at the sizes where chunks and vocabulary blocks break."""
    judge.conforms(linear_problem(name, judge.impl, dtype, device, seed))


@pytest.mark.design("linear")
def test_linear_over_the_design(judge, device, dtype, reduction, row, seed):
    """One row of the linear family's covering design: hidden sizes, vocabularies (one past a
    block, a real one), row counts around chunks, features, reductions and hidden states of one
    sign or confident, every pair met in some row (a loss wrong only in float32 with ignored rows
    at a real vocabulary shows here)."""
    index, levels = row
    judge.conforms(designed.linear_problem(levels, index, device, seed,
                                           bias="linear_bias" not in judge.impl.unsupported))


LIFECYCLE_DTYPES = SCALE_DTYPES


@pytest.mark.parametrize("dtype", LIFECYCLE_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_linear_forward_without_autograd(judge, device, dtype, mode, seed):
    """Evaluation and generation call the loss under no_grad or inference_mode (Liger#930, #1156)."""
    problem = linear_problem("odd-mean", judge.impl, dtype, device, seed, upstream=None)
    with getattr(torch, mode)():
        out = linear.call(judge.impl, problem, backward=False)[0]
    steps = (f"with torch.{mode}():", f"    loss = {linear.call_code(judge.impl, problem)}")
    judge.conforms(problem, out, steps=steps)


# Which inputs require grad: a frozen classifier head (fine-tuning below it), and hidden states
# that do not (a probe trained on frozen features).
SOME_INPUTS = {"frozen_head": ("input",), "frozen_features": ("linear_weight", "linear_bias")}


@pytest.mark.parametrize("dtype", LIFECYCLE_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("which", list(SOME_INPUTS))
def test_linear_gradients_of_some_inputs(judge, device, dtype, which, seed):
    """The gradients of the inputs that require grad, and none for those that do not."""
    problem = linear_problem("odd-mean", judge.impl, dtype, device, seed)
    problem = replace(problem, case=replace(problem.case, requires_grad=SOME_INPUTS[which]))
    out = linear.call(judge.impl, problem)[0]
    for name, grad in out.grads.items():
        if name not in SOME_INPUTS[which] and grad is not None:
            judge.fail(f"{name} gradient", problem, f"{name} does not require grad, yet backward gave it a gradient",
                       show=Show(f"{name}.grad", "None"))
    judge.conforms(problem, out)


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("dtype", LIFECYCLE_DTYPES, ids=dtype_name)
def test_linear_leaves_its_arguments_unchanged(judge, device, dtype, seed):
    """Forward and backward leave the hidden states, weight, bias, target and upstream gradient as
    the caller handed them (a kernel that writes gradients into its inputs, or a buffer it
    reuses between calls, changes them)."""
    problem = linear_problem("ragged_chunks_ignored-mean", judge.impl, dtype, device, seed)
    out, fed = linear.call(judge.impl, problem)
    for name, pristine in {**out.inputs, "target": out.target, "upstream": out.upstream}.items():
        now = fed[name]
        if pristine is not None and not torch.equal(now.detach(), pristine):
            judge.fail("arguments unchanged", problem, f"the call changed its {name} argument "
                       f"({int((now.detach() != pristine).sum())} elements)", show=Show(name, "'unchanged'"))
    judge.conforms(problem, out)


@pytest.mark.parametrize("dtype", LIFECYCLE_DTYPES, ids=dtype_name)
def test_linear_backward_twice(judge, device, dtype, seed):
    """``backward(retain_graph=True)`` twice accumulates twice the gradients (gradient accumulation
    over a shared graph); a loss that refuses it says so clearly (a probed gap)."""
    problem = linear_problem("odd-mean", judge.impl, dtype, device, seed)
    out, fed = linear.call(judge.impl, problem, backward=False)
    grad = problem.upstream_gradient()

    def twice():
        fed["loss"].backward(grad, retain_graph=True)
        fed["loss"].backward(grad)

    judge.probe("retain_graph", problem, twice, "backward twice, the first with retain_graph=True")
    halved = {name: None if fed[name] is None else fed[name].grad / 2 for name in out.inputs}
    judge.conforms(problem, replace(out, grads=halved, upstream=grad.detach().clone()))


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16], ids=dtype_name)
def test_linear_under_autocast(judge, device, autocast, seed):
    """Mixed-precision training: float32 hidden states and weights, the loss called under
    ``torch.autocast`` (Liger#318, #502: dtype mismatches there), backward after it. The result
    may be computed on the inputs or on their roundings to the autocast dtype; the gradients
    arrive in float32, the leaves' dtype."""
    problem = linear_problem("odd-mean", judge.impl, torch.float32, device, seed)
    out = linear.call(judge.impl, problem, autocast=autocast)[0]
    for name, grad in out.grads.items():
        if grad is not None and grad.dtype != torch.float32:
            judge.fail(f"{name} gradient dtype", problem, f"under autocast the {name} gradient is {grad.dtype}, "
                       "not its float32 leaf's dtype", show=Show(f"{name}.grad.dtype", "torch.float32"))
    judge.conforms(problem, out)

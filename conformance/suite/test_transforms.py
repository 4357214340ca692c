"""Second order and transforms: double backward, forward-mode AD and vmap.

For logits the loss of one position is ``A lse(z) - a.z`` (reference: ``a`` the weighted target,
``A = sum_c a_c``), so with ``s`` the upstream gradient over the mean's divisor

    gradient           g = s (A p - a)
    Hessian            H = s A (diag(p) - p p^T)          Hv = s A (p*v - p (p.v))
    directional        <g, t> = s (A p.t - a.t)           (what forward mode computes)

(``reference.Evaluation.hessian_vector`` and ``directional``; their bounds, derived from the
gradient bound, are in ``tolerance``.) Second-order and tangent checks run in float64 and
float32: the contracts bound a half-precision value and gradient, not derivatives or tangents
carried in a half dtype.

Double backward, forward mode and vmap are optional capabilities: where a transform raises,
whatever its words (torch's for an autograd.Function without setup_context, jvp or a vmap rule, a
backward marked once_differentiable, a batching rule torch lacks, an operator of dynamic shape; a
kernel's own), the check reports the capability unsupported (probed); every wrong result fails.
"""

import pytest
import torch

from conformance import cases
from conformance.forms import logits as logits_form
from conformance.forms.protocol import direction_lines, upstream_lines
from conformance.judge import compare
from conformance.judge.snippet import Steps
from conformance.reference import Variant
from conformance.vocabulary import REDUCTIONS, WIDE_DTYPES, dtype_name

# torch.func scripts helpers on first use; the warning is torch's own, not the implementation's.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

EACH_WIDE_DTYPE = pytest.mark.parametrize("dtype", WIDE_DTYPES, ids=dtype_name)

# Plain, and with weights and smoothing (A != 1, every a_c > 0): the Hessian scales with A.
VARIANTS = [
    pytest.param("plain"),
    pytest.param("weighted+smoothed", marks=pytest.mark.feature("weight", "label_smoothing")),
]
# The loss variants (test_variants) under forward mode and vmap: capped logits and the z-loss,
# on logits that reach the cap.
CAPPED_Z_LOSS = "capped+z_loss"
LOSS_VARIANT = Variant(softcap=20.0, z_loss=1e-3)
LOSS_VARIANT_SCALE = 25.0
WITH_LOSS_VARIANT = VARIANTS + [pytest.param(CAPPED_Z_LOSS, marks=pytest.mark.feature("softcap", "z_loss"))]


def _variant_problem(variant: str, n: int, c: int, dtype: torch.dtype, device: str, seed: int, reduction: str, *,
                     upstream) -> cases.Problem:
    weighted, capped = variant == "weighted+smoothed", variant == CAPPED_Z_LOSS
    case = cases.well_conditioned(n, c, dtype, device, seed=seed, weight=weighted, family=f"transforms {variant}",
                                  scale=LOSS_VARIANT_SCALE if capped else 1.0)
    return cases.problem(case, reduction=reduction, label_smoothing=0.15 if weighted else 0.0, upstream=upstream,
                         variant=LOSS_VARIANT if capped else Variant())


@pytest.mark.feature("backward", "double_backward")
@pytest.mark.input_kind("logits")
@EACH_WIDE_DTYPE
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hessian_vector_product(impl, judge, device, dtype, reduction, variant, seed):
    """grad of <dL/dz, v> is s A (diag(p) - p p^T) v per position."""
    problem = _variant_problem(variant, 7, 5, dtype, device, seed, reduction, upstream="random")
    steps = Steps(impl, problem)
    steps("x.requires_grad_()", *upstream_lines(problem.upstream, device),
          *direction_lines(problem.case.logits.shape, dtype, seed, device))
    judge.probe("double_backward", problem, lambda: steps(
        f"g, = torch.autograd.grad({logits_form.call_code(impl, problem)}, x, grad, create_graph=True)"),
                what="torch.autograd.grad(loss, x, grad, create_graph=True)")
    if not steps["g"].requires_grad:
        judge.gap("double_backward", problem, "the gradient computed with create_graph=True does not depend on "
                  "the logits (a backward built from detached tensors, or @once_differentiable): its second "
                  "derivative would be silently zero")
    judge.probe("double_backward", problem, lambda: steps("hv, = torch.autograd.grad(g, x, v)"),
                what="torch.autograd.grad(g, x, v) of the gradient computed with create_graph=True")
    hv, ev, grad_output, v = steps["hv"], steps["truth"], steps["grad"], steps["v"]
    judge.within("Hessian-vector product", problem, hv, ev.hessian_vector(grad_output, v), "hessian-vector product",
                 show=steps.show("hv{at}.item()", "truth.hessian_vector(grad, v){at}.item()"),
                 ev=ev, grad_output=grad_output, v=v)


@pytest.mark.feature("forward_ad")
@pytest.mark.input_kind("logits")
@EACH_WIDE_DTYPE
@pytest.mark.parametrize("variant", WITH_LOSS_VARIANT)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_mode_directional_derivative(impl, judge, device, dtype, reduction, variant, seed):
    """torch.func.jvp of the loss along t is <dL/dz, t> (per position for reduction='none')."""
    problem = _variant_problem(variant, 8, 6, dtype, device, seed, reduction, upstream=None)
    steps = Steps(impl, problem)
    steps(*direction_lines(problem.case.logits.shape, dtype, seed, device))
    judge.probe("forward_ad", problem, lambda: steps(
        f"loss, d = torch.func.jvp(lambda z: {logits_form.call_code(impl, problem, 'z')}, (x,), (v,))"),
                what="torch.func.jvp")
    loss, jvp, ev, tangent = steps["loss"], steps["d"], steps["truth"], steps["v"]
    judge.within("value under jvp", problem, loss, ev.loss, "value",
                 show=steps.show("loss{at}.item()", "truth.loss{at}.item()"), ev=ev)
    judge.within("directional derivative", problem, jvp, ev.directional(tangent), "directional derivative",
                 show=steps.show("d{at}.item()", "truth.directional(v){at}.item()"), ev=ev, tangent=tangent)


VMAP_BATCH = 4
VMAP_VARIANTS = [
    pytest.param("plain"),
    pytest.param("weighted", marks=pytest.mark.feature("weight")),
    pytest.param("ignore_index", marks=pytest.mark.feature("ignore_index", "custom_ignore_index")),
    pytest.param("smoothed", marks=pytest.mark.feature("label_smoothing")),
    pytest.param("weighted+smoothed", marks=pytest.mark.feature("weight", "label_smoothing")),
    pytest.param(CAPPED_Z_LOSS, marks=pytest.mark.feature("softcap", "z_loss")),
]


def _vmap_options(variant: str, reduction: str) -> dict:
    return dict(reduction=reduction, ignore_index=1 if variant == "ignore_index" else -100,
                label_smoothing=0.15 if "smoothed" in variant else 0.0,
                variant=LOSS_VARIANT if variant == CAPPED_Z_LOSS else Variant())


def _worst_first(ratios: list) -> list:
    return sorted(range(len(ratios)), key=lambda b: -ratios[b])


@pytest.mark.feature("vmap")
@pytest.mark.parametrize("variant", VMAP_VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_over_independent_problems(impl, judge, device, dtype, reduction, variant, seed):
    """torch.func.vmap over B problems (logits (B, N, C), targets (B, N), in_dims=0) gives each
    problem's loss and, with backward, its gradient (a vjp inside vmap), as the reference does.

    torch's own loss cannot be vmapped with class weights, label smoothing and reduction='mean'
    (torch 2.13: its smoothing term calls masked_select, which has no batching rule): a probed gap."""
    n, c, name = 6, 5, dtype_name(dtype)
    batch_recipe = "\n".join(
        [f"torch.default_generator.manual_seed({seed})",
         f"logits = (torch.randn(({VMAP_BATCH}, {n}, {c}), dtype=torch.float64)"
         f" * {LOSS_VARIANT_SCALE if variant == CAPPED_Z_LOSS else 1.0}).to(torch.{name})",
         "target = torch.where(logits <= 0, torch.rand(logits.shape), -1.0).argmax(2)"]
        + ["target[:, ::3] = 1"] * (variant == "ignore_index")
        + [f"weight = (torch.rand({c}, dtype=torch.float64) + 0.25).to(torch.{name})"] * ("weighted" in variant))
    batch = cases.from_recipe("vmap", batch_recipe, device)
    backward = "backward" not in impl.unsupported
    vmapped = f"torch.func.vmap over {VMAP_BATCH} problems"
    # Each problem rebuilt alone: its snippet calls the implementation without vmap.
    problems = [cases.problem(cases.from_recipe(f"vmap problem {b}",
                                                f"{batch_recipe}\nlogits, target = logits[{b}], target[{b}]", device),
                              upstream="random" if backward else None, note=f", problem {b} of {vmapped}",
                              **_vmap_options(variant, reduction)) for b in range(VMAP_BATCH)]
    call = problems[0].call_options()
    fed = [impl.feed(batch.logits[b], batch.target[b]) for b in range(VMAP_BATCH)]
    xs, ts = torch.stack([x for x, _ in fed]), torch.stack([t for _, t in fed])
    pristine_xs, pristine_ts = xs.clone(), ts.clone()
    grad_output = problems[0].upstream_gradient() if backward else None

    def loss_and_gradient(x, t):
        loss, pullback = torch.func.vjp(lambda z: impl(z, t, call), x)
        return loss, pullback(grad_output)[0]

    # The probe's verdict names the first problem, rebuilt alone (its snippet runs without vmap).
    losses = judge.probe("vmap", problems[0], lambda: torch.func.vmap(lambda x, t: impl(x, t, call))(xs, ts),
                         what=vmapped)
    grads = None
    if backward:
        _, grads = judge.probe("vmap", problems[0], lambda: torch.func.vmap(loss_and_gradient)(xs, ts),
                               what=f"{vmapped} of torch.func.vjp")
    outcomes = [logits_form.Outcome(input=pristine_xs[b], target=pristine_ts[b], loss=losses[b],
                            grad=grads[b] if backward else None, upstream=grad_output) for b in range(VMAP_BATCH)]
    truths = [logits_form.truth(impl, problem, out) for problem, out in zip(problems, outcomes)]

    # Every problem is judged (under ``parity`` the bound is per problem), the worst under the
    # contract's bound first: a failure names it.
    value_ratios = [compare("value under vmap", losses[b], truths[b].loss,
                                   judge.bound("value", dtype, ev=truths[b])).ratio for b in range(VMAP_BATCH)]
    for b in _worst_first(value_ratios):
        judge.value(problems[b], outcomes[b], truths[b], identity="value under vmap")
    if backward:
        grad_ratios = [compare("gradient under vmap (vjp)", grads[b], truths[b].grad(grad_output),
                                      judge.bound("gradient", dtype, ev=truths[b], grad_output=grad_output)).ratio
                       for b in range(VMAP_BATCH)]
        for b in _worst_first(grad_ratios):
            judge.gradient(problems[b], outcomes[b], truths[b], identity="gradient under vmap (vjp)")

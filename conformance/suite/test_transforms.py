"""Second order and transforms: double backward, forward-mode AD and vmap.

For logits the loss of one position is ``A lse(z) - a.z`` (reference: ``a`` the weighted target,
``A = sum_c a_c``), so with ``s`` the upstream gradient over the mean's divisor

    gradient           g = s (A p - a)
    Hessian            H = s A (diag(p) - p p^T)          Hv = s A (p*v - p (p.v))
    directional        <g, t> = s (A p.t - a.t)           (what forward mode computes)

Second-order and tangent checks run in float64 and float32: the strict contract (``tolerance``)
bounds a half-precision value and gradient, not derivatives or tangents carried in a half dtype.
"""
import pytest
import torch

from conformance import cases, checks, run, tolerance
from conformance.guards import ImplementationFault
from conformance.impl import LossOptions
from conformance.reference import to_rows

# torch.func scripts helpers on first use; the warning is torch's own, not the implementation's.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

REDUCTIONS = ["none", "mean", "sum"]
WIDE_DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=cases.dtype_name)

# Plain, and with weights and smoothing (A != 1, every a_c > 0): the Hessian scales with A.
VARIANTS = [
    pytest.param("plain"),
    pytest.param("weighted+smoothed", marks=pytest.mark.feature("weight", "label_smoothing")),
]


def _logits_only(impl) -> None:
    if impl.input_kind != "logits":
        pytest.skip("the identities are stated for logits input")


def _variant_case(variant: str, n: int, c: int, dtype: torch.dtype, device: str, seed: int):
    weighted = variant == "weighted+smoothed"
    case = cases.well_conditioned(n, c, dtype, device, seed=seed, weight=weighted, family=f"transforms {variant}")
    return case, 0.15 if weighted else 0.0


def _direction_recipe(shape: tuple, dtype: torch.dtype, seed: int) -> str:
    """A deterministic direction (Hessian-vector product vector or tangent) shaped like the input."""
    return (f"v = torch.randn({tuple(shape)}, dtype=torch.float64, "
            f"generator=torch.Generator().manual_seed({seed + 5})).to(torch.{cases.dtype_name(dtype)})")


def _build(code: str, name: str, device: str) -> torch.Tensor:
    namespace: dict = {"torch": torch}
    exec(code, namespace)
    return namespace[name].to(device)


def _unit_upstream(ev) -> torch.Tensor:
    return torch.ones(ev.position_shape if ev.reduction == "none" else (), dtype=torch.float64)


def hessian_vector_bound(ev, grad_output: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Largest acceptable ``|Hv - reference Hv|`` per element, from the gradient bound.

    Derivation. Any kernel forms ``Hv_j = q_j v_j - q_j (p.v)`` with ``q_j = s A p_j``, the
    gradient's own ``s A p_j`` term, whose error ``tolerance.grad_bound`` already bounds by
    ``E_j`` (it covers the error of ``p_j``, of forming ``s A p_j`` and the divisor). Then
        err(q_j v_j)          <= E_j |v_j| + u |q_j v_j|
        err(p.v) |q_j|        <= p_j sum_k E_k |v_k| + (C + 1) u |q_j| sum_k p_k |v_k|
                                 (p_k's error is E_k / |s A|; C products summed, Higham 3.1)
        err(q_j (p.v))        <= E_j |p.v| + that + u |q_j (p.v)|
    and the subtraction rounds once more: ``+ u (|q_j v_j| + |q_j (p.v)|)``. Summing,
        bound_j = E_j (|v_j| + |p.v|) + p_j sum_k E_k |v_k|
                  + u |q_j| (2 |v_j| + 2 |p.v| + (C + 1) sum_k p_k |v_k|)
    with ``u`` the unit roundoff of ``dtype`` (float64 or float32 only).
    """
    u = tolerance.unit_roundoff(dtype)
    E = to_rows(tolerance.grad_bound(ev, grad_output, dtype), class_dim=True)
    v = to_rows(v.detach().to("cpu", torch.float64), class_dim=True)
    p = ev.log_probs.exp()
    q = (ev.upstream_rows(grad_output) * ev.weighted_target.sum(1)).abs()[:, None] * p
    pv = (p * v).sum(1, keepdim=True).abs()
    p_abs_v = (p * v.abs()).sum(1, keepdim=True)
    bound = E * (v.abs() + pv) + p * (E * v.abs()).sum(1, keepdim=True) \
        + u * q * (2 * v.abs() + 2 * pv + (ev.num_classes + 1) * p_abs_v)
    return bound.reshape(ev.input_shape)


@pytest.mark.feature("backward", "double_backward")
@WIDE_DTYPES
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hessian_vector_product(impl, judge, device, dtype, reduction, variant, seed):
    """grad of <dL/dz, v> is s A (diag(p) - p p^T) v per position."""
    _logits_only(impl)
    case, smoothing = _variant_case(variant, 7, 5, dtype, device, seed)
    options = LossOptions(reduction=reduction, label_smoothing=smoothing)
    upstream = cases.upstream_recipe("random", reduction, case.target.shape, dtype)
    direction = _direction_recipe(case.logits.shape, dtype, seed)
    grad_output, v = _build(upstream, "grad", device), _build(direction, "v", device)
    x, t = impl.feed(case.logits, case.target)
    x = x.detach().requires_grad_()
    call = run.options_for(case, options)
    declare = ("Declare 'double_backward' in the implementation's `unsupported` set if second-order "
               "gradients are not supported.")
    try:
        g, = torch.autograd.grad(impl(x, t, call), x, grad_output, create_graph=True)
        hv = torch.autograd.grad(g, x, v)[0] if g.requires_grad else None
    except ImplementationFault:
        raise
    except Exception as exc:  # the implementation's backward is not differentiable
        judge.fail("double backward", f"differentiating the gradient raised {type(exc).__name__}: {exc}. {declare}",
                   case=case, options=options)
    if hv is None:
        judge.fail("double backward", "the gradient computed with create_graph=True does not depend on the "
                   "logits (a backward built from detached tensors, or @once_differentiable): its second "
                   f"derivative would be silently zero. {declare}", case=case, options=options)
    ev = run.truth(impl, run.Outcome(input=x.detach(), target=t, loss=torch.empty(())), case, options)
    p, vr = ev.log_probs.exp(), to_rows(v.detach().to("cpu", torch.float64), class_dim=True)
    scale = ev.upstream_rows(grad_output) * ev.weighted_target.sum(1)
    expected = (scale[:, None] * (p * vr - p * (p * vr).sum(1, keepdim=True))).reshape(ev.input_shape)
    judge.close("Hessian-vector product", hv, expected, hessian_vector_bound(ev, grad_output, v, dtype),
                case=case, options=options,
                note=f"\n  second order, after the snippet's forward: {upstream}; {direction}; x.requires_grad_(); "
                     "g, = torch.autograd.grad(impl.call(x, t, ...), x, grad, create_graph=True); "
                     "hv, = torch.autograd.grad(g, x, v); expected: s A (p*v - p (p.v)) per row")


def directional_bound(ev, tangent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Largest acceptable ``|<g, t> - reference|`` per output element, from the gradient bound.

    Derivation. Whatever the formulation (``sum_c g_c t_c`` or ``s (A p.t - a.t)``), a position's
    directional derivative is a sum of at most ``2C`` products whose magnitudes are bounded by
    ``s (A p_c + a_c) |t_c|``; ``p_c`` enters through ``s A p_c``, whose error the gradient bound
    ``E_c`` covers. Hence per position
        sum_c E_c |t_c| + (2C + 2) u sum_c s (A p_c + a_c) |t_c|       (Higham 3.1)
    and a sum or mean over ``M`` positions adds ``(M + 1) u sum_i |<g, t>_i|``.
    """
    u = tolerance.unit_roundoff(dtype)
    ones = _unit_upstream(ev)
    E = to_rows(tolerance.grad_bound(ev, ones, dtype), class_dim=True)
    t = to_rows(tangent.detach().to("cpu", torch.float64), class_dim=True).abs()
    a = ev.weighted_target
    s = ev.upstream_rows(ones).abs()[:, None]
    sizes = s * (a.sum(1, keepdim=True) * ev.log_probs.exp() + a)
    per_position = (E * t).sum(1) + (2 * ev.num_classes + 2) * u * (sizes * t).sum(1)
    if ev.reduction == "none":
        return per_position.reshape(ev.position_shape)
    exact = (to_rows(ev.grad(ones), class_dim=True) * to_rows(tangent.detach().to("cpu", torch.float64),
                                                                class_dim=True)).sum(1)
    return per_position.sum() + (exact.numel() + 1) * u * exact.abs().sum()


@pytest.mark.feature("forward_ad")
@WIDE_DTYPES
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_mode_directional_derivative(impl, judge, device, dtype, reduction, variant, seed):
    """torch.func.jvp of the loss along t is <dL/dz, t> (per position for reduction='none')."""
    _logits_only(impl)
    case, smoothing = _variant_case(variant, 8, 6, dtype, device, seed)
    options = LossOptions(reduction=reduction, label_smoothing=smoothing)
    direction = _direction_recipe(case.logits.shape, dtype, seed)
    tangent = _build(direction, "v", device)
    x, t = impl.feed(case.logits, case.target)
    call = run.options_for(case, options)
    try:
        loss, jvp = torch.func.jvp(lambda z: impl(z, t, call), (x,), (tangent,))
    except ImplementationFault:
        raise
    except Exception as exc:
        judge.fail("forward-mode AD", f"torch.func.jvp raised {type(exc).__name__}: {exc}. Declare 'forward_ad' "
                   "in the implementation's `unsupported` set if forward mode is not supported.",
                   case=case, options=options)
    ev = run.truth(impl, run.Outcome(input=x, target=t, loss=loss), case, options)
    note = (f"\n  forward mode, after the snippet's forward: {direction}; "
            "loss, d = torch.func.jvp(lambda z: impl.call(z, t, ...), (x,), (v,)); expected: <grad, v>")
    judge.close("value under jvp", loss, ev.loss, tolerance.value_bound(ev, dtype), case=case, options=options,
                note=note)
    per_position = (to_rows(ev.grad(_unit_upstream(ev)), class_dim=True)
                    * to_rows(tangent.to("cpu", torch.float64), class_dim=True)).sum(1)
    expected = per_position.reshape(ev.position_shape) if reduction == "none" else per_position.sum()
    judge.close("directional derivative", jvp, expected, directional_bound(ev, tangent, dtype), case=case,
                options=options, note=note)


VMAP_BATCH = 4
VMAP_VARIANTS = [
    pytest.param("plain"),
    pytest.param("weighted", marks=pytest.mark.feature("weight")),
    pytest.param("ignore_index", marks=pytest.mark.feature("ignore_index")),
    pytest.param("smoothed", marks=pytest.mark.feature("label_smoothing")),
    pytest.param("weighted+smoothed", marks=pytest.mark.feature("weight", "label_smoothing")),
]


def _vmap_options(variant: str, reduction: str) -> tuple[LossOptions, bool]:
    return (LossOptions(reduction=reduction, ignore_index=1 if variant == "ignore_index" else -100,
                        label_smoothing=0.15 if "smoothed" in variant else 0.0), "weighted" in variant)


TORCH_VMAP_LIMITATION = ("torch 2.13's own loss cannot be vmapped with class weights, label smoothing and "
                         "reduction='mean': its smoothing term calls masked_select, which has no batching rule "
                         "(RuntimeError, measured on CPU)")


@pytest.mark.feature("vmap")
@pytest.mark.parametrize("variant", VMAP_VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_over_independent_problems(impl, judge, request, device, dtype, reduction, variant, seed):
    """torch.func.vmap over B problems (logits (B, N, C), targets (B, N), in_dims=0) gives each
    problem's loss and, with backward, its gradient (a vjp inside vmap), as the reference does."""
    if impl.call is torch.nn.functional.cross_entropy and variant == "weighted+smoothed" and reduction == "mean":
        request.applymarker(pytest.mark.xfail(strict=True, reason=TORCH_VMAP_LIMITATION))
    options, weighted = _vmap_options(variant, reduction)
    n, c, name = 6, 5, cases.dtype_name(dtype)
    batch_recipe = "\n".join(
        [f"torch.manual_seed({seed})",
         f"logits = torch.randn(({VMAP_BATCH}, {n}, {c}), dtype=torch.float64).to(torch.{name})",
         "target = torch.where(logits <= 0, torch.rand(logits.shape), -1.0).argmax(2)"]
        + ["target[:, ::3] = 1"] * (variant == "ignore_index")
        + [f"weight = (torch.rand({c}, dtype=torch.float64) + 0.25).to(torch.{name})"] * weighted)
    batch = cases.from_recipe("vmap", batch_recipe, device)
    upstream = cases.upstream_recipe("random", reduction, (n,), dtype)
    grad_output = _build(upstream, "grad", device)
    fed = [impl.feed(batch.logits[b], batch.target[b]) for b in range(VMAP_BATCH)]
    xs, ts = torch.stack([x for x, _ in fed]), torch.stack([t for _, t in fed])
    call = run.options_for(batch, options)
    backward = "backward" not in impl.unsupported

    def loss_and_gradient(x, t):
        loss, pullback = torch.func.vjp(lambda z: impl(z, t, call), x)
        return loss, pullback(grad_output)[0]

    vmapped = f"torch.func.vmap over {VMAP_BATCH} problems"
    try:
        losses = torch.func.vmap(lambda x, t: impl(x, t, call))(xs, ts)
        if backward:
            _, grads = torch.func.vmap(loss_and_gradient)(xs, ts)
    except ImplementationFault:
        raise
    except Exception as exc:
        judge.fail("vmap", f"{vmapped} raised {type(exc).__name__}: {exc}. Declare 'vmap' in the "
                   "implementation's `unsupported` set if torch.func.vmap is not supported.",
                   case=batch, options=options)
    outcomes = [run.Outcome(input=xs[b], target=ts[b], loss=losses[b], grad=grads[b] if backward else None,
                            upstream=grad_output if backward else None) for b in range(VMAP_BATCH)]
    truths = [run.truth(impl, out, batch, options) for out in outcomes]
    value_bounds, grad_bounds = zip(*(judge.bounds(ev, out, batch, options) for ev, out in zip(truths, outcomes)))
    identities = [("value under vmap", losses, [ev.loss for ev in truths], value_bounds, None)]
    if backward:
        identities.append(("gradient under vmap (vjp)", grads, [ev.grad(grad_output) for ev in truths],
                           grad_bounds, upstream))
    for identity, actual, expected, per_problem_bounds, grad_code in identities:
        expected = torch.stack(expected)
        bound = torch.stack([bd.expand(e.shape) for bd, e in zip(per_problem_bounds, expected)])
        worst = checks.compare(identity, actual, expected, bound).index[0]
        # The worst problem rebuilt alone: its snippet calls the implementation without vmap.
        problem = cases.from_recipe(f"vmap problem {worst}",
                                    f"{batch_recipe}\nlogits, target = logits[{worst}], target[{worst}]", device)
        judge.close(identity, actual[worst], expected[worst], bound[worst], case=problem, options=options,
                    upstream=grad_code, note=f", problem {worst} of {vmapped}")

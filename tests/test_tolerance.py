"""Properties of the tolerance policy: shift invariance, and that it separates one rounding from a bug."""
import torch

from conformance import tolerance
from conformance.reference import evaluate


def test_value_bound_is_shift_invariant():
    """No |m| or |lse| term: shifting a row by 1e30 leaves the float64 bound unchanged."""
    torch.manual_seed(0)
    z = torch.randn(4, 8, dtype=torch.float64)
    y = torch.randint(8, (4,))
    plain = tolerance.value_bound(evaluate(z, y, reduction="none"), torch.float32)
    shifted = tolerance.value_bound(evaluate(z + 1e3, y, reduction="none"), torch.float32)
    torch.testing.assert_close(plain, shifted, rtol=1e-3, atol=0)


def test_half_precision_bound_admits_one_rounding_but_not_a_lost_confident_loss():
    z = torch.tensor([[0.0, 0.0, 10.0]], dtype=torch.float64).to(torch.bfloat16)
    y = torch.tensor([2])
    ev = evaluate(z, y, reduction="none")
    bound = tolerance.value_bound(ev, torch.bfloat16)
    rounded_once = ev.loss.to(torch.bfloat16).double()
    assert ((rounded_once - ev.loss).abs() <= bound).all()
    assert not (ev.loss.abs() <= bound).all(), "returning 0 for a loss of 9e-5 must exceed the bound"


def test_gradient_bound_catches_target_cancellation():
    """Liger#1268: the target component 1 - p_y computed from a p_y rounded near 1."""
    z = torch.tensor([[0.0, 0.0, 10.0]], dtype=torch.float64).to(torch.bfloat16)
    y = torch.tensor([2])
    ev = evaluate(z, y, reduction="none")
    upstream = torch.ones(1, dtype=torch.bfloat16)
    grad = ev.grad(upstream)
    bound = tolerance.grad_bound(ev, upstream, torch.bfloat16)
    cancelled = grad.clone()
    cancelled[0, 2] = grad[0, 2].to(torch.float64).exp().to(torch.bfloat16).double() - 1  # p_y rounded: 0
    assert abs(grad[0, 2]) > bound[0, 2]
    assert (cancelled - grad).abs()[0, 2] > bound[0, 2]


def test_compute_dtype():
    assert tolerance.compute_dtype(torch.bfloat16) == torch.float32
    assert tolerance.compute_dtype(torch.float64) == torch.float64

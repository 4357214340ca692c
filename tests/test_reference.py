"""The float64 reference against torch's float64 loss, and its answers to the document's complaint."""
import math

import pytest
import torch
import torch.nn.functional as F

from conformance.reference import Variant, cross_entropy, evaluate

OPTIONS = [dict(), dict(weight=True), dict(label_smoothing=0.2), dict(ignore_index=2),
           dict(weight=True, label_smoothing=0.3, ignore_index=-1)]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3), (5,)], ids=str)
def test_matches_torch_float64(shape, options, reduction):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    c = shape[0] if len(shape) == 1 else shape[1]
    y = torch.randint(c, shape[:1] + shape[2:] if len(shape) > 1 else ())
    kw = dict(options)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(c, dtype=torch.float64) + 0.1
    loss = F.cross_entropy(x, y, reduction=reduction, **kw)
    upstream = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    loss.backward(upstream)
    ev = evaluate(x, y, reduction=reduction, **kw)
    torch.testing.assert_close(ev.loss, loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ev.grad(upstream), x.grad, rtol=1e-12, atol=1e-14)


def test_probability_targets_match_torch_and_mean_divides_by_n():
    torch.manual_seed(1)
    x = torch.randn(7, 4, dtype=torch.float64)
    t = torch.softmax(torch.randn(7, 4, dtype=torch.float64), 1)
    w = torch.rand(4, dtype=torch.float64) + 0.1
    expected = F.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    assert torch.allclose(cross_entropy(x, t, weight=w, label_smoothing=0.1), expected, rtol=1e-13)
    assert evaluate(x, t, weight=w).denominator.item() == 7


def test_input_kinds_agree():
    """Logits, log-probabilities and probabilities of the same distribution give the same loss."""
    torch.manual_seed(2)
    z = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(6, (5,))
    from_logits = cross_entropy(z, y)
    assert torch.allclose(cross_entropy(z.log_softmax(1), y, input_kind="log_probs"), from_logits, rtol=1e-14)
    assert torch.allclose(cross_entropy(z.softmax(1), y, input_kind="probs"), from_logits, rtol=1e-13)


def test_one_hot_target_equals_index_target_without_weights():
    torch.manual_seed(3)
    z = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(6, (5,))
    onehot = F.one_hot(y, 6).double()
    assert torch.allclose(cross_entropy(z, onehot, label_smoothing=0.1), cross_entropy(z, y, label_smoothing=0.1))


def test_an_evaluation_keeps_the_input_as_given_when_the_caller_writes_into_it():
    """A float64 input is copied too: a snippet evaluates the truth before a loss that may
    overwrite its logits, and a check's ``Steps`` runs that very line."""
    x, t = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    ev = evaluate(x, t, reduction="none")
    kept = ev.inputs.clone()
    x.fill_(7.0)
    assert torch.equal(ev.inputs, kept)


def test_underflowed_probability_gives_inf_but_logits_stay_finite():
    z = torch.tensor([[0.0, -1000.0]], dtype=torch.float64)
    y = torch.tensor([1])
    assert cross_entropy(z, y).item() == pytest.approx(1000.0)
    assert math.isinf(cross_entropy(z.softmax(1), y, input_kind="probs").item())


def test_edge_semantics():
    z = torch.randn(3, 4, dtype=torch.float64)
    assert math.isnan(cross_entropy(z, torch.full((3,), -100)).item())
    assert cross_entropy(z, torch.full((3,), -100), reduction="sum").item() == 0
    assert math.isnan(cross_entropy(torch.empty(0, 4, dtype=torch.float64), torch.empty(0, dtype=torch.long)).item())
    with pytest.raises(IndexError):
        cross_entropy(z, torch.tensor([0, 4, 1]))
    masked = z.clone()
    masked[0, 1] = -math.inf
    assert math.isfinite(cross_entropy(masked, torch.tensor([0, 1, 2]), reduction="none")[0].item())
    plus_inf = z.clone()
    plus_inf[1, 0] = math.inf
    losses = cross_entropy(plus_inf, torch.tensor([0, 1, 2]), reduction="none")
    assert math.isnan(losses[1].item()) and math.isfinite(losses[0].item())


def _variant_by_autograd(z, t, w, reduction, weighting):
    """The variants written out with torch's own ops in float64 (the module docstring's formulas)."""
    capped = 3.0 * torch.tanh(z * 0.5 / 3.0)
    kept = (t != -100).double()
    z_weight = kept if weighting == "unweighted" else w[t.clamp(min=0)] * kept
    z_rows = 0.1 * capped.logsumexp(1) ** 2 * z_weight
    ce = F.cross_entropy(capped, t, weight=w, reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        return ce + z_rows
    return ce + (z_rows.sum() / z_weight.sum() if reduction == "mean" else z_rows.sum())


@pytest.mark.parametrize("weighting", ["unweighted", "class_weight"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_variants_match_their_formulas_in_value_and_gradient(reduction, weighting):
    torch.manual_seed(4)
    z = (torch.randn(5, 7, dtype=torch.float64) * 20).requires_grad_()
    t, w = torch.tensor([1, -100, 3, 0, 6]), torch.rand(7, dtype=torch.float64) + 0.5
    variant = Variant(logit_scale=0.5, softcap=3.0, z_loss=0.1, z_loss_weighting=weighting)
    ev = evaluate(z, t, weight=w, reduction=reduction, label_smoothing=0.1, variant=variant)
    expected = _variant_by_autograd(z, t, w, reduction, weighting)
    grad = torch.randn_like(expected)
    expected_grad, = torch.autograd.grad(expected, z, grad)
    assert torch.allclose(ev.loss, expected.detach(), rtol=1e-13, atol=0)
    assert torch.allclose(ev.grad(grad), expected_grad, rtol=1e-12, atol=1e-15)
    z_only = ev.without_cross_entropy()
    assert torch.allclose(z_only.loss, ev.z_loss_value) and bool((ev.z_loss_value != 0).any())


def test_a_capped_infinite_logit_is_finite_with_zero_gradient():
    z = torch.tensor([[math.inf, 0.0, -math.inf]], dtype=torch.float64)
    ev = evaluate(z, torch.tensor([1]), variant=Variant(softcap=5.0))
    assert math.isfinite(ev.loss.item())
    assert ev.grad(torch.tensor(1.0))[0, 0].item() == 0.0 and ev.grad(torch.tensor(1.0))[0, 2].item() == 0.0

"""conformance.flexible_cross_entropy: the reference's semantics for every input and target kind,
the logit variants against their formulas, precision, autograd, and every argument error.

The suite itself certifies the plain loss under the exact contract (tests/test_fixtures.py); these
tests cover what the suite cannot feed: the variants, validation, and the kinds' own keywords.
"""
import re

import pytest
import torch
import torch.nn.functional as F

from conformance import flexible_cross_entropy as flexible
from conformance.reference import evaluate

SHAPES = {"2d": (6, 5), "kdim": (3, 5, 2), "unbatched": (5,)}
OPTIONS = {"plain": {}, "weighted": {"weight": True}, "smoothed": {"label_smoothing": 0.2},
           "ignored": {"ignore_index": 1}, "all": {"weight": True, "label_smoothing": 0.3, "ignore_index": -1}}


def _problem(shape, *, dtype=torch.float64, seed=0, ignore_index=None):
    """Logits, an index target (some positions ignore_index when given) and class weights."""
    torch.manual_seed(seed)
    c = shape[0] if len(shape) == 1 else shape[1]
    logits = torch.randn(shape, dtype=torch.float64).to(dtype)
    labels = torch.randint(c, shape[:1] + shape[2:] if len(shape) > 1 else ())
    if ignore_index is not None:
        labels = torch.where(torch.rand(labels.shape) < 0.3, ignore_index, labels)
    weight = (torch.rand(c, dtype=torch.float64) + 0.1).to(dtype)
    return logits, labels, weight


def _one_hot(labels, like):
    class_dim = 0 if like.dim() == 1 else 1
    return F.one_hot(labels, like.shape[class_dim]).movedim(-1, class_dim).to(like.dtype)


def _fed(logits, input_kind):
    """The input of each kind, formed from the logits in float64."""
    class_dim = 0 if logits.dim() == 1 else 1
    return {"logits": logits, "log_probs": logits.log_softmax(class_dim),
            "probs": logits.softmax(class_dim)}[input_kind]


def _options(options, weight):
    kw = dict(options)
    if kw.pop("weight", False):
        kw["weight"] = weight
    return kw


# -- semantics: the reference, for every kind ------------------------------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("input_kind", ["logits", "log_probs", "probs"])
def test_index_targets_match_the_reference(input_kind, shape, options, reduction):
    logits, labels, weight = _problem(shape, ignore_index=options.get("ignore_index"))
    kw = _options(options, weight)
    x = _fed(logits, input_kind).requires_grad_()
    loss = flexible(x, labels, input_kind=input_kind, reduction=reduction, **kw)
    upstream = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    loss.backward(upstream)
    truth = evaluate(x, labels, input_kind=input_kind, reduction=reduction, **kw)
    torch.testing.assert_close(loss.detach(), truth.loss, equal_nan=True)   # an unbatched ignored position
    torch.testing.assert_close(x.grad, truth.grad(upstream))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [{}, {"weight": True, "label_smoothing": 0.2}], ids=["plain", "weighted+smoothed"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("target_kind", ["onehot", "probs"])
@pytest.mark.parametrize("input_kind", ["logits", "log_probs", "probs"])
def test_floating_targets_match_the_reference(input_kind, target_kind, shape, options, reduction):
    """One-hot and probability targets are the reference's probability target: mean divides by N."""
    logits, labels, weight = _problem(shape, seed=1)
    target = _one_hot(labels, logits) if target_kind == "onehot" else torch.randn_like(logits).softmax(
        0 if logits.dim() == 1 else 1)
    kw = _options(options, weight)
    x = _fed(logits, input_kind).requires_grad_()
    loss = flexible(x, target, input_kind=input_kind, target_kind=target_kind, reduction=reduction, **kw)
    upstream = torch.rand(loss.shape, dtype=torch.float64) + 0.5
    loss.backward(upstream)
    truth = evaluate(x, target, input_kind=input_kind, reduction=reduction, **kw)
    torch.testing.assert_close(loss.detach(), truth.loss)
    torch.testing.assert_close(x.grad, truth.grad(upstream))


def test_matches_torch_beside_it():
    logits, labels, weight = _problem((6, 5), ignore_index=-100)
    for kw in ({}, {"weight": weight, "label_smoothing": 0.1}, {"reduction": "none"}):
        torch.testing.assert_close(flexible(logits, labels, **kw), F.cross_entropy(logits, labels, **kw))


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_nothing_to_average_is_nan_with_zero_gradient(target_kind):
    """'mean' over no kept position (or an empty batch) is NaN as in torch; nothing depends on the
    input, so its gradient is 0, not NaN."""
    if target_kind == "index":
        x, target = torch.randn(4, 6, dtype=torch.float64, requires_grad=True), torch.full((4,), -100)
    else:
        x, target = torch.empty(0, 6, dtype=torch.float64, requires_grad=True), torch.empty(0, 6, dtype=torch.float64)
    loss = flexible(x, target, target_kind=target_kind, z_loss=1e-3)
    loss.backward()
    assert loss.isnan() and torch.equal(x.grad, torch.zeros_like(x))
    assert flexible(x, target, target_kind=target_kind, reduction="sum") == 0


def test_masked_classes_and_zero_probabilities_give_no_nan():
    """A -inf logit or a zero probability where the target has no mass contributes 0 and passes
    gradient 0 (the reference's 0 * log 0 = 0), for every target kind."""
    logits, labels, _ = _problem((6, 5), seed=2)
    logits[:, 4] = -torch.inf
    labels = labels.clamp(max=3)
    probs = logits.softmax(1)
    for x, input_kind in ((logits, "logits"), (probs, "probs")):
        for target, target_kind in ((labels, "index"), (_one_hot(labels, logits), "onehot")):
            x = x.detach().requires_grad_()
            loss = flexible(x, target, input_kind=input_kind, target_kind=target_kind)
            loss.backward()
            truth = evaluate(x, target, input_kind=input_kind)
            torch.testing.assert_close(loss.detach(), truth.loss)
            torch.testing.assert_close(x.grad, truth.grad(torch.ones(())))


def test_soft_target_gradient_is_minus_the_weighted_log_probability():
    """d loss / d t_c = -(1 - eps) w_c log p_c, also where t_c = 0 (a one-hot row's other classes)."""
    logits, labels, weight = _problem((6, 5), seed=3)
    target = _one_hot(labels, logits).requires_grad_()
    flexible(logits, target, target_kind="onehot", weight=weight, label_smoothing=0.2, reduction="sum").backward()
    torch.testing.assert_close(target.grad, -0.8 * weight * logits.log_softmax(1))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_any_integer_label_dtype(dtype):
    logits, labels, _ = _problem((6, 5))
    assert flexible(logits, labels.to(dtype)) == flexible(logits, labels)


# -- the variants, against their formulas in float64 -------------------------------------------------

VARIANTS = {"scale": dict(logit_scale=2.5), "softcap": dict(softcap=1.5),
            "z_loss": dict(z_loss=1e-2), "z_loss class_weight": dict(z_loss=1e-2, z_loss_weighting="class_weight"),
            "all": dict(logit_scale=0.7, softcap=2.0, z_loss=0.05, z_loss_weighting="class_weight")}


def _variant_by_hand(logits, target, *, weight, ignore_index, label_smoothing, reduction, logit_scale=1.0,
                     softcap=None, z_loss=0.0, z_loss_weighting="unweighted"):
    """The formulas, in float64: scale, cap, the reference's cross entropy of the capped logits, and
    ``z_loss * lse**2`` per kept position, averaged as the weighting says."""
    capped = logits * logit_scale
    if softcap is not None:
        capped = softcap * torch.tanh(capped / softcap)
    ce = evaluate(capped, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                  reduction=reduction).loss
    class_dim = 0 if logits.dim() == 1 else 1
    lse = capped.logsumexp(class_dim).reshape(-1)
    labels = target.reshape(-1) if not target.is_floating_point() else torch.zeros(lse.shape, dtype=torch.long)
    z_terms, z_weights = [], []
    for i, label in enumerate(labels.tolist()):
        kept = target.is_floating_point() or label != ignore_index
        w = 1.0 if (z_loss_weighting == "unweighted" or target.is_floating_point() or weight is None) \
            else float(weight[label]) if kept else 0.0
        z_weights.append(w if kept else 0.0)
        z_terms.append(z_loss * z_weights[-1] * float(lse[i]) ** 2 if kept else 0.0)
    z = torch.tensor(z_terms, dtype=torch.float64)
    if reduction == "none":
        return ce + z.reshape(ce.shape)
    if reduction == "sum":
        return ce + z.sum()
    return ce + z.sum() / sum(z_weights)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS)
@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_variants_match_their_formulas(shape, target_kind, variant, reduction):
    logits, labels, weight = _problem(shape, seed=4, ignore_index=-1)
    logits = 3 * logits   # large enough that the cap bends them
    target = labels if target_kind == "index" else torch.randn_like(logits).softmax(0 if len(shape) == 1 else 1)
    ignore_index = -1 if target_kind == "index" else -100
    options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=0.1, reduction=reduction)
    expected = _variant_by_hand(logits, target, **options, **variant)
    kind = "index" if target_kind == "index" else "probs"
    torch.testing.assert_close(flexible(logits, target, target_kind=kind, **options, **variant), expected)


def test_z_loss_weighting_with_class_weights_and_ignored_positions():
    """'unweighted' averages z over the kept positions (Liger-Kernel); 'class_weight' weights each
    by w[y] and divides by the cross entropy's divisor sum w[y]; ignored positions add nothing."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [1.0, 1.0, 3.0], [9.0, -9.0, 0.0]],
                          dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, -100])
    weight = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    ce = F.cross_entropy(logits, labels, weight=weight)
    z = logits.logsumexp(1)[:3].square()
    unweighted = flexible(logits, labels, weight=weight, z_loss=0.1)
    class_weight = flexible(logits, labels, weight=weight, z_loss=0.1, z_loss_weighting="class_weight")
    torch.testing.assert_close(unweighted, ce + 0.1 * z.sum() / 3)
    torch.testing.assert_close(class_weight, ce + 0.1 * (weight * z).sum() / weight.sum())
    per_position = flexible(logits, labels, weight=weight, z_loss=0.1, reduction="none")
    assert per_position[3] == 0
    torch.testing.assert_close(per_position[:3], F.cross_entropy(logits, labels, weight=weight, reduction="none")[:3]
                               + 0.1 * z)


def test_variants_are_shift_invariant_loss_plus_z_loss():
    """A common shift leaves the cross entropy bitwise unchanged (log_softmax, not lse - z_y: the
    logits are dyadic, so the shift is exact); the z-loss sees it."""
    logits, labels, _ = _problem((6, 5), dtype=torch.float32, seed=5)
    logits = (logits * 256).round() / 256
    shifted = logits + 1024
    for variant in (dict(), dict(logit_scale=2.0)):
        assert torch.equal(flexible(shifted, labels, reduction="none", **variant),
                           flexible(logits, labels, reduction="none", **variant))
    torch.testing.assert_close(flexible(shifted, labels, z_loss=1e-4) - flexible(shifted, labels),
                               1e-4 * shifted.double().logsumexp(1).square().mean().float())


# -- precision ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["logits", "log_probs", "probs", "probs target", "variants"])
def test_half_is_the_float32_computation_rounded_once(case, dtype):
    logits, labels, weight = _problem((7, 6), dtype=dtype, seed=6, ignore_index=-100)
    kw = dict(weight=weight, label_smoothing=0.1)
    target = labels
    if case in ("log_probs", "probs"):
        kw["input_kind"], logits = case, _fed(logits.double(), case).to(dtype)
    elif case == "probs target":
        kw["target_kind"], target = "probs", torch.randn(7, 6).softmax(1).to(dtype)
    else:
        kw.update(logit_scale=1.7, softcap=3.0, z_loss=1e-3)
    for reduction in ("none", "mean", "sum"):
        half = flexible(logits, target, reduction=reduction, **kw)
        wide = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        in_float32 = flexible(logits.float(), target.float() if target.is_floating_point() else target,
                              reduction=reduction, **wide)
        assert half.dtype == dtype and torch.equal(half, in_float32.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_result_and_gradient_keep_the_input_dtype(dtype):
    logits, labels, _ = _problem((4, 3), dtype=dtype)
    x = logits.requires_grad_()
    loss = flexible(x, labels, z_loss=1e-3)
    loss.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype


# -- autograd: gradcheck, double backward, forward mode, vmap ------------------------------------------

GRADCHECK = {
    "logits index": dict(),
    "log_probs index": dict(input_kind="log_probs"),
    "probs index": dict(input_kind="probs"),
    "logits onehot": dict(target_kind="onehot"),
    "probs probs": dict(input_kind="probs", target_kind="probs"),
    "logit_scale": dict(logit_scale=1.9),
    "softcap": dict(softcap=1.2),
    "z_loss": dict(z_loss=0.1),
    "z_loss class_weight": dict(z_loss=0.1, z_loss_weighting="class_weight"),
    "all variants, probs target": dict(target_kind="probs", logit_scale=0.8, softcap=2.0, z_loss=0.1),
}


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("kw", GRADCHECK.values(), ids=GRADCHECK)
def test_gradcheck(kw, reduction):
    """First derivatives (reverse and forward mode) and second derivatives, in float64; a floating
    target is differentiated too."""
    input_kind, target_kind = kw.get("input_kind", "logits"), kw.get("target_kind", "index")
    logits, labels, weight = _problem((4, 3, 2), seed=7, ignore_index=None if target_kind != "index" else -100)
    x = _fed(logits, input_kind).requires_grad_()
    if target_kind == "index":
        target = labels
    else:
        target = _one_hot(labels, logits) if target_kind == "onehot" else torch.randn_like(logits).softmax(1)
        target.requires_grad_()
    options = dict(kw, weight=weight, label_smoothing=0.1, reduction=reduction)
    inputs = (x, target) if target.requires_grad else (x,)

    def loss(x, *target_given):
        return flexible(x, *(target_given or (target,)), **options)

    assert torch.autograd.gradcheck(loss, inputs, check_forward_ad=True, check_backward_ad=True)
    assert torch.autograd.gradgradcheck(loss, inputs)


@pytest.mark.parametrize("kw", [dict(), dict(softcap=2.0, z_loss=0.1, z_loss_weighting="class_weight"),
                                dict(input_kind="probs")], ids=["plain", "variants", "probs"])
def test_vmap_equals_each_problem(kw):
    torch.manual_seed(8)
    logits = torch.randn(3, 5, 4, dtype=torch.float64)
    labels = torch.randint(4, (3, 5))
    labels[0, 1] = labels[2, 0] = -100
    weight = torch.rand(4, dtype=torch.float64) + 0.1
    x = logits.softmax(2) if kw.get("input_kind") == "probs" else logits

    def loss(x, y):
        return flexible(x, y, weight=weight, label_smoothing=0.1, **kw)

    torch.testing.assert_close(torch.func.vmap(loss)(x, labels), torch.stack([loss(*p) for p in zip(x, labels)]))
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(x, labels),
                               torch.stack([torch.func.grad(loss)(*p) for p in zip(x, labels)]))


# -- argument errors ------------------------------------------------------------------------------------

_DATA = torch.Generator().manual_seed(0)  # module data independent of the global generator's state
X, Y = torch.randn(4, 5, generator=_DATA), torch.tensor([0, 1, 2, 3])
P = torch.randn(4, 5, generator=_DATA).softmax(1)
META = "meta"

ARGUMENT_ERRORS = {
    "input_kind": (dict(input_kind="logit"), ValueError,
                   "input_kind='logit'; expected one of ('logits', 'log_probs', 'probs')"),
    "target_kind": (dict(target_kind="class"), ValueError,
                    "target_kind='class'; expected one of ('index', 'onehot', 'probs')"),
    "reduction": (dict(reduction="avg"), ValueError, "reduction='avg'; expected one of ('none', 'mean', 'sum')"),
    "z_loss_weighting": (dict(z_loss_weighting="weighted"), ValueError,
                         "z_loss_weighting='weighted'; expected one of ('unweighted', 'class_weight')"),
    "validate": (dict(validate="yes"), TypeError, "validate='yes': expected True or False"),
    "ignore_index type": (dict(ignore_index=1.0), TypeError, "ignore_index=1.0: expected an int"),
    "label_smoothing range": (dict(label_smoothing=1.5), ValueError, "label_smoothing=1.5: expected a value in [0, 1]"),
    "label_smoothing negative": (dict(label_smoothing=-0.1), ValueError,
                                 "label_smoothing=-0.1: expected a value in [0, 1]"),
    "label_smoothing type": (dict(label_smoothing="0.1"), TypeError, "label_smoothing='0.1': expected a real number"),
    "logit_scale zero": (dict(logit_scale=0.0), ValueError, "logit_scale=0.0: expected a finite, nonzero number"),
    "logit_scale tensor": (dict(logit_scale=torch.tensor(2.0)), TypeError,
                           "logit_scale=tensor(2.): expected a real number"),
    "softcap zero": (dict(softcap=0), ValueError, "softcap=0: expected None or a finite number > 0"),
    "softcap negative": (dict(softcap=-30.0), ValueError, "softcap=-30.0: expected None or a finite number > 0"),
    "z_loss negative": (dict(z_loss=-1e-4), ValueError, "z_loss=-0.0001: expected a finite number >= 0"),
    "variant on probs": (dict(input=P, input_kind="probs", softcap=30.0, z_loss=1e-4), ValueError,
                         "softcap=30.0, z_loss=0.0001 act on logits, but input_kind='probs'"),
    "logit_scale on log_probs": (dict(input_kind="log_probs", logit_scale=2), ValueError,
                                 "logit_scale=2 act on logits, but input_kind='log_probs'"),
    "integer input": (dict(input=Y.reshape(2, 2)), TypeError,
                      "input: expected a floating-point tensor, got a torch.int64 tensor of shape (2, 2)"),
    "0-dim input": (dict(input=torch.tensor(1.0)), ValueError, "input of shape () has no classes"),
    "no classes": (dict(input=torch.empty(4, 0)), ValueError, "input of shape (4, 0) has no classes"),
    "target not a tensor": (dict(target=[0, 1, 2, 3]), TypeError, "target: expected a tensor, got list [0, 1, 2, 3]"),
    "target device": (dict(target=Y.to(META)), ValueError, "target on meta, input on cpu: expected the same device"),
    "float index target": (dict(target=Y.float()), TypeError,
                           "target_kind='index': expected an integer target, got a torch.float32 tensor of shape (4,)"),
    "index target shape": (dict(target=Y[:3]), ValueError,
                           "target_kind='index': target shape (3,) != (4,), the input's (4, 5) without its class "
                           "dimension"),
    "probs target dtype": (dict(target=P.double(), target_kind="probs"), TypeError,
                           "target_kind='probs': expected a torch.float32 target like the input, got a torch.float64"),
    "onehot target shape": (dict(target=P[:, :4], target_kind="onehot"), ValueError,
                            "target_kind='onehot': target shape (4, 4) != input shape (4, 5)"),
    "ignore_index with probs": (dict(target=P, target_kind="probs", ignore_index=1), ValueError,
                                "ignore_index=1: applies to index targets only, target_kind='probs'"),
    "weight dtype": (dict(weight=torch.ones(5, dtype=torch.float64)), TypeError,
                     "weight: expected a torch.float32 tensor like the input, got a torch.float64 tensor of "
                     "shape (5,)"),
    "weight shape": (dict(weight=torch.ones(4)), ValueError,
                     "weight of shape (4,) on cpu: expected (5,) on cpu, one weight per class"),
    "weight device": (dict(weight=torch.ones(5, device=META)), ValueError,
                      "weight of shape (5,) on meta: expected (5,) on cpu, one weight per class"),
}


@pytest.mark.parametrize("case", ARGUMENT_ERRORS.values(), ids=ARGUMENT_ERRORS)
def test_argument_errors(case):
    kw, error, message = case
    kw = dict(kw)
    with pytest.raises(error, match=re.escape(message)):
        flexible(kw.pop("input", X), kw.pop("target", Y), **kw)


K_DIM = torch.randn(2, 3, 4, generator=_DATA).softmax(1)
VALUE_ERRORS = {
    "negative probability": (dict(input=torch.tensor([[0.5, 0.5], [1.1, -0.1]]), target=torch.tensor([0, 1]),
                                  input_kind="probs"),
                             "input_kind='probs': the input is not a distribution: 1 positions hold a negative "
                             "entry; the most negative, -0.1, is at position (1,)"),
    "logits passed as probabilities": (dict(input=torch.tensor([[0.2, 0.8], [0.9, 0.3], [2.0, 1.0]]),
                                            target=torch.tensor([0, 1, 0]), input_kind="probs"),
                                       "input_kind='probs': the input is not a distribution: 2 positions do not sum "
                                       "to 1 within 4.2e-07 (torch.float32, 2 classes); the worst, at position (2,), "
                                       "sums to 3"),
    "NaN probability": (dict(input=torch.tensor([[0.5, 0.5], [torch.nan, 1.0]]), target=torch.tensor([0, 1]),
                             input_kind="probs"),
                        "the input is not a distribution: 1 positions do not sum to 1 within 4.2e-07 (torch.float32, "
                        "2 classes); the worst, at position (1,), sums to nan"),
    "probs target": (dict(input=torch.zeros(2, 3, 4),
                          target=K_DIM * torch.tensor([[1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.75]])[:, None],
                          target_kind="probs"),
                     "target_kind='probs': the target is not a distribution: 2 positions do not sum to 1 within "
                     "5.4e-07 (torch.float32, 3 classes); the worst, at position (0, 3), sums to 0.5"),
    "probs target, K-dim position": (dict(input=torch.zeros(2, 3, 4),
                                          target=K_DIM.index_put((torch.tensor(1), torch.tensor(0), torch.tensor(2)),
                                                                 torch.tensor(-0.25)),
                                          target_kind="probs"),
                                     "the most negative, -0.25, is at position (1, 2)"),
    "onehot target": (dict(input=torch.zeros(3, 3), target=torch.tensor([[0., 1, 0], [0.5, 0.5, 0], [0, 0, 1]]),
                           target_kind="onehot"),
                      "target_kind='onehot': the target at position (1,) is not one-hot: 0 entries equal 1 and 2 are "
                      "neither 0 nor 1 (1 such positions)"),
    "onehot target with two ones": (dict(input=torch.zeros(2, 3), target=torch.tensor([[1., 1, 0], [0, 1, 1]]),
                                         target_kind="onehot"),
                                    "the target at position (0,) is not one-hot: 2 entries equal 1 and 0 are neither "
                                    "0 nor 1 (2 such positions)"),
    "label out of range": (dict(input=torch.zeros(4, 5), target=torch.tensor([0, 5, -100, -2])),
                           "target 5 at position (1,) is out of range for 5 classes (0 to 4, or ignore_index=-100); "
                           "2 such positions"),
    "label out of range, K-dim": (dict(input=torch.zeros(2, 5, 3), target=torch.tensor([[0, 1, 2], [3, 4, 7]])),
                                  "target 7 at position (1, 2) is out of range for 5 classes"),
    "label out of range, unbatched": (dict(input=torch.zeros(5), target=torch.tensor(-1)),
                                      "target -1 at position () is out of range for 5 classes"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS.values(), ids=VALUE_ERRORS)
def test_validate_names_the_worst_position(case):
    kw, message = case
    kw = dict(kw)
    x, t = kw.pop("input"), kw.pop("target")
    with pytest.raises(ValueError, match=re.escape(message)):
        flexible(x, t, validate=True, **kw)


def test_an_invalid_label_raises_without_validate():
    """As torch's loss does: the gather of an out-of-range label raises (a device assert on cuda)."""
    for label in (5, -2):
        with pytest.raises((IndexError, RuntimeError)):
            flexible(X, torch.tensor([0, 1, label, 2]))


@pytest.mark.parametrize("num_classes", [2, 1000, 32000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_validate_accepts_rounded_softmax(dtype, num_classes):
    """Distributions as the kit feeds them (float64 softmax rounded once) and as torch's softmax forms
    them in the dtype pass validation; peaked rows with underflowing classes too."""
    torch.manual_seed(9)
    logits = torch.randn(8, num_classes, dtype=torch.float64) * torch.tensor([1.0, 10.0] * 4)[:, None]
    labels = torch.randint(num_classes, (8,))
    for probs in (logits.softmax(1).to(dtype), logits.to(dtype).softmax(1)):
        flexible(probs, labels, input_kind="probs", validate=True)
        flexible(logits.to(dtype), probs, target_kind="probs", validate=True)

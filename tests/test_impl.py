"""What an implementation declares about itself (``conformance.impl``): the variants it takes and
under which keywords, the auxiliaries it returns; unknown or contradictory declarations are
refused when it is loaded, before any check runs."""
import re

import pytest
import torch
import torch.nn.functional as F

from conformance.impl import ImplementationError, LossOptions, adapt, load_implementation
from conformance.reference import Variant
from conformance.vocabulary import VARIANT_FEATURES


def _declaring(**attributes):
    def loss(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    for name, value in attributes.items():
        setattr(loss, name, value)
    return loss


@pytest.mark.parametrize("attributes,message", [
    (dict(variants={"temperature": "t"}), "variants names unknown ['temperature']"),
    (dict(returns={"entropy": "return_entropy"}), "returns names unknown ['entropy']"),
    (dict(returns={"lse": "return_lse"}, differentiable_returns={"lse"}), "gradient of a returned z_loss only"),
    (dict(returns={"z_loss": "return_z_loss"}, differentiable_returns={"lse"}),
     "differentiable_returns names unknown ['lse']"),
    (dict(variants={"softcap": "softcap"}, input_kind="probs"), "variants apply to logits"),
    (dict(deviations={"simplex_gradient"}), "deviations={'simplex_gradient'} is a probability input's"),
    (dict(deviations={"simplex_gradient"}, input_kind="log_probs"), "not input_kind='log_probs'"),
    (dict(variants={"z_loss": "z"}, z_loss_weighting="by_weight"), "z_loss_weighting='by_weight'"),
    (dict(variants={"soft_cap": "softcap"}),
     "variants names unknown ['soft_cap'] (did you mean 'soft_cap' -> 'softcap'?)"),
    (dict(variants="softcap"), "variants='softcap' is a str; declare a dict of names: variants = {name: ...}"),
    (dict(deviations="all_ignored_mean_zero"), "deviations = {'all_ignored_mean_zero'}"),
    (dict(returns={"z_loss": "return_z_loss"}, differentiable_returns="z_loss"),
     "differentiable_returns='z_loss' is a str; declare a set of names: differentiable_returns = {'z_loss'}"),
])
def test_variant_declarations_are_checked(attributes, message):
    with pytest.raises(ImplementationError, match=re.escape(message)):
        adapt(_declaring(**attributes), "probe")


def test_undeclared_variants_are_unsupported():
    assert VARIANT_FEATURES <= adapt(_declaring(), "probe").unsupported


def test_a_declared_variant_is_passed_under_its_keyword_and_only_when_on():
    seen = []

    def loss(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **variant):
        seen.append(variant)
        return torch.zeros(())
    loss.variants = {"z_loss": "lse_square_scale"}
    impl = adapt(loss, "probe")
    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    impl(x, t, LossOptions(variant=Variant(z_loss=1e-4)))
    impl(x, t, LossOptions())
    assert seen == [{"lse_square_scale": 1e-4}, {}]
    assert "z_loss" not in impl.unsupported and {"softcap", "return_z_loss"} <= impl.unsupported


def test_a_returned_auxiliary_is_read_from_a_tuple_or_an_attribute():
    class Output:
        def __init__(self, loss, z_loss):
            self.loss, self.z_loss = loss, z_loss

    for wrap in (lambda loss, z: (loss, z), Output):
        def loss(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 return_z_loss=False, wrap=wrap):
            return wrap(torch.ones(()), torch.full((), 2.0)) if return_z_loss else torch.ones(())
        loss.returns = {"z_loss": "return_z_loss"}
        value, z = adapt(loss, "probe").call_returning("z_loss", torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
        assert (value.item(), z.item()) == (1.0, 2.0)


def _vocab_parallel(local_logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                    *, group, vocab_start):
    raise AssertionError("not called")


class _LinearModule(torch.nn.Module):
    def forward(self, input, linear_weight, target, linear_bias=None):
        raise AssertionError("not called")


@pytest.mark.parametrize("obj,form", [
    (F.cross_entropy, "logits"), (torch.nn.CrossEntropyLoss, "logits"),
    (F.linear_cross_entropy, "linear"), (_LinearModule, "linear"), (_vocab_parallel, "vocab_parallel"),
    (_declaring(form="linear"), "linear"), (F.softmax, "softmax"), (F.log_softmax, "log_softmax"),
    (torch.nn.Softmax, "softmax"), (torch.nn.LogSoftmax(1), "log_softmax"),
], ids=["cross_entropy", "module", "linear_cross_entropy", "linear_module", "vocab_parallel", "declared", "softmax",
        "log_softmax", "softmax_module", "log_softmax_module_instance"])
def test_the_form_is_read_from_the_signature_unless_declared(obj, form):
    assert adapt(obj, "probe").form == form


@pytest.mark.parametrize("attributes,message", [
    (dict(form="sparse"), "form='sparse'"),
    (dict(approximations={"top_k": 5}), "approximations names unknown ['top_k']"),
    (dict(approximations={"gradient_filter": 2.0}), "each bound is a number in [0, 1)"),
    (dict(form="linear", input_kind="probs"), "a linear loss takes logits and index targets"),
    (dict(form="linear", memory="streamed"), "memory='streamed': a linear loss declares one of ['chunked']"),
    (dict(memory="chunked"), "memory='chunked': a linear loss declares one of ['chunked']; this is a logits loss"),
])
def test_form_declarations_are_checked(attributes, message):
    with pytest.raises(ImplementationError, match=re.escape(message)):
        adapt(_declaring(**attributes), "probe")


def test_a_linear_loss_declares_its_memory():
    assert adapt(_declaring(form="linear", memory="chunked"), "probe").memory == "chunked"
    assert adapt(F.linear_cross_entropy, "probe").memory is None


def test_a_linear_loss_is_called_with_the_weight_and_bias_in_torchs_convention():
    impl = adapt(F.linear_cross_entropy, "torch.nn.functional:linear_cross_entropy")
    h, w, b = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5)
    t = torch.tensor([0, 4, 2, 1])
    torch.testing.assert_close(impl.linear(h, w, t, b, LossOptions(reduction="sum")),
                               F.cross_entropy(h @ w.T + b, t, reduction="sum"))
    assert impl.name == "linear_cross_entropy"


@pytest.mark.parametrize("obj", [F.softmax, torch.nn.Softmax, torch.nn.Softmax(0)],
                         ids=["function", "class", "instance"])
def test_a_softmax_is_called_in_torchs_convention(obj):
    """``fn(input, dim, dtype=None)``; a module class is built as ``nn.Softmax(dim)``; ``dtype``
    casts the input first."""
    impl = adapt(obj, "probe")
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(impl.along(x, 0), torch.softmax(x, 0), rtol=0, atol=0)
    assert impl.along(x, 1, torch.float32).dtype == torch.float32


def _module(tmp_path, monkeypatch, name: str, attributes: str):
    (tmp_path / f"{name}.py").write_text("import torch.nn.functional as F\n" + attributes)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_module_without_cross_entropy_resolves_its_one_softmax_form(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "only_log_softmax", "def log_softmax(input, dim, dtype=None):\n"
                                                       "    return F.log_softmax(input, dim, dtype=dtype)\n")
    impl = load_implementation("only_log_softmax")
    assert (impl.form, impl.spec) == ("log_softmax", "only_log_softmax:log_softmax")


def test_a_module_with_both_softmax_forms_must_say_which(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "both_forms", "softmax = F.softmax\nlog_softmax = F.log_softmax\n")
    with pytest.raises(ImplementationError, match=re.escape("module 'both_forms' has softmax and log_softmax; name "
                                                            "the one to judge: --conformance-impl=both_forms:softmax")):
        load_implementation("both_forms")


def test_a_module_with_a_loss_and_a_softmax_must_say_which(tmp_path, monkeypatch):
    """A loss and a softmax kernel in one module: name one, or each (one per form); a helper named
    ``log_softmax`` that is no softmax form (no ``dim``) does not count."""
    _module(tmp_path, monkeypatch, "kernels", "cross_entropy = F.cross_entropy\nsoftmax = F.softmax\n")
    with pytest.raises(ImplementationError, match=re.escape(
            "module 'kernels' has cross_entropy and softmax; name the one to judge: --conformance-impl=kernels:"
            "cross_entropy (or each, one per form: --conformance-impl=kernels:cross_entropy "
            "--conformance-impl=kernels:softmax)")):
        load_implementation("kernels")
    _module(tmp_path, monkeypatch, "with_helper", "cross_entropy = F.cross_entropy\n"
                                                  "def log_softmax(rows):\n    return rows.log_softmax(-1)\n")
    assert load_implementation("with_helper").form == "logits"

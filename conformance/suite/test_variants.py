"""Options fused kernels ship beyond torch's loss (``reference.Variant``): a logit scale, logit
soft-capping, the z-loss, alone and where their order matters (scale before cap, the z-loss on
the capped logits, over kept positions only), and the auxiliaries a kernel returns for logging
(the z-loss, the logsumexp). Each check needs the variants it switches on: an implementation that
does not declare one (``variants``, README) has those checks reported as unsupported."""
import pytest
import torch

from conformance import cases, designed
from conformance.forms import logits as logits_form
from conformance.judge.snippet import Steps
from conformance.reference import Variant
from conformance.vocabulary import dtype_name

# Each setting: the variant, and the factor and shift of the case's logits that make it matter
# (logits beyond the cap, an lse far from 0 for the z-loss). Values from practice: Cohere's scale
# 0.0625, Gemma 2's cap 30; the z-loss weight is 10x PaLM's 1e-4, so that in float32 its term
# (about 1 here) is far above the loss's rounding.
SETTINGS = {
    "scale": (Variant(logit_scale=0.0625), 16.0, 0.0),
    "softcap": (Variant(softcap=30.0), 25.0, 0.0),
    "z_loss": (Variant(z_loss=1e-3), 2.0, 6.0),
    "softcap_z_loss": (Variant(softcap=30.0, z_loss=1e-3), 25.0, 10.0),
    "scale_softcap": (Variant(logit_scale=0.5, softcap=20.0), 50.0, 0.0),
}
# The loss options each setting runs with: the plain loss, and class weights, every third
# position ignored and label smoothing together (where the z-loss's kept positions and its
# weighting show).
OPTIONS = {
    "plain-none": dict(reduction="none"),
    "plain-mean": dict(reduction="mean"),
    "weighted_ignored_smoothed-sum": dict(reduction="sum", weight=True, ignore_index=-100, label_smoothing=0.1),
    "weighted_ignored-mean": dict(reduction="mean", weight=True, ignore_index=-100),
}
_OPTION_FEATURES = {"weight": "weight", "ignore_index": "ignore_index", "label_smoothing": "label_smoothing"}


def _params(table: dict, features) -> list:
    return [pytest.param(name, id=name, marks=[pytest.mark.feature(*features(value))]) for name, value in table.items()]


SETTING_PARAMS = _params(SETTINGS, lambda setting: list(setting[0].options()))
OPTION_PARAMS = _params(OPTIONS, lambda options: [f for key, f in _OPTION_FEATURES.items() if key in options])


def _problem(setting: str, options: dict, dtype, device, seed, *, n: int = 12, c: int = 37, upstream="random"):
    variant, factor, shift = SETTINGS[setting]
    options = dict(options)
    case = cases.well_conditioned(n, c, dtype, device, seed=seed, scale=factor, shift=shift,
                                  weight=options.pop("weight", False), ignore_index=options.get("ignore_index"),
                                  family=f"variant_{setting}")
    return cases.problem(case, variant=variant, upstream=upstream, note=f", variant setting={setting}", **options)


@pytest.mark.parametrize("options", OPTION_PARAMS)
@pytest.mark.parametrize("setting", SETTING_PARAMS)
def test_variant_value_and_gradient(judge, device, dtype, setting, options, seed):
    """The loss and its gradient with the variant on, against the float64 variant's truth."""
    judge.conforms(_problem(setting, OPTIONS[options], dtype, device, seed))


# Class counts around block widths (test_boundaries): a cap or a z-loss applied to the first
# block only, or a z-loss logsumexp that drops the remainder block, shows here.
BLOCK_WIDTHS = [1023, 1025, 4097, 65537]


@pytest.mark.feature("softcap", "z_loss")
@pytest.mark.sweep("num_classes", BLOCK_WIDTHS)
def test_variant_at_block_widths(judge, device, num_classes, dtype, reduction, seed):
    """Two rows of ``C`` capped logits with the z-loss, ``C`` around a block width."""
    problem = _problem("softcap_z_loss", dict(reduction=reduction), dtype, device, seed, n=2, c=num_classes)
    judge.conforms(problem)


# Logits the cap must tame: far beyond the cap (past float16's range), +-inf (the cap maps them to +-c, so the
# loss is finite and the gradient there is 0), and a common shift under the z-loss (lse ~ 1e3).
EXTREMES = {
    "huge_under_cap": ("softcap", "logits = z * 1e4"),
    "infinite_under_cap": ("softcap", "logits = z.clone(); logits[:, 0] = float('inf'); logits[:, 1] = -float('inf')"),
    "shifted_z_loss": ("z_loss", "logits = z + 1000.0"),
}


@pytest.mark.parametrize("extreme", [pytest.param(name, marks=[pytest.mark.feature(*SETTINGS[s][0].options())])
                                     for name, (s, _) in EXTREMES.items()])
def test_variant_extreme_logits(judge, device, dtype, extreme, seed):
    setting, body = EXTREMES[extreme]
    recipe = (f"torch.default_generator.manual_seed({seed})\nz = torch.randn(6, 11, dtype=torch.float64)\n"
              f"target = torch.randint(11, (6,))\n{body}\nlogits = logits.to(torch.{dtype_name(dtype)})")
    case = cases.from_recipe(f"variant_{extreme}", recipe, device)
    judge.conforms(cases.problem(case, variant=SETTINGS[setting][0], reduction="none",
                                 note=f", variant setting={setting}"))


# Each auxiliary: the setting it is returned under, its bound (tolerance.BOUNDS) and the truth's
# attribute that holds it.
AUXILIARIES = {"z_loss": ("z_loss", "z-loss", "z_loss_value"), "lse": ("softcap", "logsumexp", "position_logsumexp")}

@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("auxiliary", [
    pytest.param(name, marks=[pytest.mark.feature(f"return_{name}", "ignore_index", *SETTINGS[s][0].options())])
    for name, (s, _, _) in AUXILIARIES.items()])
def test_returned_auxiliary(impl, judge, device, dtype, auxiliary, reduction, seed):
    """The loss and the auxiliary it returns beside it, against the truth; then the auxiliary's
    gradient (the z-loss's; the kit states no gradient of a returned logsumexp): the truth's if
    it is declared differentiable, and a logging-only one that still carries a gradient must not
    carry a wrong one silently (a probed gap)."""
    setting, bound, truth_attribute = AUXILIARIES[auxiliary]
    problem = _problem(setting, dict(reduction=reduction, ignore_index=-100), dtype, device, seed, upstream=None)
    options = problem.options
    steps = Steps(impl, problem)
    steps("x.requires_grad_()", "from conformance.impl import LossOptions",
          f"problem_options = LossOptions(reduction={options.reduction!r}, ignore_index={options.ignore_index!r}, "
          f"variant={options.variant!r})", f"loss, aux = impl.call_returning({auxiliary!r}, x, t, problem_options)")
    ev, returned = steps["truth"], steps["aux"]
    judge.value(problem, logits_form.Outcome(*steps.fed, loss=steps["loss"].detach()), ev,
                show=steps.show("loss{at}.item()", "truth.loss{at}.item()"))
    judge.within(f"returned {auxiliary}", problem, returned.detach(), getattr(ev, truth_attribute), bound,
                 ev=ev, show=steps.show("aux{at}.item()", f"truth.{truth_attribute}" + "{at}.item()"))
    differentiable = auxiliary in impl.differentiable_returns
    if differentiable and not returned.requires_grad:
        judge.fail(f"gradient of the returned {auxiliary}", problem, f"the returned {auxiliary} is declared "
                   "differentiable (differentiable_returns) but does not require grad",
                   show=steps.show("aux.requires_grad", "True"))
    if auxiliary != "z_loss" or not returned.requires_grad:
        return
    steps("grad = torch.full_like(aux, 1.5)", "aux.backward(grad)", "z_only = truth.without_cross_entropy()")
    grad, z_only, x = steps["grad"], steps["z_only"], steps["x"]
    actual = torch.zeros_like(x) if x.grad is None else x.grad
    show = steps.show("x.grad{at}.item()", "z_only.grad(grad){at}.item()")
    if differentiable:
        judge.within("gradient of the returned z_loss", problem, actual, z_only.grad(grad), "gradient",
                     ev=z_only, grad_output=grad, show=show)
        return
    error = (actual.double().cpu() - z_only.grad(grad)).abs()
    if bool((error > judge.bound("gradient", dtype, ev=z_only, grad_output=grad)).any()):
        judge.gap(f"differentiable_{auxiliary}", problem,
                  f"the returned {auxiliary} is declared for logging only, yet it requires grad and backward "
                  f"through it gives a gradient off by up to {float(error.max()):.3g} (a user who adds it to the "
                  f"loss trains on a wrong gradient)")



@pytest.mark.design("variants")
def test_variants_over_the_design(judge, device, dtype, reduction, row, seed):
    """One row of the variants' covering design: each variant's parameter off, small, typical,
    large (and a negative scale), every pair of levels met with the widths, distributions,
    placements and features (a mistake negligible at a cap of 30 and large at 2.5 shows here)."""
    index, levels = row
    judge.conforms(designed.logits_problem(levels, index, device, seed))

"""The life of a call: what a training loop does around a loss besides one forward and one backward.

Kernels keep buffers between forward and backward (Liger-Kernel saves the gradient it formed in
forward and scales it in backward), cache, take fast paths without autograd, and are handed
tensors the caller owns. So: a second backward through the same graph gives the same gradient; a
gradient already returned does not change later; gradients accumulate into ``.grad``; the
caller's upstream gradient, weights and target are bitwise unchanged; a loss recomputed after the
caller changed its logits in place is the new loss; no-grad and inference mode give the
grad-enabled value.
"""
import pytest
import torch

from conformance import cases
from conformance.forms import logits as logits_form
from conformance.forms.protocol import upstream_lines
from conformance.guards import bits
from conformance.judge.snippet import IMPORT_BITS, Steps

# A call's life does not depend on its options, but a buffer kept between calls may hold them:
# every check runs plainly (so a loss without class weights or smoothing is judged on all the
# rest) and with weights and smoothing where the loss takes them.
OPTIONS = pytest.mark.parametrize("options", [
    pytest.param("plain"),
    pytest.param("weighted+smoothed", marks=pytest.mark.feature("weight", "label_smoothing")),
])


def _problem(impl, options, dtype, device, seed, *, reduction="none", upstream="random"):
    """Some positions ignored (where the loss takes ignore_index); with ``weighted+smoothed``,
    every option a buffer could hold."""
    weighted = options == "weighted+smoothed"
    case = cases.well_conditioned(11, 9, dtype, device, seed=seed, weight=weighted,
                                  ignore_index=cases.ignore_index_for(impl), family="life of a call")
    return cases.problem(case, reduction=reduction, label_smoothing=0.1 if weighted else 0.0, upstream=upstream)


def _upstream(problem) -> list:
    return upstream_lines(problem.upstream, problem.device)


def _kept_weights(steps: Steps, problem) -> str:
    """The code of the caller's class weights as given (``weight0``, a copy kept by a step before
    any call: a loss that writes into them fails ``test_caller_tensors_unchanged``, not every check)."""
    if problem.case.weight is None:
        return "weight"
    steps("weight0 = weight.clone()")
    return "weight0"


def _kept(steps: Steps, problem) -> tuple:
    """Copies of the logits and the class weights as given, kept by steps before any call: the
    code of each (``_truth_after``)."""
    steps("x0 = x.detach().clone()")
    return "x0", _kept_weights(steps, problem)


def _truth_after(steps: Steps, impl, problem, kept: tuple):
    """The truth evaluated by a step after the calls, on the logits and weights as given and the
    target as the calls left it (a loss that writes into its target is judged on what it left)."""
    x, weight = kept
    return steps(logits_form.truth_code(impl, problem, x, weight=weight))["truth"]


@pytest.mark.feature("backward")
@OPTIONS
def test_backward_twice_gives_the_same_gradient(impl, judge, device, dtype, options, seed):
    """``retain_graph=True``: a second backward through the same graph returns the same gradient,
    and the first one returned is not changed by it (a backward that scales a saved buffer in
    place returns it scaled twice). A loss that refuses the second backward (a compiled graph's
    donated buffers) has a probed gap, ``retain_graph``."""
    problem = _problem(impl, options, dtype, device, seed)
    steps = Steps(impl, problem)
    kept = _kept(steps, problem)
    steps(IMPORT_BITS, "x.requires_grad_()", *_upstream(problem), f"loss = {logits_form.call_code(impl, problem)}",
          "first, = torch.autograd.grad(loss, x, grad, retain_graph=True)", "kept = bits(first)")
    judge.probe("retain_graph", problem, lambda: steps("second, = torch.autograd.grad(loss, x, grad)"),
                "a second backward over the graph kept with retain_graph=True")
    out = logits_form.Outcome(input=steps["x0"], target=steps["t"], loss=steps["loss"].detach(),
                              grad=steps["second"], upstream=steps["grad"])
    judge.gradient(problem, out, _truth_after(steps, impl, problem, kept),
                   identity="second backward (retain_graph=True)",
                   show=steps.show("second{at}.item()", "truth.grad(grad){at}.item()"))
    if not torch.equal(bits(steps["first"]), steps["kept"]):
        judge.fail("a returned gradient does not change", problem,
                   "the gradient returned by the first backward changed during the second",
                   show=steps.show("torch.equal(bits(first), kept)", "True"))


@pytest.mark.feature("backward")
@OPTIONS
def test_gradients_accumulate(impl, judge, device, dtype, options, seed):
    """Two forward and backward passes into the same leaf: ``.grad`` holds the sum of both. Each
    call is handed its own copy of the class weights (a loss that writes into them fails
    ``test_caller_tensors_unchanged``, not this check)."""
    problem = _problem(impl, options, dtype, device, seed)
    steps = Steps(impl, problem)
    # A loss that declares overwrites_logits gets its logits anew before each call, as from a new forward.
    restore = judge.declares("overwrites_logits")
    weight = "weight" if problem.case.weight is None else "weight.clone()"
    call = f"{logits_form.call_code(impl, problem, weight=weight)}.backward(grad)"
    renew = ["with torch.no_grad(): x.copy_(x0)"] * restore
    kept = _kept(steps, problem)
    steps("x.requires_grad_()", *_upstream(problem), *renew, call, *renew, call)
    out = logits_form.Outcome(input=steps["x0"], target=steps["t"], loss=torch.empty(()), grad=steps["x"].grad,
                              upstream=2 * steps["grad"].double())
    judge.gradient(problem, out, _truth_after(steps, impl, problem, kept),
                   identity="gradients accumulate over two backward passes",
                   show=steps.show("x.grad{at}.item()", "truth.grad(2 * grad.double()){at}.item()"))


@pytest.mark.feature("backward")
@OPTIONS
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_caller_tensors_unchanged(impl, judge, device, dtype, reduction, options, seed):
    """The upstream gradient, the class weights and the target belong to the caller: bitwise
    unchanged after forward and after backward."""
    problem = _problem(impl, options, dtype, device, seed, reduction=reduction)
    steps = Steps(impl, problem)
    steps(IMPORT_BITS, "x.requires_grad_()", *_upstream(problem))
    owned = {"upstream gradient": "grad", "class weights": "weight", "target": "t"}
    owned = {name: variable for name, variable in owned.items() if steps[variable] is not None}
    steps(f"{', '.join(v + '0' for v in owned.values())}, = {', '.join(f'bits({v})' for v in owned.values())},",
          f"loss = {logits_form.call_code(impl, problem)}")

    def changed(stage: str) -> list:
        return [f"{name} ({stage})" for name, v in owned.items() if not torch.equal(bits(steps[v]), steps[v + "0"])]

    during_forward = changed("during forward")
    steps("loss.backward(grad)")
    during_backward = [name for name in changed("during backward")
                       if name.replace("backward", "forward") not in during_forward]
    if during_forward or during_backward:
        judge.fail("caller's tensors unchanged", problem, "modified: " + ", ".join(during_forward + during_backward),
                   show=steps.show(" and ".join(f"torch.equal(bits({v}), {v}0)" for v in owned.values()), "True"))


@OPTIONS
def test_in_place_change_gives_a_new_answer(impl, judge, device, dtype, options, seed):
    """The caller changes its logits in place between two calls: the second call's loss is the
    loss of the new logits (no result cached by the tensor's address: a known exploit of
    kernel judges). The same tensors both times, as a training loop passes them; the second call
    is judged against the truth of what it was handed (a loss may overwrite it: overwrites_logits)."""
    problem = _problem(impl, options, dtype, device, seed, upstream=None)
    steps = Steps(impl, problem)
    call = logits_form.call_code(impl, problem)
    weight = _kept_weights(steps, problem)
    steps(f"with torch.no_grad():\n    first = {call}\n    x.mul_(2)\n    changed = x.clone()\n    loss = {call}",
          logits_form.truth_code(impl, problem, "changed", weight=weight))
    out = logits_form.Outcome(input=steps["changed"], target=steps["t"], loss=steps["loss"])
    judge.value(problem, out, steps["truth"], identity="a call after an in-place change",
                show=steps.show("loss{at}.item()", "truth.loss{at}.item()"))


@OPTIONS
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_agree(impl, judge, device, dtype, mode, options, seed):
    """Under ``torch.no_grad()`` and ``torch.inference_mode()`` (evaluation loops) the loss is the
    grad-enabled one: same shape, same value against the truth."""
    problem = _problem(impl, options, dtype, device, seed, upstream=None)
    steps = Steps(impl, problem)
    kept = _kept(steps, problem)
    steps(f"with torch.{mode}():\n    loss = {logits_form.call_code(impl, problem)}",
          f"enabled = {logits_form.call_code(impl, problem, x='x.detach().requires_grad_()')}")
    loss, enabled = steps["loss"], steps["enabled"]
    if loss.shape != enabled.shape:
        judge.fail(f"{mode} gives the grad-enabled shape", problem,
                   f"shape {tuple(loss.shape)} under {mode}, {tuple(enabled.shape)} with autograd",
                   show=steps.show("tuple(loss.shape)", "tuple(enabled.shape)"))
    out = logits_form.Outcome(input=steps["x0"], target=steps["t"], loss=loss.clone())
    judge.value(problem, out, _truth_after(steps, impl, problem, kept), identity=f"value under torch.{mode}()",
                show=steps.show("loss{at}.item()", "truth.loss{at}.item()"))

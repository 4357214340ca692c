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
from conformance.forms import Show
from conformance.forms import logits as logits_form
from conformance.guards import bits

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


def _leaf(impl, problem):
    x, t = impl.feed(problem.case.logits, problem.case.target)
    return x.detach().clone(), x.detach().clone().requires_grad_(), t


@pytest.mark.feature("backward")
@OPTIONS
def test_backward_twice_gives_the_same_gradient(impl, judge, device, dtype, options, seed):
    """``retain_graph=True``: a second backward through the same graph returns the same gradient,
    and the first one returned is not changed by it (a backward that scales a saved buffer in
    place returns it scaled twice). A loss that refuses the second backward (a compiled graph's
    donated buffers) has a probed gap, ``retain_graph``."""
    problem = _problem(impl, options, dtype, device, seed)
    pristine, x, t = _leaf(impl, problem)
    grad = problem.upstream_gradient()
    loss = impl(x, t, problem.call_options())
    first, = torch.autograd.grad(loss, x, grad, retain_graph=True)
    kept = bits(first)
    second, = judge.probe("retain_graph", problem, lambda: torch.autograd.grad(loss, x, grad),
                          "a second backward over the graph kept with retain_graph=True")
    out = logits_form.Outcome(input=pristine, target=t, loss=loss.detach(), grad=second, upstream=grad)
    ev = logits_form.truth(impl, problem, out)
    steps = ("x.requires_grad_()", f"loss = {logits_form.call_code(impl, problem)}", problem.upstream,
             "first, = torch.autograd.grad(loss, x, grad, retain_graph=True)", "kept = first.clone()",
             "second, = torch.autograd.grad(loss, x, grad)")
    judge.gradient(problem, out, ev, identity="second backward (retain_graph=True)",
                   show=Show("second{at}.item()", "truth.grad(grad){at}.item()", steps))
    if not torch.equal(bits(first), kept):
        judge.fail("a returned gradient does not change", problem,
                   "the gradient returned by the first backward changed during the second",
                   show=Show("torch.equal(first, kept)", "True", steps))


@pytest.mark.feature("backward")
@OPTIONS
def test_gradients_accumulate(impl, judge, device, dtype, options, seed):
    """Two forward and backward passes into the same leaf: ``.grad`` holds the sum of both."""
    problem = _problem(impl, options, dtype, device, seed)
    pristine, x, t = _leaf(impl, problem)
    grad = problem.upstream_gradient()
    # A loss that declares overwrites_logits gets its logits anew before each call, as from a new forward.
    restore = "overwrites_logits" in impl.deviations
    for _ in range(2):
        if restore:
            with torch.no_grad():
                x.copy_(pristine)
        impl(x, t, problem.call_options()).backward(grad)
    out = logits_form.Outcome(input=pristine, target=t, loss=torch.empty(()), grad=x.grad, upstream=2 * grad.double())
    call = f"{logits_form.call_code(impl, problem)}.backward(grad)"
    kept, renew = (("x0 = x.detach().clone()",), ("with torch.no_grad(): x.copy_(x0)",)) if restore else ((), ())
    steps = ("x.requires_grad_()", problem.upstream, *kept, *renew, call, *renew, call)
    judge.gradient(problem, out, logits_form.truth(impl, problem, out),
                   identity="gradients accumulate over two backward passes",
                   show=Show("x.grad{at}.item()", "truth.grad(2 * grad.double()){at}.item()", steps))


@pytest.mark.feature("backward")
@OPTIONS
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_caller_tensors_unchanged(impl, judge, device, dtype, reduction, options, seed):
    """The upstream gradient, the class weights and the target belong to the caller: bitwise
    unchanged after forward and after backward."""
    problem = _problem(impl, options, dtype, device, seed, reduction=reduction)
    _, x, t = _leaf(impl, problem)
    grad = problem.upstream_gradient()
    call = problem.call_options()
    owned = {"upstream gradient": ("grad", grad), "class weights": ("weight", call.weight), "target": ("t", t)}
    owned = {name: (variable, tensor) for name, (variable, tensor) in owned.items() if tensor is not None}
    before = {name: bits(tensor) for name, (_, tensor) in owned.items()}
    loss = impl(x, t, call)
    changed = [f"{name} (during forward)" for name, (_, tensor) in owned.items()
               if not torch.equal(bits(tensor), before[name])]
    loss.backward(grad)
    changed += [f"{name} (during backward)" for name, (_, tensor) in owned.items()
                if not torch.equal(bits(tensor), before[name]) and f"{name} (during forward)" not in changed]
    if changed:
        variables = [variable for variable, _ in owned.values()]
        judge.fail("caller's tensors unchanged", problem, "modified: " + ", ".join(changed),
                   show=Show(" and ".join(f"torch.equal({v}, {v}0)" for v in variables), "True",
                             steps=("x.requires_grad_()", problem.upstream,
                                    f"{', '.join(v + '0' for v in variables)} = "
                                    f"{', '.join(v + '.clone()' for v in variables)}",
                                    f"{logits_form.call_code(impl, problem)}.backward(grad)")))


@OPTIONS
def test_in_place_change_gives_a_new_answer(impl, judge, device, dtype, options, seed):
    """The caller changes its logits in place between two calls: the second call's loss is the
    loss of the new logits (no result cached by the tensor's address: a known exploit of
    kernel judges)."""
    problem = _problem(impl, options, dtype, device, seed, upstream=None)
    x, t = impl.feed(problem.case.logits, problem.case.target)
    x, call = x.clone(), problem.call_options()   # the same tensors both times, as a training loop passes them
    with torch.no_grad():
        impl(x, t, call)
        x.mul_(2)
        changed = x.clone()   # what the second call is handed (a loss may overwrite it: overwrites_logits)
        loss = impl(x, t, call)
    out = logits_form.Outcome(input=changed, target=t, loss=loss)
    steps = (f"first = {logits_form.call_code(impl, problem)}", "x.mul_(2)", "changed = x.clone()",
             f"loss = {logits_form.call_code(impl, problem)}", logits_form.truth_code(impl, problem, "changed"))
    judge.value(problem, out, logits_form.truth(impl, problem, out), identity="a call after an in-place change",
                show=Show("loss{at}.item()", "truth.loss{at}.item()", steps))


@OPTIONS
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_agree(impl, judge, device, dtype, mode, options, seed):
    """Under ``torch.no_grad()`` and ``torch.inference_mode()`` (evaluation loops) the loss is the
    grad-enabled one: same shape, same value against the truth."""
    problem = _problem(impl, options, dtype, device, seed, upstream=None)
    x, t = impl.feed(problem.case.logits, problem.case.target)
    pristine = x.clone()
    with getattr(torch, mode)():
        loss = impl(x, t, problem.call_options())
    enabled = impl(x.detach().requires_grad_(), t, problem.call_options())
    if loss.shape != enabled.shape:
        judge.fail(f"{mode} gives the grad-enabled shape", problem,
                   f"shape {tuple(loss.shape)} under {mode}, {tuple(enabled.shape)} with autograd")
    out = logits_form.Outcome(input=pristine, target=t, loss=loss.clone())
    steps = (f"with torch.{mode}():", f"    loss = {logits_form.call_code(impl, problem)}")
    judge.value(problem, out, logits_form.truth(impl, problem, out), identity=f"value under torch.{mode}()",
                show=Show("loss{at}.item()", "truth.loss{at}.item()", steps))

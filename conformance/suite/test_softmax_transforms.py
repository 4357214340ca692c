"""Softmax kernels under transforms (``FORM = "softmax"``; ``test_log_softmax_transforms`` runs the
same checks on the log-softmax form): forward-mode AD, double backward and vmap, in float64 and
float32 as every tangent (``tolerance.softmax``, Forward mode). Each is an optional
capability: where a transform raises, whatever its words, the check reports it unsupported
(probed); every wrong result fails. Each check's steps run as its snippet prints them (``Steps``).
"""

import pytest

from conformance.forms.protocol import direction_lines, upstream_lines
from conformance.forms.softmax import softmax_problem
from conformance.judge.snippet import Steps
from conformance.suite.test_softmax import SHAPES, WIDE, _dim_marks, _randn
from conformance.vocabulary import dtype_name

FORM = "softmax"

TRANSFORM_SHAPES = [pytest.param(shape, marks=_dim_marks(shape)) for shape in ("rows", "middle_dim")]
EACH_WIDE_DTYPE = pytest.mark.parametrize("dtype", WIDE, ids=dtype_name)
# torch.func scripts helpers on first use; the warning is torch's own, not the implementation's. On
# each check (a module's pytestmark would not reach the log-softmax twin, which imports the checks).
TORCH_FUNC_WARNING = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.feature("forward_ad")
@TORCH_FUNC_WARNING
@EACH_WIDE_DTYPE
@pytest.mark.parametrize("shape", TRANSFORM_SHAPES)
def test_forward_mode(judge, impl, device, dtype, shape, seed):
    """``torch.func.jvp`` along a tangent ``v``: softmax ``y (v - sum(v y))`` (its Jacobian is
    symmetric), log-softmax ``v - sum(softmax(z) v)``."""
    size, dim = SHAPES[shape]
    problem = softmax_problem(shape, _randn(size, dtype, seed), device, dim, upstream=None)
    steps = Steps.replaying(impl, problem, truth=True)
    steps(*direction_lines(size, dtype, seed, device))
    judge.probe("forward_ad", problem,
                lambda: steps(f"y, d = torch.func.jvp(lambda z: impl.along(z, {dim}), (x,), (v,))"),
                what="torch.func.jvp")
    sev = steps["truth"]
    judge.within("value under jvp", problem, steps["y"], sev.output, "softmax",
                 show=steps.show("y{at}.item()", "truth.output{at}.item()"), sev=sev)
    judge.within("directional derivative", problem, steps["d"], sev.directional(steps["v"]),
                 "softmax directional derivative", show=steps.show("d{at}.item()", "truth.directional(v){at}.item()"),
                 sev=sev, tangent=steps["v"])


@pytest.mark.feature("backward", "double_backward")
@TORCH_FUNC_WARNING
@EACH_WIDE_DTYPE
@pytest.mark.parametrize("shape", TRANSFORM_SHAPES)
def test_double_backward(judge, impl, device, dtype, shape, seed):
    """The derivative of ``<VJP(g), v>`` (softmax ``J(v g) - <v,p> J(g) - <g,p> J(v)``, log-softmax
    ``-sum(g) J(v)``, ``J(w) = p (w - <w, p>)``): a backward built from detached tensors, or
    marked once_differentiable, is a probed gap; a wrong second derivative fails."""
    size, dim = SHAPES[shape]
    problem = softmax_problem(shape, _randn(size, dtype, seed), device, dim)
    steps = Steps.replaying(impl, problem, truth=True)
    steps(*upstream_lines(problem.upstream, device), *direction_lines(size, dtype, seed, device),
          "x.requires_grad_()")
    judge.probe("double_backward", problem,
                lambda: steps(f"g, = torch.autograd.grad(impl.along(x, {dim}), x, grad, create_graph=True)"),
                what="torch.autograd.grad(y, x, grad, create_graph=True)")
    if not steps["g"].requires_grad:
        judge.gap("double_backward", problem, "the gradient computed with create_graph=True does not depend on the "
                  "input (a backward built from detached tensors, or @once_differentiable)")
    judge.probe("double_backward", problem, lambda: steps("hv, = torch.autograd.grad(g, x, v)"),
                what="torch.autograd.grad(g, x, v) of the gradient computed with create_graph=True")
    sev, grad, v = steps["truth"], steps["grad"], steps["v"]
    judge.within("Hessian-vector product", problem, steps["hv"], sev.hessian_vector(grad, v),
                 "softmax hessian-vector product",
                 show=steps.show("hv{at}.item()", "truth.hessian_vector(grad, v){at}.item()"), sev=sev,
                 grad_output=grad, v=v)


VMAP_BATCH = 3


@pytest.mark.feature("vmap")
@TORCH_FUNC_WARNING
@EACH_WIDE_DTYPE
@pytest.mark.parametrize("shape", TRANSFORM_SHAPES)
def test_vmap(judge, impl, device, dtype, shape, seed):
    """``torch.func.vmap`` over a leading batch of inputs: each the form of its own input along
    ``dim``, as one call on the stacked input gives."""
    size, dim = SHAPES[shape]
    inner = dim % len(size)
    problem = softmax_problem(f"vmap {shape}", _randn((VMAP_BATCH, *size), dtype, seed), device, inner + 1,
                              upstream=None)
    steps = Steps.replaying(impl, problem, truth=True)
    judge.probe("vmap", problem, lambda: steps(f"y = torch.func.vmap(lambda z: impl.along(z, {inner}))(x)"),
                what="torch.func.vmap")
    judge.within("value under vmap", problem, steps["y"], steps["truth"].output, "softmax",
                 show=steps.show("y{at}.item()", "truth.output{at}.item()"), sev=steps["truth"])


__all__ = ["test_forward_mode", "test_double_backward", "test_vmap"]

"""Liger-Kernel's liger_softmax (a Triton kernel along the last dim, single-block or online over
blocks by width, run by Triton's interpreter on the CPU), as a user calls it for any dim: the dim
moved last and back, ``dtype=`` cast first."""

REQUIRES = ("liger_kernel", "triton")
ENVIRONMENT = {"TRITON_INTERPRET": "1"}
# Under the interpreter each program runs in Python, and bfloat16 arithmetic is wrong there
# (Triton 3.9: x * g of two bf16 values gives garbage), so no bfloat16, and no 65537-row input (a
# program a row); 300 s a check before it is called hung.
PROFILE = ("-k", "not test_rows_past_the_grid_limit", "--conformance-dtype", "float64", "--conformance-dtype",
           "float32", "--conformance-dtype", "float16", "--conformance-timeout", "300")


def pytest_conformance_impl(config):
    from liger_kernel.transformers.functional import liger_softmax

    def softmax(input, dim, dtype=None):
        x = input if dtype is None else input.to(dtype)
        return liger_softmax(x.movedim(dim, -1)).movedim(-1, dim)

    softmax.form = "softmax"
    # LigerSoftmaxFunction: a hand-written backward, no forward-mode rule, no vmap rule, its backward
    # not differentiable again (its docstring and source: autograd.Function with forward/backward only).
    softmax.unsupported = {"double_backward", "forward_ad", "vmap"}
    return softmax

"""Liger-Kernel's liger_cross_entropy (a Triton kernel, run by Triton's interpreter on the CPU),
with its soft-capping and z-loss variants. Class weights and soft-capping cannot run under the
interpreter: they stop with InterpreterError ("'float' object has no attribute 'to'"), as Triton
3.9's interpreter passes a float argument as a Python float where a compiled kernel gets a
tensor (the kernel's weight_sum.to(tl.float32), softcap.to(tl.float32)). Those checks are the
interpreter's to fail, not Liger's: this row reports them unsupported (UNDER_THE_INTERPRETER)."""

REQUIRES = ("liger_kernel", "triton")
ENVIRONMENT = {"TRITON_INTERPRET": "1"}
# Under the interpreter each program runs in Python, and bfloat16 arithmetic is wrong there
# (Triton 3.9: x * g of two bf16 values gives garbage), so: no bfloat16, no boundary sweeps
# (up to 65536 rows), properties or XOR training, and 300 s a check before it is called hung.
PROFILE = ("-k", "not test_boundaries.py and not test_properties.py and not test_document.py",
           "--conformance-dtype", "float32", "--conformance-dtype", "float16", "--conformance-timeout", "300")


# What Triton's interpreter cannot run of Liger's kernel (see above): not a limit of Liger's, so
# only this row, which runs it under the interpreter, declares it.
UNDER_THE_INTERPRETER = {"weight", "softcap"}


def pytest_conformance_impl(config):
    from liger_kernel.transformers.functional import liger_cross_entropy

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      softcap=None, lse_square_scale=0.0, return_z_loss=False):
        out = liger_cross_entropy(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=label_smoothing, softcap=softcap,
                                  lse_square_scale=lse_square_scale, return_z_loss=return_z_loss)
        return (out.loss, out.z_loss) if return_z_loss else out

    # README.md's declarations for Liger (section "Loss variants"): its documented interface.
    cross_entropy.variants = {"softcap": "softcap", "z_loss": "lse_square_scale"}
    cross_entropy.returns = {"z_loss": "return_z_loss"}
    cross_entropy.differentiable_returns = set()        # its docstring: the z-loss "is only for logging"
    # Liger's README: memory saved "with kernel fusion, in-place replacement" (the forward stores
    # the gradient in the logits: ops/cross_entropy.py, "store X_ptr gradient in X_ptr").
    cross_entropy.deviations = {"overwrites_logits"}
    cross_entropy.unsupported = {"float64", "kdim", "unbatched", "probability_target", "empty_batch",
                                 "double_backward", "forward_ad", "vmap"} | UNDER_THE_INTERPRETER
    return cross_entropy

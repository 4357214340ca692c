"""cut-cross-entropy's linear_cross_entropy (a linear loss: hidden states and classifier weight),
impl="torch_compile", its path for machines without its Triton kernels."""

REQUIRES = ("cut_cross_entropy",)
# Its Triton path (impl="cce") stops in Triton's interpreter (InterpreterError: 'NoneType' object
# has no attribute 'dtype'): the compiled path, which compiles per shape and dtype (seconds each).
PROFILE = ("--conformance-timeout", "300")


def pytest_conformance_impl(config):
    import torch._dynamo
    from cut_cross_entropy import linear_cross_entropy as cce

    def cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                      ignore_index=-100, label_smoothing=0.0):
        return cce(input, linear_weight, target, ignore_index=ignore_index, reduction=reduction, impl="torch_compile")

    # README.md's declarations for cut-cross-entropy (section "Linear cross entropy").
    cross_entropy.unsupported = {"weight", "label_smoothing", "linear_bias", "float64"}
    torch._dynamo.config.recompile_limit = 64        # the kit calls it at ~16 shapes and dtypes
    return cross_entropy

"""Transformer Engine's Triton cross entropy (transformer_engine/pytorch/cross_entropy.py's
CrossEntropyFunction and its Triton kernels, run by Triton's interpreter on the CPU)."""

REQUIRES = ("transformer_engine", "triton")
ENVIRONMENT = {"TRITON_INTERPRET": "1"}
# Under the interpreter each program runs in Python (and TE takes no bfloat16 here: see below):
# no boundary sweeps (up to 65536 rows), properties or XOR training; 300 s a check.
PROFILE = ("-k", "not test_boundaries.py and not test_properties.py and not test_document.py",
           "--conformance-dtype", "float32", "--conformance-timeout", "300")


def pytest_conformance_impl(config):
    # transformer_engine's __init__ loads its CUDA library, so its three Python files are loaded
    # from its folder; jit.py (a decorator that keeps dynamo out, for overwrite_input only) would
    # pull in the rest of the package: a stand-in that leaves the function as it is. The public
    # parallel_cross_entropy refuses CPU tensors (_validate_inputs: "inp must be a CUDA tensor"),
    # so its autograd function is called as parallel_cross_entropy calls it after that check.
    import sys
    import types

    from ._installed import load

    jit = types.ModuleType("transformer_engine.pytorch.jit")
    jit.no_torch_dynamo = lambda *args, **kwargs: (lambda fn: fn)
    load("transformer_engine", "common/triton/cross_entropy.py", "transformer_engine.common.triton.cross_entropy")
    sys.modules.setdefault("transformer_engine.pytorch.jit", jit)
    load("transformer_engine", "pytorch/triton/cross_entropy.py", "transformer_engine.pytorch.triton.cross_entropy")
    te = load("transformer_engine", "pytorch/cross_entropy.py", "transformer_engine.pytorch.cross_entropy")

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        # The one check of _validate_inputs that the kit's declarations do not already cover
        # (dtype, empty input), skipped here with the CUDA one: one target per row.
        if target.numel() != input.shape[0]:
            raise ValueError(f"Each input row needs one target token ID: expected {input.shape[0]}, "
                             f"got {target.numel()}")
        # TE takes (B, SQ, V) logits: a batch of N rows is (1, N, V); its mean (reduce_loss) comes
        # back as shape (1,), its losses as (B * SQ,), which a sum adds up as a caller would.
        loss = te.CrossEntropyFunction.apply(input.unsqueeze(0), target.unsqueeze(0), label_smoothing,
                                             reduction == "mean", None, ignore_index, False)
        if reduction == "mean":
            return loss.reshape(())
        return loss.sum() if reduction == "sum" else loss.reshape(target.shape)

    # Documented (parallel_cross_entropy's docstring and _validate_inputs): BF16 or FP32 input,
    # 3D logits, reduce_loss (the mean) or one loss per row, the loss in FP32, no class weights,
    # no empty dimension, one backward per loss.
    cross_entropy.unsupported = {"float64", "float16", "weight", "probability_target", "kdim",
                                 "unbatched", "empty_batch", "double_backward", "forward_ad", "vmap"}
    cross_entropy.deviations = {"float32_output"}
    return cross_entropy

"""flash-attention's Triton cross entropy (flash_attn/ops/triton/cross_entropy.py, run by Triton's
interpreter on the CPU), reduced as its CrossEntropyLoss module reduces, with its logit scale and
z-loss variants."""

REQUIRES = ("flash_attn", "triton")
ENVIRONMENT = {"TRITON_INTERPRET": "1"}
# Under the interpreter each program runs in Python, and bfloat16 arithmetic is wrong there
# (Triton 3.9: x * g of two bf16 values gives garbage), so: no bfloat16, no boundary sweeps
# (up to 65536 rows), properties or XOR training, and 300 s a check before it is called hung.
PROFILE = ("-k", "not test_boundaries.py and not test_properties.py and not test_document.py",
           "--conformance-dtype", "float32", "--conformance-dtype", "float16", "--conformance-timeout", "300")


def pytest_conformance_impl(config):
    # flash_attn's __init__ loads its CUDA extension: the loss file is loaded from its folder, and
    # the module's reduction (flash_attn/losses/cross_entropy.py, which asserts CUDA tensors) is
    # done here as it does it: mean over the positions whose label is not ignore_index.
    import torch

    from ._installed import load

    class device(torch.cuda.device):
        """The loss enters ``torch.cuda.device(logits.device.index)`` around each launch: index
        None, a no-op on a CUDA build of torch, raises on a CPU build; here it stays a no-op."""

        def __enter__(self):
            return None if self.idx is None else super().__enter__()

        def __exit__(self, *exc):
            return None if self.idx is None else super().__exit__(*exc)

    torch.cuda.device = device
    triton_ce = load("flash_attn", "ops/triton/cross_entropy.py", "flash_attn.ops.triton.cross_entropy")

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                      logit_scale=1.0, lse_square_scale=0.0):
        loss, _ = triton_ce.cross_entropy_loss(input, target, label_smoothing=label_smoothing,
                                               logit_scale=logit_scale, lse_square_scale=lse_square_scale,
                                               ignore_index=ignore_index)
        if reduction == "mean":
            return loss.sum() / (target != ignore_index).sum()
        return loss.sum() if reduction == "sum" else loss

    cross_entropy.variants = {"logit_scale": "logit_scale", "z_loss": "lse_square_scale"}
    # Documented: logits (batch, vocab_size), labels (batch,), losses "float" (float32 for every
    # input dtype); no class weights; probabilities computed in float32.
    cross_entropy.unsupported = {"weight", "kdim", "unbatched", "probability_target", "float64",
                                 "double_backward", "forward_ad", "vmap"}
    cross_entropy.deviations = {"float32_output"}
    return cross_entropy

"""Megatron-core's FusedScaleMaskSoftmax (megatron.core.fusions.fused_softmax) in the configuration
TransformerConfig gives it by default (attention_softmax_in_fp32=True, masked_softmax_fusion=False):
its torch path, which is also what any configuration runs where the fused CUDA kernel is not
available (a CPU, or shapes outside its limits). The scores are multiplied by ``scale``, masked by
Megatron's attention_mask_func (``masked_fill_(mask, -10000.0)``: True entries are masked out),
softmaxed in float32 over the last dim and cast back to float16/bfloat16. A fully masked row is
uniform (every entry -10000). The kit's other dims and shapes reach it as Megatron's callers do:
the softmax dim moved last and the rows viewed as its 4-D [b, np, sq, sk] scores."""

import sys

REQUIRES = ("megatron.core",)


def _fused_scale_mask_softmax():
    # Transformer Engine's PyPI meta package, installed beside it for its Triton loss (its own row),
    # raises RuntimeError on import without its framework extension, and megatron.core.utils catches
    # only ImportError around that import: a missing TE is what Megatron expects on a CPU.
    try:
        import transformer_engine  # noqa: F401
    except RuntimeError:
        sys.modules["transformer_engine"] = None
    from megatron.core.fusions.fused_softmax import FusedScaleMaskSoftmax
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.utils import attention_mask_func
    return FusedScaleMaskSoftmax, AttnMaskType, attention_mask_func


def pytest_conformance_impl(config):
    import torch

    fused, mask_type, mask_func = _fused_scale_mask_softmax()

    def softmax(input, dim, dtype=None, scale=None, mask=None):
        x = (input if dtype is None else input.to(dtype)).movedim(dim, -1)
        module = fused(input_in_fp16=x.dtype == torch.float16, input_in_bf16=x.dtype == torch.bfloat16,
                       attn_mask_type=mask_type.padding, scaled_masked_softmax_fusion=False,
                       mask_func=mask_func, softmax_in_fp32=True, scale=scale)
        # Megatron's scores are a matmul's output, which its mask fills in place: never a leaf's view
        rows = (x.reshape(1, 1, -1, x.shape[-1]) if x.dim() != 4 else x).clone()
        if mask is not None:
            mask = mask.expand(input.shape).movedim(dim, -1).reshape(rows.shape)
        return module(rows, mask).reshape(x.shape).movedim(-1, dim)

    softmax.form = "softmax"
    softmax.variants = {"scale": "scale", "mask": "mask"}
    softmax.mask_convention = "drop"        # attention_mask_func masks the True entries out
    softmax.fully_masked_rows = "uniform"   # every entry at -10000
    return softmax

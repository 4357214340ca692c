"""The kit's shared words, on the ground floor: every module that names a dtype, a reduction, a
device, an input or target kind, a form, a feature, a deviation or a variant takes it from here,
so that one list serves them all (this module imports torch and nothing of the kit).
"""
from __future__ import annotations

import torch

__all__ = ["DTYPES", "WIDE_DTYPES", "HALF_DTYPES", "DTYPE_NAMES", "dtype_name", "REDUCTIONS", "DEVICES",
           "INPUT_KINDS", "REFERENCE_TARGET_KINDS", "DECLARED_TARGET_KINDS", "FLEXIBLE_TARGET_KINDS",
           "Z_LOSS_WEIGHTINGS", "VARIANTS", "SOFTMAX_VARIANTS", "SOFTMAX_CONVENTIONS",
           "SOFTMAX_UPSTREAM_KINDS", "AUXILIARIES",
           "VARIANT_FEATURES", "FORMS", "FEATURES", "PROBED_FEATURES",
           "DEVIATIONS", "APPROXIMATIONS", "MEMORY"]

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
WIDE_DTYPES = (torch.float64, torch.float32)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


DTYPE_NAMES = tuple(dtype_name(dtype) for dtype in DTYPES)
REDUCTIONS = ("none", "mean", "sum")
DEVICES = ("cpu", "cuda", "mps")

# What an implementation takes as its input (``input_kind``).
INPUT_KINDS = ("logits", "log_probs", "probs")
# Three questions about targets, three lists: what the float64 reference evaluates (class indices
# or a distribution per position), what an implementation declares it takes (``target_kind``: a
# one-hot row is fed as a float distribution), and what the kit's flexible loss can be told.
REFERENCE_TARGET_KINDS = ("index", "probs")
DECLARED_TARGET_KINDS = ("index", "onehot")
FLEXIBLE_TARGET_KINDS = ("index", "onehot", "probs")

Z_LOSS_WEIGHTINGS = ("unweighted", "class_weight")

VARIANTS = {  # the options beyond torch's loss, by the kit's names (``reference.Variant``)
    "logit_scale": "the logits multiplied by a scale first",
    "softcap": "logits soft-capped, cap * tanh(z / cap)",
    "z_loss": "z-loss, lam * logsumexp^2 per kept position",
}

SOFTMAX_VARIANTS = {  # the softmax forms' options, applied in this order (``softmax.SoftmaxVariant``)
    "scale": "the input multiplied by a scale first (which may be negative)",
    "softcap": "then soft-capped, cap * tanh(z / cap)",
    "mask": "then masked by a boolean tensor broadcastable to the input (mask_convention)",
    "causal": "then masked causally over the last two dims (Sq, Sk), dim=-1 only (causal_alignment)",
}
# The softmax forms' conventions, declared on the implementation: each name's values, the default first.
# The upstream gradients a softmax form's backward is fed (``forms.softmax.upstream_recipe``): random,
# a fresh normal gradient; scalar, one value broadcast (stride 0, what ``y.sum().backward()`` feeds);
# transposed, a normal gradient made as the transpose of a contiguous one.
SOFTMAX_UPSTREAM_KINDS = ("random", "scalar", "transposed")
SOFTMAX_CONVENTIONS = {
    "mask_convention": ("keep", "drop"),              # True takes part (torch SDPA's), or is masked out (Megatron's)
    "causal_alignment": ("top_left", "bottom_right"),  # SDPA's is_causal, or flash-attention's
    "fully_masked_rows": ("nan", "zero", "uniform"),   # torch's NaN, a safe softmax's 0, a finite fill's 1/n
}

AUXILIARIES = {
    "z_loss": "the z-loss alone, reduced as the loss",
    "lse": "the logsumexp of the (capped) logits per position",
}
# The feature names of the variants and returned auxiliaries: unsupported unless declared.
VARIANT_FEATURES = frozenset(VARIANTS) | frozenset(SOFTMAX_VARIANTS) | {f"return_{name}" for name in AUXILIARIES}

FORMS = {
    "logits": "logits (N, C) and a target (torch's cross_entropy)",
    "linear": ("hidden states (N, H), the classifier weight (V, H) and bias, and a target "
               "(torch's linear_cross_entropy)"),
    "vocab_parallel": "each rank's class shard of the logits in a process group (keywords group and vocab_start)",
    "softmax": "softmax(input, dim, dtype=None) (torch's softmax)",
    "log_softmax": "log_softmax(input, dim, dtype=None) (torch's log_softmax)",
}

FEATURES = {
    **{name: f"{name} inputs" for name in DTYPE_NAMES},
    "reduction_none": "reduction='none'",
    "reduction_sum": "reduction='sum'",
    "weight": "class weights",
    "ignore_index": "ignore_index",
    "custom_ignore_index": "an ignore_index other than -100 (negative, or a class in [0, C))",
    "label_smoothing": "label smoothing",
    "probability_target": "probability (soft) targets",
    "kdim": "K-dimensional input (N, C, d1, ...)",
    "unbatched": "unbatched input (C,)",
    "empty_batch": "an empty batch (N = 0)",
    "backward": "first-order gradients",
    "double_backward": "second-order gradients",
    "forward_ad": "forward-mode AD (torch.func.jvp)",
    "vmap": "torch.func.vmap",
    "noncontiguous": "non-contiguous input views",
    "input_validation": "raising on invalid targets and shapes",
    "uneven_shards": "vocab parallel: a split of the classes over the ranks other than torch.chunk's",
    "linear_bias": "a classifier bias (linear losses; without it their checks run unbiased)",
    "dtype_argument": "softmax forms: dtype=, the input cast to it before the operation",
    "any_dim": "softmax forms: a dim other than the last",
    "nonfinite_ignored_rows": "a gradient of 0 for an ignored position whose logits hold NaN or +inf",
    **{name: f"{what} (declared in variants)" for name, what in {**VARIANTS, **SOFTMAX_VARIANTS}.items()},
    **{f"return_{name}": f"returning {what} (declared in returns)" for name, what in AUXILIARIES.items()},
}
# Optional capabilities: any error they raise (the judge's probe), or for nonfinite_ignored_rows a
# non-zero gradient where torch's own is NaN, reports them as probed gaps.
PROBED_FEATURES = ("double_backward", "forward_ad", "vmap", "differentiable_z_loss", "retain_graph",
                   "nonfinite_ignored_rows")

DEVIATIONS = {
    "all_ignored_mean_zero": "reduction='mean' over no kept position returns 0 instead of NaN (Liger#153)",
    "overwrites_logits": "forward or backward writes into the caller's logits to save memory (Megatron's "
                         "vocab-parallel loss, flash-attention's inplace_backward); elsewhere in their storage, "
                         "and every other argument, it must not",
    "float32_output": "float16/bfloat16 inputs give a float32 loss on purpose (cut-cross-entropy's, summed in "
                      "float32 by a mixed-precision step); every other dtype gives its own",
    "simplex_gradient": "input_kind='probs': the gradient is defined along the probability simplex only (the loss "
                        "normalises p by its sum first, Keras'), so it may differ from the kit's by a multiple of "
                        "the all-ones vector per position; judged after projecting each position onto its sum-zero "
                        "subspace (tolerance.identities, Gradient along the simplex)",
    "nondeterministic": "two calls on identical inputs may differ in their last bits (atomic adds take their terms "
                        "in the order the scheduler picks, torch PR #193477); held to the difference of two orders "
                        "of its sums (tolerance.limits, run to run) instead of bitwise equality",
}

APPROXIMATIONS = {  # name -> what the declared number bounds (tolerance.linear)
    "gradient_filter": "linear losses: logit-gradient elements below eps (before the upstream gradient and the "
                       "divisor) are dropped, as cut-cross-entropy's filter_eps drops them",
}

MEMORY = {  # what a linear loss declares of its memory (``memory``; tolerance.limits)
    "chunked": "linear losses: forward and backward never hold the N x V logits at once (row or vocabulary "
               "chunks, as Liger-Kernel's fused linear loss, cut-cross-entropy and torch's chunked path)",
}

"""unsloth's Triton cross entropy (unsloth.kernels.cross_entropy_loss.fast_cross_entropy_loss)."""

# Its loss file imports transformers, unsloth_zoo and unsloth's device detection, which raises
# without a GPU ("Unsloth cannot find any torch accelerator? You need a GPU."): it runs where
# those are installed and a GPU is present.
REQUIRES = ("unsloth", "unsloth_zoo", "transformers", "triton")


def pytest_conformance_impl(config):
    from unsloth.kernels.cross_entropy_loss import fast_cross_entropy_loss

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        # fast_cross_entropy_loss takes (batch, seq_len, vocab) logits and returns the mean over
        # the labels that are not -100.
        return fast_cross_entropy_loss(input.unsqueeze(0), target.unsqueeze(0))

    # Documented by its signature and docstring: a mean over labels != -100, (batch, seq_len,
    # vocab) logits; no weights, smoothing or probability targets.
    cross_entropy.unsupported = {"reduction_none", "reduction_sum", "weight", "custom_ignore_index",
                                 "label_smoothing", "probability_target", "kdim", "unbatched", "float64"}
    cross_entropy.deviations = {"all_ignored_mean_zero"}    # its code: "No labelled tokens: loss 0"
    return cross_entropy

"""torch.compile'd F.cross_entropy (inductor, the CPU's C++ backend), forward and backward."""

REQUIRES = ("torch",)
# Each new dtype, reduction and option compiles anew (seconds each here): the value, gradient,
# features families (and the features at 4099 classes), not the extremes, boundary sweeps, layouts or properties.
PROFILE = ("-k", "test_value.py or test_gradient.py or test_features.py or test_features_at_large_size")


def pytest_conformance_impl(config):
    import torch
    import torch._dynamo
    import torch.nn.functional as F

    # Past the recompile limit (8) dynamo runs the function eagerly without a word: the row would
    # judge eager torch. The kit calls it at a few hundred shapes, dtypes and options.
    torch._dynamo.config.recompile_limit = 4096
    torch._dynamo.config.accumulated_recompile_limit = 65536
    compiled = torch.compile(F.cross_entropy)

    def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        return compiled(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                        label_smoothing=label_smoothing)
    return cross_entropy

"""ce-conformance: a conformance kit for softmax and cross-entropy losses, and the loss it certifies."""
__all__ = ["flexible_cross_entropy"]


def __getattr__(name: str):
    # Imported on first use, not with the package: hypothesis mixes the constants of every loaded
    # local module into its draws, so an eager import would change the examples of every run.
    if name == "flexible_cross_entropy":
        from .flexible import flexible_cross_entropy
        return flexible_cross_entropy
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")

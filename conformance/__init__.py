"""ce-conformance: a conformance kit for softmax and cross-entropy losses, and the loss it certifies.

PYTEST_DONT_REWRITE: this module has no assertion to rewrite. pytest 9.2 marks an editable
install's plugin package for rewriting (pytest#11783) and warns where it was imported before, as
it is in a run that another pytest process started in-process (the self-tests' runs of the suite).
"""
__all__ = ["flexible_cross_entropy"]


def __getattr__(name: str):
    # Imported on first use, not with the package: hypothesis mixes the constants of every loaded
    # local module into its draws, so an eager import would change the examples of every run.
    if name == "flexible_cross_entropy":
        from .flexible import flexible_cross_entropy
        return flexible_cross_entropy
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")

"""Hook specifications the kit adds to pytest."""
import pytest


@pytest.hookspec(firstresult=True)
def pytest_conformance_impl(config):
    """Return the implementation to judge (function, module class or instance), or a list of them,
    one per form (a loss and a softmax judged in one run).

    Called once, when ``--conformance-impl`` (``--impl``) is not given. Example, in a ``conftest.py``::

        def pytest_conformance_impl(config):
            from mypkg.loss import fused_cross_entropy
            return fused_cross_entropy

    Return ``None`` to fall through to the built-in default, torch's own loss.
    """

"""Log-softmax kernels under transforms (``FORM = "log_softmax"``): the checks of
``test_softmax_transforms`` on the log-softmax form."""
from conformance.suite.test_softmax_transforms import *  # noqa: F401,F403  (its __all__: the shared checks)

FORM = "log_softmax"

"""Log-softmax kernels (``FORM = "log_softmax"``): the checks of ``test_softmax`` but the rows
that sum to 1, on the log-softmax form, whose VJP is ``g - softmax(z) sum(g)``."""
from conformance.suite.test_softmax import *  # noqa: F401,F403  (its __all__: the shared checks)

FORM = "log_softmax"

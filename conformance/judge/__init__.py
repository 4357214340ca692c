"""The judge, split by concern: ``compare`` (the one elementwise comparison), ``snippet`` (the
reproduce snippet of a failure) and ``judge`` (the bounds of the run's contract, the records,
the probing of optional capabilities, and ``conforms`` over a form's quantities)."""
from .compare import Comparison, compare
from .judge import FIRST_FAILURE, PINNED, PROBED_PREFIX, REPRODUCE, Judge

__all__ = ["Comparison", "compare", "Judge", "FIRST_FAILURE", "PINNED", "PROBED_PREFIX", "REPRODUCE"]

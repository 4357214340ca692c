"""Checks that torch's own loss fails under the strict contract, pinned as strict expected
failures: the default run stays green, and a torch upgrade that fixes or changes one turns its
unexpected pass into a failure, so it is noticed and the pin is revisited."""
import pytest
import torch

__all__ = ["TORCH_CPU_FAILURES", "pinned_failures", "read_xfail_file"]

_CONFIDENT_HALF = ("torch 2.13's CPU float16/bfloat16 cross_entropy subtracts a logsumexp rounded to the dtype: "
                   "confident rows (target logit = max + 10, true loss about 1e-4) give loss -0.0 and a target "
                   "gradient of 0 (FIELD.md; the mechanism of Liger#1268)")

TORCH_CPU_FAILURES = {
    "test_extremes.py::test_confident_rows_value[cpu-float16-10]": _CONFIDENT_HALF,
    "test_extremes.py::test_confident_rows_value[cpu-bfloat16-10]": _CONFIDENT_HALF,
    "test_extremes.py::test_confident_rows_gradient[cpu-float16-10]": _CONFIDENT_HALF,
    "test_extremes.py::test_confident_rows_gradient[cpu-bfloat16-10]": _CONFIDENT_HALF,
}


def pinned_failures(call, contract: str) -> dict:
    """The pins that apply to this callable: torch's own loss, judged by the strict contract."""
    return TORCH_CPU_FAILURES if call is torch.nn.functional.cross_entropy and contract == "strict" else {}


def read_xfail_file(path: str) -> dict:
    """Test ids (or id suffixes) of known, tracked failures: one per line, ``# reason`` after it."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise pytest.UsageError(f"--conformance-xfail={path!r}: {exc.strerror}") from None
    entries = {}
    for line in lines:
        test_id, _, reason = line.partition("#")
        if test_id.strip():
            entries[test_id.strip()] = reason.strip() or f"listed in {path}"
    return entries

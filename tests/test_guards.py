"""The guards against hostile implementations, one by one."""
import pytest
import torch

from conformance.guards import (
    SECTION_LIMIT,
    CheckTimeout,
    GlobalState,
    ImplementationFault,
    time_limit,
    truncate_sections,
)


def test_global_state_changes_are_named_and_undone():
    state = GlobalState()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1234)
    with pytest.raises(ImplementationFault, match=r"default dtype: torch.float32 -> torch.float64; random"):
        state.check("in this test")
    assert torch.get_default_dtype() == torch.float32
    assert GlobalState().restore_changes() == []


def test_random_state_can_be_left_out():
    state = GlobalState(include_random=False)
    torch.rand(3)
    assert state.restore_changes() == []


def test_time_limit_interrupts_a_python_loop_and_disarms():
    with pytest.raises(CheckTimeout, match="0.2 s time limit"):
        with time_limit(0.2, None):
            while True:
                pass
    with time_limit(0.2, None):
        pass  # leaving the block disarms the timer: nothing fires later
    torch.ones(1000).sum()


def test_captured_output_is_cut_short():
    long, short = "x" * (SECTION_LIMIT + 500), "fine"
    (_, cut), (_, kept) = truncate_sections([("Captured stdout call", long), ("Captured stderr call", short)])
    assert cut.startswith("x" * SECTION_LIMIT) and "500 more characters cut by the conformance kit" in cut
    assert kept == short


def test_a_timeout_inside_a_garbage_collector_callback_waits_for_it_to_return():
    """hypothesis installs a gc callback: a CheckTimeout raised inside it would be printed and
    dropped by the interpreter (and, while C code builds objects, leave it inconsistent: pytest's
    own ast.parse then raised SystemError). The handler knows such frames and fires just after."""
    import gc
    import sys

    from conformance.guards import _in_gc_callback

    seen = []

    def callback(phase, info):
        seen.append(_in_gc_callback(sys._getframe()))

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen and all(seen)
    assert not _in_gc_callback(sys._getframe())


def test_a_timeout_where_a_smaller_run_finished_is_too_slow_at_its_size_not_a_hang():
    """Slow is not hung: once a run of a check finished at a smaller size, a timeout stops only the
    runs at least as large (whatever their other parameters); the smaller ones run."""
    from conformance.guards import HangLedger, Size

    def size(n):
        return Size(n, (("num_classes", str(n)),))

    ledger = HangLedger(per_check=2, in_all=10)
    ledger.record("test_x", {"num_classes": 10, "dtype": "float32"}, "x[10]", timed_out=False, size=size(10))
    assert not ledger.too_slow("test_x", {"num_classes": 10, "dtype": "float64"}, size(10))
    assert not ledger.too_slow("test_y", {"num_classes": 1000, "dtype": "float64"}, size(1000))
    assert ledger.too_slow("test_x", {"num_classes": 1000, "dtype": "float64"}, size(1000))
    ledger.record("test_x", {"num_classes": 1000, "dtype": "float32"}, "x[1000]", timed_out=True, size=size(1000),
                  slow=True)
    assert ledger.not_run("test_x", {"num_classes": 100, "dtype": "float64"}, size(100)) is None
    reason = ledger.not_run("test_x", {"num_classes": 4000, "dtype": "float64"}, size(4000))
    assert reason.startswith("not run: too slow at this size (num_classes=4000: 4000 elements)")
    assert "num_classes=1000: 1000 elements (x[1000])" in reason and "hang" not in reason
    assert ledger.not_run("test_y", {"num_classes": 4000}, size(4000)) is None   # another check function


def test_a_timeout_in_the_smallest_run_is_taken_to_hang_as_before():
    """Nothing smaller finished: two timeouts take the check to hang on every run sharing their
    parameters, whatever the size; a larger run sharing them that times out hangs too, not slow."""
    from conformance.guards import HangLedger, Size

    ledger = HangLedger(per_check=2, in_all=10)
    small = Size(10, (("shape", "1x10"),))
    ledger.record("test_x", {"shape": (1, 10), "reduction": "mean"}, "x[mean]", timed_out=False, size=small)
    assert not ledger.too_slow("test_x", {"shape": (1, 10), "reduction": "sum"}, small)
    for nodeid in ("x[sum-a]", "x[sum-b]"):
        ledger.record("test_x", {"shape": (1, 10), "reduction": "sum"}, nodeid, timed_out=True, size=small)
    large = Size(8710, (("shape", "67x130"),))
    assert not ledger.too_slow("test_x", {"shape": (67, 130), "reduction": "sum"}, large)
    assert ledger.too_slow("test_x", {"shape": (67, 130), "reduction": "mean"}, large)
    reason = ledger.not_run("test_x", {"shape": (67, 130), "reduction": "sum"}, large)
    assert reason.endswith("it is taken to hang with reduction=sum")
    assert ledger.not_run("test_x", {"shape": (67, 130), "reduction": "mean"}, large) is None

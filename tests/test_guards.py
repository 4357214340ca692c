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

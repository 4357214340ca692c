"""Memory: a linear loss that declares ``memory = "chunked"`` never holds its N x V logits at once
(what a fused linear loss exists for), and no loss of any form keeps memory from one call to the
next (a leak: its graph, its output, a list it appends to on every call). Measured by
``conformance.memory`` (cuda: the allocator's counters; cpu: the autograd profiler's record of
every allocation), bounded by ``tolerance.limits``, and recorded for the report. Vocab-parallel
losses are not measured here: their calls run in the rank processes.
"""
import textwrap

import pytest
import torch

from conformance import cases, memory, records, tolerance
from conformance.forms.softmax import softmax_problem
from conformance.judge.snippet import Steps
from conformance.vocabulary import dtype_name

# The calls whose growth is measured, after as many calls measured the same way (memory.growth).
CALLS = 100
# The chunked check's case: 1024 x 64 x 4096, where the logits (16 MiB in float32) are 12.8 times
# the hidden states and the weight together (tolerance.chunked_peak_limit), at about a tenth of a
# second a call for torch's chunked path on this 2-core machine.
CHUNKED_CASE = (1024, 64, 4096)


def _recorded_call(judge, problem, measure: str, arguments: str) -> Steps:
    """The form's own call of ``problem`` (forward, backward) as a recorded step, ``call()``,
    then measured by ``found = conformance.memory.{measure}({arguments})``."""
    steps = Steps.replaying(judge.impl, problem)
    body = textwrap.indent("\n".join(judge.form.call_steps(judge.impl, problem)), "    ")
    return steps(f"from conformance.memory import {measure}", f"def call():\n{body}", f"found = {measure}({arguments})")


def _record(judge, measure: str, found: memory.Footprint, limit, logits_bytes=None) -> None:
    records.attach(judge.item.user_properties, "memory", {
        "measure": measure, "bytes": found.peak if measure == "peak" else found.retained, "limit": limit,
        "logits_bytes": logits_bytes})


def _keeps_nothing(judge, problem, device) -> None:
    """``CALLS`` identical calls after as many others leave the allocated bytes where they were
    (``memory.growth``: a cache of at most ``CALLS`` entries, or a constant-size free one call
    late, is no growth)."""
    problem = judge.as_supported(problem)
    steps = _recorded_call(judge, problem, "growth", f"call, {CALLS}, {device!r}")
    found = steps["found"]
    if found is None:
        pytest.skip(f"{device} keeps no account of its allocations")
    limit = tolerance.growth_limit(CALLS)
    _record(judge, "growth", found, limit)
    if found.retained >= limit:
        judge.fail("memory growth", problem, f"{CALLS} identical calls after {CALLS} others left {found.retained} "
                   f"bytes allocated ({found.retained / CALLS:.6g} a call; allowed: fewer than {limit} in all, "
                   "tolerance.growth_limit): it keeps something of every call (its graph, its output, a list it "
                   "appends to)", show=steps.show("found.retained", f"'fewer than {limit}'"))


@pytest.mark.default_dtypes(torch.float32)
def test_logits_loss_keeps_nothing_between_calls(judge, device, dtype, seed):
    _keeps_nothing(judge, cases.problem(cases.well_conditioned(67, 130, dtype, device, seed=seed)), device)


@pytest.mark.form("linear")
@pytest.mark.default_dtypes(torch.float32)
def test_linear_loss_keeps_nothing_between_calls(judge, device, dtype, seed):
    case = cases.linear_problem_case(5, 4, 7, dtype, device, seed=seed, family="linear_memory",
                                     bias="linear_bias" not in judge.impl.unsupported)
    _keeps_nothing(judge, cases.problem(case), device)


def _softmax_problem(dtype, device, seed):
    recipe = (f"torch.default_generator.manual_seed({seed})\n"
              f"x = (torch.randn((9, 100), dtype=torch.float64) * 3.0).to(torch.{dtype_name(dtype)})")
    return softmax_problem("rows", recipe, device)


@pytest.mark.form("softmax")
@pytest.mark.default_dtypes(torch.float32)
def test_softmax_keeps_nothing_between_calls(judge, device, dtype, seed):
    _keeps_nothing(judge, _softmax_problem(dtype, device, seed), device)


@pytest.mark.form("log_softmax")
@pytest.mark.default_dtypes(torch.float32)
def test_log_softmax_keeps_nothing_between_calls(judge, device, dtype, seed):
    _keeps_nothing(judge, _softmax_problem(dtype, device, seed), device)


@pytest.mark.form("linear")
@pytest.mark.default_dtypes(torch.float32)
def test_chunked_linear_loss_never_holds_the_logits(judge, device, dtype, seed):
    """Forward and backward (forward alone for a loss without one) of a loss that declares
    ``memory = "chunked"`` peak below the size of the N x V logits; any other linear loss has its
    peak measured and reported, not judged."""
    n, h, v = CHUNKED_CASE
    case = cases.linear_problem_case(n, h, v, dtype, device, seed=seed, family="linear_chunked_memory",
                                     bias="linear_bias" not in judge.impl.unsupported)
    problem = judge.as_supported(cases.problem(case))
    steps = _recorded_call(judge, problem, "footprint", f"call, {device!r}")
    found = steps["found"]
    if found is None:
        pytest.skip(f"{device} keeps no account of its allocations")
    chunked = judge.impl.memory == "chunked"
    limit = tolerance.chunked_peak_limit(n, v, dtype)
    _record(judge, "peak", found, limit if chunked else None, limit)
    mib = f"{found.peak / 2**20:.2f} MiB"
    if not chunked:
        pytest.skip(f"declares no memory = 'chunked': its peak, {mib}, is reported beside the "
                    f"{limit / 2**20:.0f} MiB of logits, not judged")
    if found.peak >= limit:
        judge.fail("peak memory", problem, f"declares memory = 'chunked', yet forward and backward peaked at {mib} "
                   f"beyond their inputs, at or above the {limit / 2**20:.0f} MiB of the {n} x {v} {dtype_name(dtype)} "
                   "logits (tolerance.chunked_peak_limit): it holds the logits at once",
                   show=steps.show("found.peak", f"'below {limit}'"))

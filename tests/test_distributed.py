"""The vocab-parallel machinery (``conformance.distributed``): the splits, the collectives counted
in forward and backward, ranks that hang or die (the task fails naming the rank, in bounded
time, and no worker survives), and the world sizes a run judges."""
import json
import os
import time

import pytest
import torch

from conformance import distributed
from conformance.distributed import RankFailure, Task, WorkerGroup
from conformance.forms import vocab_parallel
from fixtures.broken import vp_backward_all_reduce
from fixtures.correct import vocab_parallel_reference
from fixtures.hostile import vp_rank_dies, vp_rank_hangs


def test_even_shards_are_torch_chunk_and_uneven_ones_are_not_rank_times_size():
    for classes, ranks in [(1003, 4), (1000, 4), (5, 4), (7, 2)]:
        sizes = [stop - start for start, stop in vocab_parallel.even_shards(classes, ranks)]
        chunked = [len(c) for c in torch.arange(classes).chunk(ranks)]
        assert sizes == chunked + [0] * (ranks - len(chunked)), (classes, ranks)
        uneven = vocab_parallel.uneven_shards(classes, ranks)
        assert uneven[0][0] == 0 and uneven[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(uneven, uneven[1:]))
        assert uneven[1][1] - uneven[1][0] == 1
        assert any(start != rank * (stop - start) for rank, (start, stop) in enumerate(uneven))


def _task(world_size, **options):
    torch.manual_seed(0)
    return Task(torch.randn(6, 1003), torch.randint(1003, (6,)), vocab_parallel.even_shards(1003, world_size),
                upstream=torch.tensor(1.5), **options)


def test_collectives_are_counted_in_forward_and_in_backward():
    """The reference runs torch's three all-reduces in forward and none in backward (four with
    smoothing); torch.distributed.nn's all_reduce runs its backward's collectives."""
    for call, expected in [(vocab_parallel_reference.cross_entropy, ((3, 0), (4, 0))),
                           (vp_backward_all_reduce.cross_entropy, ((3, 2), (4, 3)))]:
        group = WorkerGroup(call, 2, backend="gloo", collective_timeout=10, deadline=30, start_deadline=60)
        try:
            for smoothing, (forward, backward) in zip((0.0, 0.1), expected):
                result = group.run(_task(2, label_smoothing=smoothing))[0]
                assert distributed.collective_ops(result.forward)[0] == forward, result.forward
                assert distributed.collective_ops(result.backward)[0] == backward, result.backward
                assert distributed.collective_ops(result.forward)[1] > 0
        finally:
            group.close()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].startswith("Z")   # reaped soon by the fork server
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("call,message", [
    (vp_rank_hangs.cross_entropy, r"rank 1 did not answer within the 3 s deadline of the task"),
    (vp_rank_dies.cross_entropy, r"rank 1 died \(exit code 3\) during the task"),
])
def test_a_rank_that_hangs_or_dies_fails_the_task_naming_it_and_no_worker_survives(call, message):
    group = WorkerGroup(call, 4, backend="gloo", collective_timeout=1.5, deadline=3, start_deadline=60)
    pids = group.pids
    began = time.monotonic()
    with pytest.raises(RankFailure, match=message):
        group.run(_task(4))
    assert time.monotonic() - began < 10
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), [pid for pid in pids if not _gone(pid)]


def test_a_hanging_rank_fails_its_checks_with_the_rank_named_and_the_run_ends(suite, pytester):
    """Both checks fail naming rank 1 (the second on a fresh group: the first group was torn down).

    The check's limit must leave room, beside the task's deadline (half the limit), for starting
    the group and tearing it down: at a 12 s limit a start slowed by the other worker's load once
    ran the check past it (a timeout, not the rank named)."""
    report = pytester.path / "run.json"
    began = time.monotonic()
    result = suite("--impl=fixtures.hostile.vp_rank_hangs", "--conformance-timeout=20",
                   f"--conformance-report={report}", "-k",
                   "test_vocab_parallel_value_and_gradient and float32 and mean-even")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    reasons = {check["id"].partition("-ws")[2][0]: check["reason"]
               for check in json.loads(report.read_text())["checks"]}
    assert sorted(reasons) == ["2", "4"], reasons
    for world_size, reason in reasons.items():
        assert "[every rank answers]" in reason, reason
        assert f"world size {world_size}: rank 1 did not answer within the 10 s deadline" in reason, reason
    assert time.monotonic() - began < 75


def test_world_sizes_are_chosen_by_the_option(suite):
    result = suite("--impl=fixtures.correct.vocab_parallel_reference", "--conformance-world-size=3",
                   "--collect-only", "-k", "test_vocab_parallel_upstream_gradients")
    ids = [line for line in result.outlines if "test_vocab_parallel_upstream_gradients[" in line]
    assert ids and all("-ws3-" in line for line in ids), ids
    refused = suite("--impl=fixtures.correct.vocab_parallel_reference", "--conformance-world-size=0")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("name,backward", [("correct.vocab_parallel_reference", "0"),
                                           ("broken.vp_backward_all_reduce", "2")])
def test_the_verdict_counts_each_calls_collectives(suite, name, backward):
    """Three all-reduces in forward, and none in backward unless the loss all-reduces the
    replicated upstream there (the planted bug's two), in the verdict's collectives table."""
    result = suite(f"--impl=fixtures.{name}", "--conformance-world-size=2", "-k",
                   "test_vocab_parallel_upstream_gradients")
    result.stdout.fnmatch_lines(["Collectives per call:*", "*implementation*ranks*checks*forward*backward*",
                                 f"*{name.partition('.')[2]}:cross_entropy  2  * 2  * 3  * {backward}  *"])


def test_a_logits_run_collects_no_vocab_parallel_check_and_starts_no_worker(suite):
    result = suite("--impl=fixtures.correct.torch_default", "--collect-only", "-k", "vocab_parallel")
    assert "test_vocab_parallel" not in result.stdout.str()
    assert os.environ.get("RANK") is None  # the kit never sets a launcher's environment


def test_a_hook_loss_the_workers_cannot_import_fails_with_what_to_do(suite, pytester):
    """The ranks import the implementation by reference: a closure from the hook cannot reach them."""
    pytester.makeconftest("""
def pytest_conformance_impl(config):
    from fixtures.correct.vocab_parallel_reference import cross_entropy as reference
    def closure(local_logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                group, vocab_start):
        return reference(local_logits, target, weight, ignore_index, reduction, label_smoothing, group=group,
                         vocab_start=vocab_start)
    return closure
""")
    result = suite("-k", "test_vocab_parallel_upstream_gradients and ws2 and scalar")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*cannot be sent to the worker processes*must be importable there*"])


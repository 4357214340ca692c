"""A vocab-parallel loss timed on its ranks beside torch's loss of the whole vocabulary in one
process. The ranks time themselves (a call takes as long as its slowest rank), so the rounds come
in blocks: one task of ``BLOCK`` calls on the ranks, then ``BLOCK`` calls of the single process,
so that the logits cross to the workers once per block; pairs are formed within blocks, blocks
alternate, until the plan (``paired.RoundPlan``) says the pairs are enough."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed, paired
from ..distributed import Task
from .machine import synchronize

__all__ = ["BLOCK", "ranks_beside_one_process"]

BLOCK = 5


def ranks_beside_one_process(run_ranks: Callable[[Task], list], logits: Tensor, target: Tensor, shards: tuple,
                             device: str, plan: paired.RoundPlan) -> dict:
    """Forward and backward of ``run_ranks(task)`` (the ranks' results, each with its seconds per
    call) beside ``F.cross_entropy`` on ``logits`` in this process, single-threaded as each rank
    is, in blocks until ``plan`` says the pairs are enough: the precision asked for, the ratio
    with its 95 % interval, each side's median and best call, and rank 0's collectives of one
    call (count and bytes, forward and backward)."""
    upstream = torch.tensor(1.0, device=device)
    task = Task(logits.cpu(), target.cpu(), shards, upstream=upstream.cpu(), repeats=BLOCK)
    x = logits.detach().requires_grad_()

    def single_process() -> float:
        x.grad = None
        began = time.perf_counter()
        F.cross_entropy(x, target).backward(upstream)
        synchronize(device)
        return time.perf_counter() - began

    ranks_times, torch_times, began = [], [], time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_process()   # warm-up, as the ranks' first call is
        while not plan.done(ranks_times, torch_times, time.perf_counter() - began):
            results = run_ranks(task)
            ranks_times += [max(times) for times in zip(*(result.seconds for result in results))]
            torch_times += [single_process() for _ in range(BLOCK)]
    finally:
        torch.set_num_threads(threads)
    interval = paired.ratio_interval(ranks_times, torch_times)
    return {"precision": plan.precision, "pairs": interval.pairs,
            "ratio_to_torch": interval.ratio, "ratio_low": interval.low, "ratio_high": interval.high,
            "impl": {"median": statistics.median(ranks_times), "min": min(ranks_times)},
            "torch": {"median": statistics.median(torch_times), "min": min(torch_times)},
            "collectives": {phase: dict(zip(("count", "bytes"), distributed.collective_ops(getattr(results[0], phase))))
                            for phase in ("forward", "backward")}}

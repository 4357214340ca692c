"""The vocab-parallel form: each rank of a process group holds a shard of the classes and calls
``fn(shard, target, weight=, ignore_index=, reduction=, label_smoothing=, group=, vocab_start=)``
(Megatron's, Transformer Engine's, torch's ``loss_parallel`` on a DTensor). The rank group
(``distributed.Groups``) is the form's executor: every rank calls the implementation through
``Implementation.vocab_parallel``, under the guards of every other call. The quantities are rank
0's loss and the ranks' gradient slices joined, against the truth of the full logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cases import Problem
from ..distributed import Groups, Task
from ..impl import Implementation
from ..reference import Evaluation
from .logits import LogitsForm, Outcome, truth
from .protocol import Form, Quantity, Show

__all__ = ["RanksOutcome", "steps", "VocabParallelForm"]


_LOGITS = LogitsForm()   # the gathered problem is a logits problem

@dataclass(frozen=True)
class RanksOutcome(Outcome):
    """A logits outcome of the full problem as fed (rank 0's loss, the ranks' gradient slices
    joined), with every rank's result and the split it ran on."""

    results: tuple = ()
    world_size: int = 1
    shards: tuple = ()


def steps(problem: Problem, world_size: int, shards: tuple) -> tuple:
    """The snippet's lines that run the problem on ``world_size`` ranks."""
    options = problem.options
    return ("from conformance.distributed import Groups, Task", problem.upstream or "grad = None",
            f"task = Task(x, t, {tuple(shards)!r}, weight=weight, ignore_index={options.ignore_index!r}, "
            f"reduction={options.reduction!r}, label_smoothing={options.label_smoothing!r}, upstream=grad)",
            "groups = Groups(impl.vocab_parallel, collective_timeout=30.0, deadline=60.0)",
            f"results = groups.run({world_size}, {problem.device!r}, task)", "groups.close()",
            "x_grad = None if grad is None else torch.cat([r.grad for r in results], 1)")


class VocabParallelForm(Form):
    name = "vocab_parallel"

    def call(self, impl: Implementation, problem: Problem, *, groups: Groups, world_size: int,
             shards: tuple, **context) -> RanksOutcome:
        """Every rank calls the implementation on its shard of the fed logits (``distributed.Task``),
        then backward with the problem's upstream gradient; raises ``distributed.RankFailure``."""
        x, t = impl.feed(problem.case.logits, problem.case.target)
        options = problem.call_options()
        grad = None if problem.upstream is None else problem.upstream_gradient()
        task = Task(x.detach().clone(), t.clone(), tuple(shards), weight=options.weight,
                    ignore_index=options.ignore_index, reduction=options.reduction,
                    label_smoothing=options.label_smoothing, upstream=grad)
        results = tuple(groups.run(world_size, problem.device, task))
        joined = None if grad is None else torch.cat([result.grad for result in results], 1)
        return RanksOutcome(input=x.detach(), target=t, loss=results[0].loss, grad=joined, upstream=grad,
                            results=results, world_size=world_size, shards=tuple(shards))

    def truth(self, impl: Implementation, problem: Problem, outcome: RanksOutcome) -> Evaluation:
        return truth(impl, problem, outcome)

    def quantities(self, impl: Implementation, problem: Problem, outcome: RanksOutcome,
                   ev: Evaluation) -> list[Quantity]:
        """The logits form's quantities of the gathered problem, bounded for a logsumexp combined
        from ``world_size`` shards: rank 0's loss, and every rank's gradient slice."""
        ran = steps(problem, outcome.world_size, outcome.shards)
        shows = {"value": ("value on rank 0", Show("results[0].loss{at}.item()", "truth.loss{at}.item()", ran)),
                 "gradient": ("gradient (every rank's slice)",
                              Show("x_grad{at}.item()", "truth.grad(grad){at}.item()", ran))}
        return [Quantity(shows[q.identity][0], q.actual, q.expected, q.kind, q.terms, shows[q.identity][1],
                         counterpart=q.counterpart)
                for q in _LOGITS.quantities(impl, problem, outcome, ev, shards=outcome.world_size)]

    def snippet(self, impl: Implementation, problem: Problem, show: Show) -> list[str]:
        return _LOGITS.snippet(impl, problem, show)


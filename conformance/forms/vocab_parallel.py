"""The vocab-parallel form: each rank of a process group holds a shard of the classes and calls
``fn(shard, target, weight=, ignore_index=, reduction=, label_smoothing=, group=, vocab_start=)``
(Megatron's, Transformer Engine's, torch's ``loss_parallel`` on a DTensor). The rank group
(``distributed.Groups``) is the form's executor: every rank calls the implementation through
``Implementation.vocab_parallel``, under the guards of every other call. The quantities are rank
0's loss and the ranks' gradient slices joined, against the truth of the full logits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..cases import Problem
from ..distributed import Groups, Task
from ..impl import Implementation
from ..reference import Evaluation
from .logits import LogitsForm, Outcome, truth
from .protocol import Form, Quantity, Show, upstream_lines

__all__ = ["RanksOutcome", "VocabParallelForm", "even_shards", "uneven_shards"]

# The snippet's lines that start the rank group its call steps run on (a check runs them on the session's).
_GROUP = ("from conformance.distributed import Groups, Task",
          "groups = Groups(impl.vocab_parallel, collective_timeout=30.0, deadline=60.0)")

_LOGITS = LogitsForm()   # the gathered problem is a logits problem


def even_shards(num_classes: int, world_size: int) -> tuple:
    """``torch.chunk``'s split (DTensor's ``Shard(1)``): ``ceil(V / W)`` classes per rank, the
    remainder on the last ranks (which may hold none)."""
    size = -(-num_classes // world_size)
    return tuple((min(r * size, num_classes), min((r + 1) * size, num_classes)) for r in range(world_size))


def uneven_shards(num_classes: int, world_size: int) -> tuple:
    """A split no ``rank * V_local`` offset describes: rank 1 holds a single class, the other
    ranks share the rest in proportion W - 1, ..., 1 (rank 0 the most)."""
    others = [r for r in range(world_size) if r != 1]
    weights = {r: world_size - 1 - i for i, r in enumerate(others)}
    rest, total = num_classes - 1, sum(weights.values())
    sizes = {r: rest * weights[r] // total for r in others}
    sizes[others[0]] += rest - sum(sizes.values())
    sizes[1] = 1
    bounds, start = [], 0
    for r in range(world_size):
        bounds.append((start, start + sizes[r]))
        start += sizes[r]
    return tuple(bounds)


@dataclass(frozen=True)
class RanksOutcome(Outcome):
    """A logits outcome of the full problem as fed (rank 0's loss, the ranks' gradient slices
    joined), with every rank's result and the lines of the call that gave them (``call_steps``)."""

    results: tuple = ()
    steps: tuple = ()


class VocabParallelForm(Form):
    name = "vocab_parallel"

    def call(self, impl: Implementation, problem: Problem, *, groups: Groups, world_size: int,
             shards: tuple, **context) -> RanksOutcome:
        """Every rank calls the implementation on its shard of the fed logits (``distributed.Task``),
        then backward with the problem's upstream gradient, as ``call_steps`` says, run on ``groups``;
        raises ``distributed.RankFailure``."""
        x, t = impl.feed(problem.case.logits, problem.case.target)
        names = {"torch": torch, "Task": Task, "groups": groups, "x": x.detach().clone(), "t": t.clone(),
                 "weight": problem.call_options().weight}
        steps = tuple(self.call_steps(impl, problem, world_size=world_size, shards=shards))
        for step in steps:
            exec(compile(step, "<vocab-parallel step>", "exec"), names)
        grad = names["grad"]
        return RanksOutcome(input=x.detach(), target=t, loss=names["results"][0].loss, grad=names["x_grad"],
                            upstream=None if grad is None else grad.detach().clone(),
                            results=tuple(names["results"]), steps=steps)

    def call_steps(self, impl: Implementation, problem: Problem, *, world_size: int, shards: tuple,
                   **context) -> list[str]:
        """The problem on ``world_size`` ranks split as ``shards``: the task, its run on the rank
        group, the ranks' gradient slices joined."""
        options = problem.options
        upstream = ["grad = None"] if problem.upstream is None else upstream_lines(problem.upstream, problem.device)
        return [*upstream,
                f"task = Task(x, t, {tuple(shards)!r}, weight=weight, ignore_index={options.ignore_index!r}, "
                f"reduction={options.reduction!r}, label_smoothing={options.label_smoothing!r}, upstream=grad)",
                f"results = groups.run({world_size}, {problem.device!r}, task)",
                "x_grad = None if grad is None else torch.cat([r.grad for r in results], 1)"]

    def truth(self, impl: Implementation, problem: Problem, outcome: RanksOutcome) -> Evaluation:
        return truth(impl, problem, outcome)

    def quantities(self, impl: Implementation, problem: Problem, outcome: RanksOutcome,
                   ev: Evaluation) -> list[Quantity]:
        """The logits form's quantities of the gathered problem, bounded for a logsumexp combined
        from as many shards as ranks: rank 0's loss, and every rank's gradient slice."""
        ran = outcome.steps
        shows = {"value": ("value on rank 0", Show("results[0].loss{at}.item()", "truth.loss{at}.item()", ran)),
                 "gradient": ("gradient (every rank's slice)",
                              Show("x_grad{at}.item()", "truth.grad(grad){at}.item()", ran))}
        return [Quantity(shows[q.identity][0], q.actual, q.expected, q.kind, q.terms, shows[q.identity][1],
                         counterpart=q.counterpart)
                for q in _LOGITS.quantities(impl, problem, outcome, ev, shards=len(outcome.results))]

    def snippet(self, impl: Implementation, problem: Problem, show: Show) -> list[str]:
        """The logits form's lines up to its call, the rank group started, the steps that ran
        (``call_steps``), the group closed."""
        return [*_LOGITS.snippet(impl, problem, replace(show, steps=())), *_GROUP, *(show.steps or ()),
                "groups.close()"]

"""Vocab-parallel cross entropy: the logits' classes sharded over the ranks of a process group
(``conformance.distributed``). Every rank calls the implementation on its shard and backpropagates
its own copy of the replicated loss with the same upstream gradient; on every rank the loss must
equal the float64 truth of the full problem, and be the same on every rank, and each rank's
gradient must be its slice of the full gradient: for torch.chunk's split and an uneven one (a
rank with a single class), targets in and out of each shard, ignored rows, smoothing over the
global vocabulary, class weights, class weights where rows are ignored, every reduction and
upstream gradient, a shard masked with -inf, a shard whose logits lie far below the others', and
half precision; rows that count for
nothing (ignored or weighing 0) holding -inf, huge, +inf or NaN logits in one shard or in every
one, judged as test_idle_rows judges them; and every rank's arguments are unchanged by the call."""

import pytest
import torch

from conformance import bench, cases, distributed, options, records
from conformance.bench.ranks import ranks_beside_one_process
from conformance.distributed import RankFailure
from conformance.forms import Show, vocab_parallel
from conformance.vocabulary import REDUCTIONS, dtype_name

FORM = "vocab_parallel"
SPLIT_PARAMS = ["even", pytest.param("uneven", marks=pytest.mark.feature("uneven_shards"))]


def _shards(split: str, world_size: int) -> tuple:
    """``even``: about 1000 classes in equal shards (torch.chunk's split, and the only one of an
    implementation that takes offsets as ``rank * V_local``, as Megatron's does); ``uneven``:
    1003 classes with a single one on rank 1 (``vocab_parallel.uneven_shards``)."""
    if split == "even":
        return vocab_parallel.even_shards(world_size * -(-1000 // world_size), world_size)
    return vocab_parallel.uneven_shards(1003, world_size)


@pytest.fixture(scope="session")
def rank_groups(request):
    """The session's worker groups, one set per implementation (``distributed.Groups``); each task
    has half the check's time limit, each collective a quarter, and a group's start (the fork
    server's first, which imports torch) the whole limit."""
    limit = request.config.getoption("conformance_timeout") or options.DEFAULT_TIMEOUT
    registry: dict = {}

    def groups_for(impl) -> distributed.Groups:
        if impl.spec not in registry:
            registry[impl.spec] = distributed.Groups(impl.vocab_parallel, collective_timeout=limit / 4,
                                                     deadline=limit / 2, start_deadline=limit)
        return registry[impl.spec]
    yield groups_for
    for groups in registry.values():
        groups.close()


def _case(dtype, device, seed, shards, *, family="vocab_parallel", n=12, body="", weight=False, ignore_index=None,
          skip_rank=None):
    """Standard-normal logits over the shards' classes; rows 1, 4, 7, ... target each shard's
    first class and rows 2, 5, 8, ... its last (``skip_rank``'s shard excepted), the rest drawn;
    every third row ignored with ``ignore_index``; ``body`` then edits the logits."""
    base = cases.well_conditioned(n, shards[-1][1], dtype, device, seed=seed, weight=weight)
    owners = [r for r, (start, stop) in enumerate(shards) if stop > start and r != skip_rank]
    firsts, lasts = [shards[r][0] for r in owners], [shards[r][1] - 1 for r in owners]
    lines = [base.recipe, f"target[1::3][:{len(firsts)}] = torch.tensor({firsts})",
             f"target[2::3][:{len(lasts)}] = torch.tensor({lasts})"]
    if ignore_index is not None:
        lines.append(f"target[::3] = {ignore_index}")
    if body:
        lines += ["z = logits.double()", body, f"logits = z.to(torch.{dtype_name(dtype)})"]
    return cases.from_recipe(family, "\n".join(lines), device)


def _problem(case, world_size, shards, *, upstream="random", **loss_options):
    return cases.problem(case, upstream=upstream, note=f", world size {world_size}, shards {list(shards)}",
                         **loss_options)


def _conforms(impl, judge, rank_groups, problem, world_size, shards):
    """The call on every rank, judged (``_judged``): the results and the snippet's steps, for checks
    that look further."""
    return _judged(judge, problem, _ran(impl, judge, rank_groups, problem, world_size, shards))


def _ran(impl, judge, rank_groups, problem, world_size, shards) -> vocab_parallel.RanksOutcome:
    """The implementation called on every rank; a rank that fails fails the check."""
    if problem.device == "cuda" and distributed.launched_world_size() is None \
            and torch.cuda.device_count() < world_size:
        pytest.skip(f"world size {world_size} on cuda needs a device per rank (nccl); {torch.cuda.device_count()} here")
    split = {"world_size": world_size, "shards": shards}
    try:
        out = judge.call(problem, groups=rank_groups(impl), **split)
    except RankFailure as exc:
        judge.raised("every rank answers", problem, str(exc), show=Show(
            "results", "'(the result of every rank)'", tuple(judge.form.call_steps(impl, problem, **split))))
    records.attach(judge.item.user_properties, "collectives", {
        "world_size": world_size, "forward": list(distributed.collective_ops(out.results[0].forward)),
        "backward": list(distributed.collective_ops(out.results[0].backward))})
    return out


def _judged(judge, problem, out):
    """The loss on every rank against the truth and rank 0's (exactly), the ranks' gradient
    slices joined against the full gradient (the form's quantities)."""
    results, steps = out.results, out.steps
    value, *gradients = judge.form.quantities(judge.impl, problem, out, judge.truth(problem, out))
    judge.quantity(problem, value)
    for result in results[1:]:
        judge.exactly(f"the loss is the same on every rank (rank {result.rank} against rank 0)", problem,
                      result.loss, results[0].loss,
                      show=Show(f"results[{result.rank}].loss{{at}}.item()", "results[0].loss{at}.item()", steps))
    for gradient in gradients:
        judge.quantity(problem, gradient)
    return out


@pytest.mark.parametrize("split", SPLIT_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vocab_parallel_value_and_gradient(impl, judge, rank_groups, device, dtype, reduction, split, world_size, seed):
    """Targets at both ends of every shard and drawn elsewhere; a random upstream gradient."""
    shards = _shards(split, world_size)
    problem = _problem(_case(dtype, device, seed, shards), world_size, shards, reduction=reduction)
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


# -100; a class of the first shard and the last class (of the last shard) as ignore_index.
IGNORE_INDICES = ["-100", pytest.param("2", marks=pytest.mark.feature("custom_ignore_index")),
                  pytest.param("V-1", marks=pytest.mark.feature("custom_ignore_index"))]


@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("ignore_index", IGNORE_INDICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vocab_parallel_ignore_index(impl, judge, rank_groups, device, reduction, ignore_index, world_size, seed):
    """Ignored rows, which no shard owns: zero loss and exactly zero gradient on every rank, out of
    the mean's divisor."""
    shards = _shards("even", world_size)
    ignore_index = shards[-1][1] - 1 if ignore_index == "V-1" else int(ignore_index)
    case = _case(torch.float32, device, seed, shards, ignore_index=ignore_index)
    problem = _problem(case, world_size, shards, reduction=reduction, ignore_index=ignore_index)
    out = _conforms(impl, judge, rank_groups, problem, world_size, shards)
    ignored = case.target == ignore_index
    for result in out.results:
        leaked = float(result.grad[ignored].abs().max())
        if leaked != 0.0:
            judge.fail("ignored rows have exactly zero gradient", problem, f"rank {result.rank}: largest |gradient| "
                       f"on an ignored row is {leaked!r}",
                       show=Show(f"results[{result.rank}].grad[t == {ignore_index}].abs().max()", "0.0", out.steps))
        if reduction == "none" and bool((result.loss[ignored] != 0).any()):
            judge.fail("ignored rows have zero loss", problem, f"rank {result.rank}: losses "
                       f"{result.loss[ignored].tolist()}",
                       show=Show(f"results[{result.rank}].loss[t == {ignore_index}]", "0.0", out.steps))


@pytest.mark.feature("label_smoothing")
@pytest.mark.parametrize("weighted", [False, pytest.param(True, marks=pytest.mark.feature("weight"))],
                         ids=["unweighted", "weighted"])
@pytest.mark.parametrize("split", SPLIT_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vocab_parallel_label_smoothing(impl, judge, rank_groups, device, reduction, split, weighted, world_size, seed):
    """torch's ``eps / V`` on every class of the global vocabulary, not of a rank's shard
    (Megatron-LM #737), with ignored rows out of it."""
    shards = _shards(split, world_size)
    case = _case(torch.float32, device, seed, shards, weight=weighted, ignore_index=-100)
    problem = _problem(case, world_size, shards, reduction=reduction, label_smoothing=0.1)
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


@pytest.mark.feature("weight")
@pytest.mark.parametrize("split", SPLIT_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vocab_parallel_class_weights(impl, judge, rank_groups, device, reduction, split, world_size, seed):
    """The full class weights on every rank; ``mean`` divides by the kept rows' ``sum w[y]``."""
    shards = _shards(split, world_size)
    problem = _problem(_case(torch.float32, device, seed, shards, weight=True), world_size, shards, reduction=reduction)
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


@pytest.mark.feature("weight")
@pytest.mark.feature("ignore_index")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vocab_parallel_class_weights_with_ignored_rows(impl, judge, rank_groups, device, reduction, world_size,
                                                        seed):
    """Class weights where rows are ignored (-100, no class): an ignored row's weight is no
    class's, never read (``weight[-100]`` wraps to a real class's), neither in its loss and
    gradient nor in the mean's ``sum w[y]`` of the kept rows. Each feature's check above meets the
    other's default only; torch 2.13's ``loss_parallel`` raises in backward here (``known_failures``)."""
    shards = _shards("even", world_size)
    case = _case(torch.float32, device, seed, shards, weight=True, ignore_index=-100)
    _conforms(impl, judge, rank_groups, _problem(case, world_size, shards, reduction=reduction), world_size, shards)


@pytest.mark.feature("reduction_none")
@pytest.mark.parametrize("upstream", ["scalar", "expanded"])
def test_vocab_parallel_upstream_gradients(impl, judge, rank_groups, device, upstream, world_size, seed):
    """Per-row losses backpropagated with a broadcast scalar and a stride-0 upstream gradient (the
    random, non-uniform one runs in every other check)."""
    shards = _shards("even", world_size)
    problem = _problem(_case(torch.float32, device, seed, shards), world_size, shards, upstream=upstream,
                       reduction="none")
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_vocab_parallel_masked_shard(impl, judge, rank_groups, device, dtype, reduction, world_size, seed):
    """Every class of rank 1's shard masked with -inf (its local max is -inf): the loss is finite,
    that rank's gradient is exactly zero."""
    shards = _shards("even", world_size)
    start, stop = shards[1]
    case = _case(dtype, device, seed, shards, family="vocab_parallel_masked_shard", skip_rank=1,
                 body=f"z[:, {start}:{stop}] = -float('inf')\ntarget[(target >= {start}) & (target < {stop})] = 0")
    problem = _problem(case, world_size, shards, reduction=reduction)
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


def _idle_case(kind, dtype, device, seed, shards):
    """``_case``'s 24 rows with rows 0, 3, 6, ... idle: ignored, each holding one of
    ``cases.IDLE_FILLS`` in turn, or targeting class 0, weighted 0, and holding -inf or the dtype's
    largest magnitude; each fill in two classes of the last shard (rows 0, 6, ...) or of every shard
    (rows 3, 9, ...)."""
    every = [c for start, stop in shards if stop - start > 2 for c in (start + 1, stop - 1)]
    fills = cases.IDLE_FILLS if kind == "ignored" else cases.ZERO_WEIGHT_FILLS
    lines = [f"one, every = {every[-2:]}, {every}"]
    if kind == "zero weight":
        lines += [f"target[:{6 * len(fills)}:3] = 0", "weight[0] = 0"]
    lines += [f"z[{row}, {where}] = {cases.idle_fill(fill, dtype)}" for i, fill in enumerate(fills)
              for row, where in ((6 * i, "one"), (6 * i + 3, "every"))]
    return _case(dtype, device, seed, shards, family=f"vocab_parallel_idle_rows ({kind})", n=24,
                 body="\n".join(lines), weight=kind == "zero weight",
                 ignore_index=-100 if kind == "ignored" else None)


# An ignored row holds any logits, a zero weight finite and -inf ones (test_idle_rows); ignored rows
# and zero weights apart: torch 2.13's loss_parallel raises in backward where weights meet ignored rows
# (test_vocab_parallel_class_weights_with_ignored_rows judges the meeting, pinned for it).
IDLE_ROWS = [pytest.param("ignored", "none", marks=pytest.mark.feature("ignore_index"), id="ignored-none"),
             pytest.param("ignored", "mean", marks=pytest.mark.feature("ignore_index"), id="ignored-mean"),
             pytest.param("zero weight", "none", marks=pytest.mark.feature("weight"), id="zero_weight-none")]


@pytest.mark.parametrize(("kind", "reduction"), IDLE_ROWS)
def test_vocab_parallel_rows_that_count_for_nothing(impl, judge, rank_groups, device, dtype, kind, reduction,
                                                    world_size, seed):
    """test_idle_rows over the ranks, every fill in one call: ignored rows holding -inf, the dtype's
    largest magnitude, +inf and NaN, and rows whose target weighs 0 holding -inf or the largest
    magnitude, in one shard or in every shard. Their loss and gradient are exactly 0 on every rank,
    and nothing of them reaches the other rows' all-reduced statistics or the reduction; a NaN
    gradient where an ignored row holds +inf or NaN is the probed gap ``nonfinite_ignored_rows``
    (``Judge.idle_rows``, the logits family's judge)."""
    shards = _shards("even", world_size)
    problem = _problem(_idle_case(kind, dtype, device, seed, shards), world_size, shards, reduction=reduction)
    judge.idle_rows(problem, _ran(impl, judge, rank_groups, problem, world_size, shards),
                    conform=lambda out: _judged(judge, problem, out))


@pytest.mark.parametrize("shift", [-200.0, 200.0], ids=["below", "above"])
def test_vocab_parallel_shard_far_from_the_others(impl, judge, rank_groups, device, dtype, shift, world_size, seed):
    """Rank 1's logits 200 below (or above) the other shards': its sum of exponentials relative to
    its own max must be rescaled to the global max (exp(-200) underflows in float32)."""
    shards = _shards("even", world_size)
    start, stop = shards[1]
    case = _case(dtype, device, seed, shards, family="vocab_parallel_far_shard",
                 body=f"z[:, {start}:{stop}] += {shift}")
    problem = _problem(case, world_size, shards, reduction="none")
    _conforms(impl, judge, rank_groups, problem, world_size, shards)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_vocab_parallel_leaves_its_arguments_unchanged(impl, judge, rank_groups, device, dtype, reduction, world_size,
                                                      seed):
    """Every rank's logits shard, target, class weights (where supported) and upstream gradient
    are bitwise as the caller handed them after forward and backward (a loss that shifts its shard by the max in
    place writes into the caller's tensor wherever its cast to the compute dtype is a no-op:
    Megatron-LM#1594). A loss that declares ``overwrites_logits`` may write into its shard: the
    check is then a declared failure, and the other arguments must still be left alone."""
    shards = _shards("even", world_size)
    case = _case(dtype, device, seed, shards, family="vocab_parallel_arguments",
                 weight="weight" not in impl.unsupported)
    problem = _problem(case, world_size, shards, reduction=reduction)
    out = _conforms(impl, judge, rank_groups, problem, world_size, shards)
    results = out.results
    changed = [f"rank {r.rank}: {', '.join(r.changed)}" for r in results if r.changed]
    if changed:
        judge.deviation("overwrites_logits", problem, {name for r in results for name in r.changed})
        judge.fail("arguments unchanged on every rank", problem, "the call changed " + "; ".join(changed),
                   show=Show("[r.changed for r in results]", "[()] * len(results)", out.steps))


@pytest.mark.conformance_bench
@pytest.mark.feature("backward")
def test_vocab_parallel_speed_beside_one_process(request, impl, rank_groups, device, world_size, seed):
    """Forward and backward on ``world_size`` single-threaded ranks (a call takes as long as its
    slowest rank) beside torch's ``F.cross_entropy`` of the whole vocabulary in one single-threaded
    process, float32 at the device's first benchmark shape; ``extra_info`` (and the run report)
    carry the ratio with its 95 % interval and the collectives of one call and the bytes handed
    to them. The ranks time themselves, so pytest-benchmark's table does not show this one: it
    runs with ``--conformance-bench``."""
    n, c = bench.shapes_for(device)[0]
    group = f"vocab parallel forward+backward float32 {n}x{c} {device} ws{world_size}"
    logits, target = bench.inputs(n, c, torch.float32, device, seed)
    budget = request.config.getoption("conformance_bench_time") / len(options.world_sizes(request.config))
    measured = ranks_beside_one_process(lambda task: rank_groups(impl).run(world_size, device, task), logits, target,
                                        vocab_parallel.even_shards(c, world_size), device,
                                        options.round_plan(request.config, budget=budget))
    info = {"implementation": impl.spec, "op": "forward+backward", "dtype": "float32", "device": device,
            "shape": f"{n}x{c}", "world_size": world_size, **measured}
    records.attach(request.node.user_properties, "benchmark", dict(info, group=group))

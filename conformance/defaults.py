"""torch's own losses that a run judges when no implementation is named (``impl.DEFAULT_SPECS``)
beside ``torch.nn.functional.cross_entropy`` and ``linear_cross_entropy``: the paths of torch's
loss that only an option selects, and ``nll_loss`` with what it takes declared on it; and torch's
vocab-parallel path, ``loss_parallel``, judged where it is named (a rank group is too costly for the
default run). Each is torch's own, so that ``known_failures`` pins torch's defects on it."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn import LinearCrossEntropyOptions

__all__ = ["chunked_linear_cross_entropy", "nll_loss", "loss_parallel"]


def chunked_linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, **options):
    """torch 2.13's chunked linear cross entropy: ``options=LinearCrossEntropyOptions()``, its
    defaults (``acc_policy="auto"``, chunks sized by ``aspect_ratio``). Label smoothing and
    probability targets take the reference path, as torch would fall back to it: called so here,
    without the options torch would warn it ignored."""
    chunked = not options.get("label_smoothing") and target.dtype == torch.int64
    return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                  **({"options": LinearCrossEntropyOptions()} if chunked else {}), **options)


# Measured (test_memory, 1024 x 64 x 4096): 2.5 MiB at its peak, forward and backward, against
# 16 MiB of float32 logits (5.1 of 8 MiB in float16 and bfloat16); where it falls back to the
# reference path (label smoothing, probability targets) it forms them.
chunked_linear_cross_entropy.memory = "chunked"


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """torch's ``F.nll_loss``: the document's second path, the loss of given log-probabilities
    (the kit feeds ``log_softmax`` of its logits in float64 and rounds it to the dtype). Called
    through this function to carry its declarations: no label smoothing, no probability targets."""
    return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)


nll_loss.input_kind = "log_probs"
nll_loss.unsupported = {"label_smoothing", "probability_target"}


class _UnderLossParallel(torch.autograd.Function):
    """The DTensor loss as a plain tensor; backward runs the DTensor graph under the context."""

    @staticmethod
    def forward(ctx, local_logits, target, weight, ignore_index, reduction, group):
        # imported here: torch.distributed.tensor takes 0.6 s to import, and only the ranks call this
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor import DTensor, Shard
        from torch.distributed.tensor.parallel import loss_parallel as context

        mesh = DeviceMesh.from_group(group, device_type=local_logits.device.type)
        num_classes = torch.tensor(local_logits.shape[1], device=local_logits.device)
        dist.all_reduce(num_classes, group=group)  # the global shape: torch.chunk's last shards are smaller
        shape = (local_logits.shape[0], int(num_classes))
        with torch.enable_grad(), context():
            leaf = local_logits.detach().requires_grad_()
            logits = DTensor.from_local(leaf, mesh, [Shard(1)], run_check=False, shape=shape, stride=(shape[1], 1))
            loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction)
        ctx.leaf, ctx.loss = leaf, loss
        return loss.to_local().detach().clone()

    @staticmethod
    def backward(ctx, grad):
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor.parallel import loss_parallel as context

        with context():
            upstream = DTensor.from_local(grad.contiguous(), ctx.loss.device_mesh, ctx.loss.placements, run_check=False)
            (local_grad,) = torch.autograd.grad(ctx.loss, ctx.leaf, upstream)
        return local_grad, None, None, None, None, None


def loss_parallel(local_logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
                  group, vocab_start):
    """torch 2.13's ``torch.distributed.tensor.parallel.loss_parallel``: the rank's shard becomes a
    ``DTensor`` with placement ``Shard(1)`` on a one-dimensional mesh over ``group``
    (``DTensor.from_local`` with the global shape, which one all-reduce of the shard sizes finds:
    the split must be torch.chunk's, the only one a DTensor has), and ``F.cross_entropy`` runs
    under ``loss_parallel()``. Its backward must run under the context too, so the loss is returned
    through an autograd function whose backward replays the saved DTensor graph inside it; the loss
    is the replicated DTensor's local value. What it lacks, declared: label smoothing and probability
    targets (its documentation), any other split (``uneven_shards``)."""
    if label_smoothing:
        raise NotImplementedError("loss_parallel does not support label smoothing")
    return _UnderLossParallel.apply(local_logits, target, weight, ignore_index, reduction, group)


loss_parallel.unsupported = {"label_smoothing", "probability_target", "uneven_shards", "kdim", "unbatched"}

"""The seed document's wish as a loss to train with: one cross entropy told what its input and
target are.

The document finds torch's loss too terse: it cannot be told that its input is already a
log-probability or a probability, or that its target is one-hot. ``flexible_cross_entropy`` can,
with the semantics of ``conformance.reference`` (torch's: class dimension 1, weights,
``ignore_index``, label smoothing, the two ``mean`` divisors, NaN for a mean over nothing) and
the logit variants of fused kernels: a logit scale, a tanh soft cap and a z-loss. The kit
certifies it under its ``exact`` contract (``fixtures/correct/flexible_*.py``).

Precision: float16 and bfloat16 are computed in float32 and rounded once to the input dtype;
float32 and float64 are computed in their own dtype. Log-probabilities come from ``log_softmax``
(shift-invariant), never from ``logsumexp(z) - z_y``. It is plain torch ops, so autograd, double
backward, ``torch.func.jvp`` and ``torch.func.vmap`` work; ``validate=True`` adds value checks
that read the tensors on the host (and so cannot run under vmap).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch
from torch import Tensor

from .reference import position
from .tolerance import compute_dtype, unit_roundoff
from .vocabulary import FLEXIBLE_TARGET_KINDS, INPUT_KINDS, REDUCTIONS, Z_LOSS_WEIGHTINGS

__all__ = ["flexible_cross_entropy"]


def flexible_cross_entropy(input: Tensor, target: Tensor, *, input_kind: str = "logits",
                           target_kind: str = "index", weight: Optional[Tensor] = None, ignore_index: int = -100,
                           reduction: str = "mean", label_smoothing: float = 0.0, logit_scale: float = 1.0,
                           softcap: Optional[float] = None, z_loss: float = 0.0,
                           z_loss_weighting: str = "unweighted", validate: bool = False) -> Tensor:
    """Cross entropy of ``input`` (``input_kind``) against ``target`` (``target_kind``).

    ``input`` is ``(N, C, d1, ...)`` or unbatched ``(C,)``; an ``"index"`` target holds a class per
    position, a ``"onehot"`` or ``"probs"`` target is shaped like the input (``ignore_index``
    applies to index targets only). The other keywords are ``torch.nn.functional.cross_entropy``'s.
    For logits only: they are multiplied by ``logit_scale``, then capped to
    ``softcap * tanh(z / softcap)``, and every term uses the capped logits; ``z_loss`` adds
    ``z_loss * logsumexp(z)**2`` per kept position, averaged by ``mean`` as ``z_loss_weighting``
    says. ``validate=True`` also checks the values (distributions, one-hot rows, label range).

        probs = torch.softmax(torch.randn(4, 3), 1)
        flexible_cross_entropy(probs, torch.tensor([0, 2, 1, 0]), input_kind="probs")
    """
    _check_arguments(input, target, input_kind, target_kind, weight, ignore_index, reduction, label_smoothing,
                     logit_scale, softcap, z_loss, z_loss_weighting, validate)
    class_dim = 0 if input.dim() == 1 else 1
    if validate:
        _check_values(input, target, input_kind, target_kind, ignore_index, class_dim)
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype)
    if input_kind == "logits":
        x = _capped_logits(x, float(logit_scale), softcap)
    w = None if weight is None else weight.to(dtype).reshape((-1,) + (1,) * (input.dim() - class_dim - 1))
    eps = float(label_smoothing)
    if target_kind == "index":   # an ignored position is absent: its logits, NaN included, reach no term or gradient
        x = torch.where((target != ignore_index).unsqueeze(class_dim), x, 0.0)
        row_loss, target_weight, kept_weight = _index_target_loss(x, target.long(), input_kind, w, ignore_index,
                                                                  eps, class_dim)
    else:
        row_loss, target_weight, kept_weight = _probability_target_loss(x, target.to(dtype), input_kind, w, eps,
                                                                        class_dim)
    loss = _reduce(row_loss, target_weight, reduction)
    if z_loss:
        z_weight = target_weight if z_loss_weighting == "class_weight" else kept_weight
        per_position = torch.where(z_weight == 0, 0.0, float(z_loss) * z_weight * _logsumexp(x, class_dim).square())
        loss = loss + _reduce(per_position, z_weight, reduction)
    return loss.to(input.dtype)


def _logsumexp(x: Tensor, class_dim: int) -> Tensor:
    """``m + log sum exp(z - m)`` with the max ``m`` a constant to autograd, so the gradient is
    ``exp(z - m) / s``: the softmax, shift-invariant (``torch.logsumexp``'s backward forms
    ``exp(z - lse)``, relatively off by ``u |lse|``, which the z-loss would carry)."""
    row_max = x.detach().amax(class_dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    return (row_max + (x - row_max).exp().sum(class_dim, keepdim=True).log()).squeeze(class_dim)


def _capped_logits(logits: Tensor, logit_scale: float, softcap: Optional[float]) -> Tensor:
    """``logit_scale * z``, then ``softcap * tanh(. / softcap)`` when a cap is given."""
    scaled = logits if logit_scale == 1 else logits * logit_scale
    return scaled if softcap is None else softcap * torch.tanh(scaled / softcap)


def _log_probs(x: Tensor, input_kind: str, class_dim: int, coefficient: Optional[Tensor] = None) -> Tensor:
    """``log p`` of the input as fed. A probability that is 0 where ``coefficient`` (its weight in
    the loss) is 0 is read as 1, so that it contributes 0 and its gradient is 0, not ``0 / 0``."""
    if input_kind == "logits":
        return torch.log_softmax(x, class_dim)
    if input_kind == "log_probs":
        return x
    return torch.log(torch.where((x == 0) & (coefficient == 0), 1.0, x))


def _times_log(coefficient: Tensor, log_p: Tensor) -> Tensor:
    """``coefficient * log_p`` with ``0 * log 0 = 0`` (the reference's convention) and no NaN in
    any gradient; ``d/d coefficient`` is ``log_p`` wherever that is finite."""
    return coefficient * torch.where((coefficient != 0) | torch.isfinite(log_p), log_p, 0.0)


def _index_target_loss(x: Tensor, labels: Tensor, input_kind: str, w: Optional[Tensor], ignore_index: int,
                       eps: float, class_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per position ``-(1-eps) w[y] log p_y - (eps/C) sum_c w_c log p_c``, 0 where ignored; the
    mean's weights ``w[y]`` (0 where ignored); the kept positions as 1s."""
    kept = labels != ignore_index
    index = torch.where(kept, labels, 0).unsqueeze(class_dim)
    kept_weight = kept.to(x.dtype)
    target_weight = kept_weight if w is None else torch.where(kept, w.reshape(-1)[index.squeeze(class_dim)], 0.0)
    coefficient = (1 - eps) * target_weight
    # gather raises for a label outside [0, C) that is not ignore_index, as torch does. The log of a
    # probability input is taken for each term with that term's coefficient (see _log_probs).
    if input_kind == "probs":
        log_p = None
        log_p_target = _log_probs(x.gather(class_dim, index).squeeze(class_dim), "probs", class_dim, coefficient)
    else:
        log_p = _log_probs(x, input_kind, class_dim)
        log_p_target = log_p.gather(class_dim, index).squeeze(class_dim)
    row_loss = -_times_log(coefficient, log_p_target)
    if eps:
        smoothing = (eps / x.shape[class_dim]) * kept_weight.unsqueeze(class_dim) * (1.0 if w is None else w)
        if log_p is None:
            log_p = _log_probs(x, "probs", class_dim, smoothing)
        row_loss = row_loss - _times_log(smoothing, log_p).sum(class_dim)
    return row_loss, target_weight, kept_weight


def _probability_target_loss(x: Tensor, t: Tensor, input_kind: str, w: Optional[Tensor], eps: float,
                             class_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per position ``-sum_c a_c log p_c`` with ``a = w ((1-eps) t + eps/C)``; every position is
    kept with weight 1, so 'mean' divides by their number (pytorch#107680)."""
    a = (1 - eps) * t + eps / x.shape[class_dim] if eps else t
    a = a if w is None else a * w
    row_loss = -_times_log(a, _log_probs(x, input_kind, class_dim, a)).sum(class_dim)
    ones = torch.ones_like(row_loss)
    return row_loss, ones, ones


def _reduce(per_position: Tensor, weights: Tensor, reduction: str) -> Tensor:
    """'none', 'sum', or 'mean' as the weighted mean ``sum / sum(weights)``. When the weights sum to
    0 (every position ignored, an empty batch) the value is the reference's ``0 / 0 = NaN`` and the
    gradient is 0, not ``0 * inf``."""
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    count = weights.sum()
    return torch.where(count == 0, total.detach() / count, total / torch.where(count == 0, 1.0, count))


def _check_arguments(input, target, input_kind, target_kind, weight, ignore_index, reduction, label_smoothing,
                     logit_scale, softcap, z_loss, z_loss_weighting, validate) -> None:
    """Every argument, before any work: a precise error naming the bad one and its value."""
    _check_choice("input_kind", input_kind, INPUT_KINDS)
    _check_choice("target_kind", target_kind, FLEXIBLE_TARGET_KINDS)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("z_loss_weighting", z_loss_weighting, Z_LOSS_WEIGHTINGS)
    if not isinstance(validate, bool):
        raise TypeError(f"validate={validate!r}: expected True or False")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index={ignore_index!r}: expected an int")
    if not 0 <= _real("label_smoothing", label_smoothing) <= 1:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected a value in [0, 1]")
    if not (math.isfinite(_real("logit_scale", logit_scale)) and logit_scale != 0):
        # a negative scale reverses the logits' order and is still a loss (the covering design's negative level)
        raise ValueError(f"logit_scale={logit_scale!r}: expected a finite, nonzero number")
    if softcap is not None and not (math.isfinite(_real("softcap", softcap)) and softcap > 0):
        raise ValueError(f"softcap={softcap!r}: expected None or a finite number > 0")
    if not (math.isfinite(_real("z_loss", z_loss)) and z_loss >= 0):
        raise ValueError(f"z_loss={z_loss!r}: expected a finite number >= 0")
    plain = (("logit_scale", logit_scale, 1), ("softcap", softcap, None), ("z_loss", z_loss, 0))
    variants = [f"{name}={value!r}" for name, value, default in plain if value != default]
    if variants and input_kind != "logits":
        raise ValueError(f"{', '.join(variants)} act on logits, but input_kind={input_kind!r}")
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"input: expected a floating-point tensor, got {_describe(input)}")
    num_classes = input.shape[0 if input.dim() == 1 else 1] if input.dim() else 0
    if num_classes == 0:
        raise ValueError(f"input of shape {tuple(input.shape)} has no classes: "
                         "expected (N, C, d1, ...) or (C,), C >= 1")
    _check_target(input, target, target_kind, ignore_index)
    if weight is not None:
        if not isinstance(weight, Tensor) or weight.dtype != input.dtype:
            raise TypeError(f"weight: expected a {input.dtype} tensor like the input, got {_describe(weight)}")
        if weight.shape != (num_classes,) or weight.device != input.device:
            raise ValueError(f"weight of shape {tuple(weight.shape)} on {weight.device}: expected ({num_classes},) "
                             f"on {input.device}, one weight per class")


def _check_target(input: Tensor, target, target_kind: str, ignore_index: int) -> None:
    """An index target is integer and shaped like the positions; a floating one like the input."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a tensor, got {_describe(target)}")
    if target.device != input.device:
        raise ValueError(f"target on {target.device}, input on {input.device}: expected the same device")
    if target_kind == "index":
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target_kind='index': expected an integer target, got {_describe(target)} "
                            f"(a floating target is target_kind='onehot' or 'probs')")
        positions = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
        if target.shape != positions:
            raise ValueError(f"target_kind='index': target shape {tuple(target.shape)} != {tuple(positions)}, "
                             f"the input's {tuple(input.shape)} without its class dimension")
        return
    if target.dtype != input.dtype:
        raise TypeError(f"target_kind={target_kind!r}: expected a {input.dtype} target like the input, "
                        f"got {_describe(target)}")
    if target.shape != input.shape:
        raise ValueError(f"target_kind={target_kind!r}: target shape {tuple(target.shape)} != input shape "
                         f"{tuple(input.shape)}")
    if ignore_index != -100:
        raise ValueError(f"ignore_index={ignore_index}: applies to index targets only, target_kind={target_kind!r}")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}={value!r}: expected a real number")
    return float(value)


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def _check_values(input: Tensor, target: Tensor, input_kind: str, target_kind: str, ignore_index: int,
                  class_dim: int) -> None:
    """validate=True: the values are what the kinds say; each error names the worst position."""
    if input_kind == "probs":
        _check_distribution("input", "input_kind='probs'", input, class_dim)
    if target_kind == "probs":
        _check_distribution("target", "target_kind='probs'", target, class_dim)
    elif target_kind == "onehot":
        others = ((target != 0) & (target != 1)).sum(class_dim)
        ones = (target == 1).sum(class_dim)
        bad = (others != 0) | (ones != 1)
        if bool(bad.any()):
            at = position(bad.reshape(-1).int().argmax(), bad.shape)
            raise ValueError(f"target_kind='onehot': the target at position {at} is not one-hot: {int(ones[at])} "
                             f"entries equal 1 and {int(others[at])} are neither 0 nor 1 ({int(bad.sum())} such "
                             f"positions)")
    else:
        num_classes, target = input.shape[class_dim], target.long()
        bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            at = position(bad.reshape(-1).int().argmax(), bad.shape)
            raise ValueError(f"target {int(target[at])} at position {at} is out of range for {num_classes} classes "
                             f"(0 to {num_classes - 1}, or ignore_index={ignore_index}); "
                             f"{int(bad.sum())} such positions")


def _check_distribution(name: str, kind: str, p: Tensor, class_dim: int) -> None:
    """No negative entry, and each position's entries sum to 1 within what rounding allows: rounding
    a distribution to ``p.dtype`` moves its sum by at most ``u_o`` (``u`` as in ``tolerance``); a
    softmax formed in the compute precision ``u`` errs by at most ``(C + 3) u`` relative in all
    (worst-case summation, exp and division), and this sum, taken in the same precision, by
    ``(C - 1) u``: ``u_o + 2 (C + 1) u``. Half-precision subnormals add less (``C 2**-25`` for
    float16)."""
    compute = compute_dtype(p.dtype)
    wide = p.to(compute)
    lowest = wide.amin(class_dim)
    if bool((lowest < 0).any()):
        at = position(lowest.reshape(-1).argmin(), lowest.shape)
        raise ValueError(f"{kind}: the {name} is not a distribution: {int((lowest < 0).sum())} positions hold a "
                         f"negative entry; the most negative, {float(lowest[at]):.4g}, is at position {at}")
    num_classes = p.shape[class_dim]
    tolerance = unit_roundoff(p.dtype) + 2 * (num_classes + 1) * unit_roundoff(compute)
    off = (wide.sum(class_dim) - 1).abs()
    bad = ~(off <= tolerance)
    if bool(bad.any()):
        at = position(torch.where(bad, off.nan_to_num(nan=math.inf), -1.0).reshape(-1).argmax(), off.shape)
        raise ValueError(f"{kind}: the {name} is not a distribution: {int(bad.sum())} positions do not sum to 1 "
                         f"within {tolerance:.2g} ({p.dtype}, {num_classes} classes); the worst, at position {at}, "
                         f"sums to {float(wide.sum(class_dim)[at]):.6g}")

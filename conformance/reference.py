"""Float64 truth for cross entropy, written from the mathematics rather than torch's code path.

It also answers the seed document's complaint that torch's loss cannot say what its input and
target are. Conventions:

* ``input_kind``: ``"logits"`` (log-probabilities are ``z - logsumexp(z)``), ``"log_probs"``
  (used as given) or ``"probs"`` (their log is taken; ``log 0 = -inf``).
* ``target_kind``: ``"index"`` (an integer class per position; ``ignore_index`` honoured) or
  ``"probs"`` (a distribution over the classes per position; one-hot is the special case).
  ``None`` picks ``"index"`` for integer targets and ``"probs"`` for floating ones, as torch does.
* Class weights ``w`` and label smoothing ``eps`` (target becomes ``(1-eps)*t + eps/C`` over all
  ``C`` classes, pytorch#104776: the weights scale the smoothing term too).
* The class dimension is 1 (``(N, C, d1, ...)``); an unbatched input is ``(C,)``.

Every combination reduces to one *weighted target* ``a`` per position::

    index:  a_c = (1-eps) * w[y] * [c == y] + (eps/C) * w_c,  zero on ignored positions
    probs:  a_c = w_c * ((1-eps) * t_c + (eps/C))

    loss = -sum_c a_c * log p_c          dloss/dz = A * softmax(z) - a,  A = sum_c a_c

``mean`` divides by the sum of ``w[y]`` over kept positions for index targets and by the number
of positions for probability targets (pytorch#107680). ``0 * log 0`` counts as 0.

Variants that fused kernels ship beyond torch (``Variant``; logits input only), applied in
this order (Liger-Kernel's ``src/liger_kernel/ops/cross_entropy.py``, cut-cross-entropy,
flash-attention's ``flash_attn/ops/triton/cross_entropy.py``, unsloth's
``unsloth/kernels/cross_entropy_loss.py``):

* ``logit_scale`` ``s``: the logits are multiplied by ``s`` first (flash-attention's
  ``logit_scale``, Cohere's 0.0625; a loss that divides, as Granite's does, is declared with the
  reciprocal);
* ``softcap`` ``c``: then capped, ``c * tanh(z / c)`` (Gemma 2 uses 30); everything after,
  smoothing and the z-loss included, sees the capped logits (Liger's z-loss does);
* ``z_loss`` ``lam``: ``lam * lse^2`` is added per kept position (PaLM's z-loss; Liger's
  ``lse_square_scale``), ``lse`` the logsumexp of the capped logits; ignored positions add
  nothing. With ``reduction='mean'`` its sum is divided by the number of kept positions
  (``z_loss_weighting='unweighted'``, Liger's convention: not scaled by class weights) or, with
  ``'class_weight'``, each position's term is scaled by ``w[y]`` and divided by the loss's own
  divisor. A probability target keeps every position, with weight 1.

The gradient with respect to the capped logits is ``s ((A + 2 lam k lse) p - a)`` (``k`` the
position's z-loss weight over its divisor relative to the loss's), times ``c``'s derivative
``1 - tanh^2`` and the scale: the chain rule in ``Evaluation.grad``.

Non-finite logits. torch's answer is the arithmetic one: a ``-inf`` non-target logit contributes
0, a ``-inf`` target logit gives ``+inf``, and a row holding ``+inf`` gives NaN, because its
log-probabilities are ``inf - inf``. There the mathematical limit is an answer too
(``Evaluation.loss_limit``): ``+inf`` when the target has mass on a class below the ``+inf``
logit (its probability tends to 0), 0 when all of it sits on a single ``+inf`` class; NaN in
the row (a NaN logit, or mass spread over several ``+inf`` classes) has no limit. A position
without weight in the loss (ignored, or a zero-weight target without smoothing or z-loss) is
absent from the function (torch: an ignored target "does not contribute to the input
gradient"), so whatever its logits hold, NaN and ``+inf`` included, its loss and gradient are 0
(``Evaluation.idle``); its per-position statistics, such as the logsumexp a kernel returns, are
still those of its logits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from .vocabulary import INPUT_KINDS, REDUCTIONS, REFERENCE_TARGET_KINDS, Z_LOSS_WEIGHTINGS

__all__ = ["VARIANT_NAMES", "Variant", "Evaluation", "evaluate", "cross_entropy",
           "to_rows", "from_rows", "position"]

VARIANT_NAMES = ("logit_scale", "softcap", "z_loss")


@dataclass(frozen=True)
class Variant:
    """The options beyond torch's loss (see the module docstring); the default is torch's loss."""

    logit_scale: float = 1.0
    softcap: Optional[float] = None
    z_loss: float = 0.0
    z_loss_weighting: str = "unweighted"

    def __post_init__(self):
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap={self.softcap!r}: expected a positive cap or None")
        if self.z_loss_weighting not in Z_LOSS_WEIGHTINGS:
            raise ValueError(f"z_loss_weighting={self.z_loss_weighting!r}; expected one of {Z_LOSS_WEIGHTINGS}")

    @property
    def active(self) -> bool:
        return bool(self.options())

    def options(self) -> dict:
        """The options that differ from torch's loss, by the kit's names."""
        return {name: getattr(self, name) for name in VARIANT_NAMES
                if getattr(self, name) != getattr(_TORCH_LOSS, name)}

    def transform(self, rows: Tensor) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """The logits the loss sees, ``d`` (their derivative with respect to the given logits)
        and the tanh values of the cap (``None`` without a cap), in float64."""
        if not (self.logit_scale != 1.0 or self.softcap is not None):
            return rows, None, None
        scaled = rows * self.logit_scale
        if self.softcap is None:
            return scaled, torch.full_like(rows, self.logit_scale), None
        t = torch.tanh(scaled / self.softcap)
        return self.softcap * t, self.logit_scale * (1 - t * t), t


_TORCH_LOSS = Variant()


def to_rows(x: Tensor, *, class_dim: bool) -> Tensor:
    """Move the class dimension last and flatten the positions: ``(N, C, d...)`` to ``(M, C)``."""
    if class_dim:
        if x.dim() == 1:
            return x.reshape(1, -1)
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    return x.reshape(-1)


def from_rows(rows: Tensor, target_shape: torch.Size) -> Tensor:
    """Per-position values back into the target's (position) shape."""
    return rows.reshape(target_shape)


def position(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    """A flat index into ``shape`` as the tuple a user indexes with. In Python: the first
    ``torch.unravel_index`` of a process costs 0.6 s, and every later one 0.4 ms."""
    index = []
    for size in reversed(shape):
        flat_index, at = divmod(int(flat_index), size)
        index.append(at)
    return tuple(reversed(index))


def _rows_like(grad_rows: Tensor, input_shape: torch.Size) -> Tensor:
    if len(input_shape) == 1:
        return grad_rows.reshape(input_shape)
    moved = (input_shape[0], *input_shape[2:], input_shape[1])
    return grad_rows.reshape(moved).movedim(-1, 1)


def _safe_product(a: Tensor, log_p: Tensor) -> Tensor:
    """``a * log_p`` with ``0 * log 0`` taken as 0."""
    return (a * log_p).masked_fill_(a == 0, 0.0)


@dataclass(frozen=True)
class Evaluation:
    """Everything the reference knows about one problem, in float64 rows ``(M, C)``.

    The tolerance policy reads the row statistics (``log_probs``, ``logsumexp``, ``spread``,
    ``weighted_target``) to size its bounds.
    """

    input_kind: str
    reduction: str
    input_shape: torch.Size
    position_shape: torch.Size
    inputs: Tensor            # (M, C) float64 copy of the input as fed
    log_probs: Tensor         # (M, C)
    logsumexp: Optional[Tensor]  # (M,) for logits, else None
    spread: Tensor            # (M,) sum_j p_j |z_j - max z| (logits), else 0
    weighted_target: Tensor   # (M, C) the ``a`` above
    row_loss: Tensor          # (M,)
    denominator: Tensor       # () the mean's divisor (1 for none/sum)
    row_loss_limit: Tensor    # (M,) the mathematical limit where a +inf logit makes row_loss NaN
    variant: Variant = Variant()
    logit_derivative: Optional[Tensor] = None  # (M, C) d(inputs)/d(logits as given); None: identity
    cap_tanh: Optional[Tensor] = None          # (M, C) tanh(scale * z / cap) under a cap
    z_weight: Optional[Tensor] = None          # (M,) each position's z-loss weight (0 if ignored)
    z_loss_share: Optional[Tensor] = None      # () the loss's divisor over the z-loss's ('mean')

    @property
    def row_z_loss(self) -> Tensor:
        """``lam lse^2`` per position times its z-loss weight and share: the part of ``row_loss``
        that is z-loss (zeros without one)."""
        if self.z_weight is None:
            return torch.zeros_like(self.row_loss)
        lse = self.logsumexp.nan_to_num(0.0, 0.0, 0.0)
        return torch.where(self.z_weight == 0, 0.0, self.variant.z_loss * lse * lse * self.z_weight
                           * self.z_loss_share)

    @property
    def z_coefficient(self) -> Tensor:
        """Per position, what the z-loss adds to ``A`` in the gradient: ``2 lam k lse``, ``(M, 1)``."""
        if self.z_weight is None:
            return torch.zeros(self.log_probs.shape[0], 1, dtype=torch.float64)
        lse = self.logsumexp.nan_to_num(0.0, 0.0, 0.0)
        return (2 * self.variant.z_loss * self.z_weight * self.z_loss_share * lse)[:, None]

    @property
    def z_loss_value(self) -> Tensor:
        """The z-loss alone, reduced as the loss is: what a kernel returns for logging."""
        return self._reduce(self.row_z_loss)

    def without_cross_entropy(self) -> "Evaluation":
        """The z-loss alone (its value and gradient; a returned z-loss is judged by it)."""
        return replace(self, weighted_target=torch.zeros_like(self.weighted_target), row_loss=self.row_z_loss,
                       row_loss_limit=self.row_z_loss)

    @property
    def position_logsumexp(self) -> Tensor:
        """The logsumexp of the (capped) logits per position, shaped like the target."""
        return from_rows(self.logsumexp, self.position_shape)

    @property
    def loss_limit(self) -> Tensor:
        """The reduced loss with the limit in rows holding ``+inf``: also accepted (see above)."""
        return self._reduce(self.row_loss_limit)

    @functools.cached_property
    def idle(self) -> Tensor:
        """The positions the loss does not depend on, ``(M,)``: no weighted target and no z-loss."""
        return (self.weighted_target == 0).all(1) & (self.z_coefficient[:, 0] == 0)

    @functools.cached_property
    def probabilities(self) -> Tensor:
        """``p = exp(log p)``, rows ``(M, C)``: the gradient and most bounds read it, each comparison
        builds two bounds (the contract's and the exact grade's) on one evaluation."""
        return self.log_probs.exp()

    @property
    def num_classes(self) -> int:
        return self.log_probs.shape[1]

    @property
    def loss(self) -> Tensor:
        """The reduced loss, shaped as torch returns it."""
        return self._reduce(self.row_loss)

    def _reduce(self, row_loss: Tensor) -> Tensor:
        if self.reduction == "none":
            return from_rows(row_loss, self.position_shape)
        total = row_loss.sum()
        return total / self.denominator if self.reduction == "mean" else total

    def upstream_rows(self, grad_output: Tensor) -> Tensor:
        """The upstream gradient per position, divided by the mean's denominator."""
        g = grad_output.to(torch.float64)
        if self.reduction == "none":
            per_row = to_rows(g.expand(self.position_shape), class_dim=False)
        else:
            per_row = g.reshape(()).expand(self.row_loss.shape[0])
        # No kept position (all ignored, or an empty batch): nothing depends on the input, the
        # gradient is 0 even though the mean itself is 0/0.
        return per_row / self.denominator if bool(self.denominator != 0) else per_row * 0

    def grad(self, grad_output: Tensor) -> Tensor:
        """d(loss)/d(input) for the given upstream gradient, shaped like the input."""
        s = self.upstream_rows(grad_output)[:, None]
        a = self.weighted_target
        if self.input_kind == "logits":
            p = self.probabilities
            rows = ((a.sum(1, keepdim=True) + self.z_coefficient) * p).sub_(a).mul_(s)
            if self.logit_derivative is not None:
                rows.mul_(self.logit_derivative)
            rows.masked_fill_(self.idle[:, None], 0.0)   # 0, also where the row's softmax is NaN
        elif self.input_kind == "log_probs":
            rows = -s * a
        else:
            rows = torch.where(a == 0, torch.zeros_like(a), -s * a / self.inputs)
        return _rows_like(rows, self.input_shape)


    def grad_along_simplex(self, grad_output: Tensor, actual: Tensor) -> Tensor:
        """The gradient a loss defined along the probability simplex only (``simplex_gradient``)
        is held to: ``grad`` plus, per position, the multiple of the all-ones vector nearest
        ``actual`` (the mean of their difference over the classes where it is finite), so that
        ``actual`` less it is the difference of their projections onto the sum-zero subspace
        (tolerance.identities, Gradient along the simplex); a class whose gradient overflowed the dtype is
        judged as every overflow is, not spread over its position."""
        truth = to_rows(self.grad(grad_output), class_dim=True)
        difference = to_rows(actual.detach().to("cpu", torch.float64), class_dim=True) - truth
        finite = difference.isfinite()
        shift = torch.where(finite, difference, 0.0).sum(1, keepdim=True) / finite.sum(1, keepdim=True).clamp(min=1)
        return _rows_like(truth + shift, self.input_shape)

    def hessian_vector(self, grad_output: Tensor, v: Tensor) -> Tensor:
        """The Hessian of the loss (logits input, no variant) applied to ``v``: per position
        ``s A (p * v - p (p . v))``, shaped like the input."""
        if self.variant.active:
            raise NotImplementedError("the Hessian-vector product is stated for the plain loss")
        s = (self.upstream_rows(grad_output) * self.weighted_target.sum(1))[:, None]
        p, vr = self.probabilities, to_rows(v.detach().to("cpu", torch.float64), class_dim=True)
        return _rows_like(s * (p * vr - p * (p * vr).sum(1, keepdim=True)), self.input_shape)

    def directional(self, tangent: Tensor) -> Tensor:
        """``<dL/dz, t>``, what forward mode computes: per position for 'none', else a scalar."""
        ones = torch.ones(self.position_shape if self.reduction == "none" else (), dtype=torch.float64)
        per_position = (to_rows(self.grad(ones), class_dim=True)
                        * to_rows(tangent.detach().to("cpu", torch.float64), class_dim=True)).sum(1)
        return per_position.reshape(self.position_shape) if self.reduction == "none" else per_position.sum()


def _log_probs(rows: Tensor, input_kind: str) -> tuple[Tensor, Optional[Tensor], Tensor]:
    if input_kind == "log_probs":
        return rows, None, torch.zeros(rows.shape[0], dtype=rows.dtype)
    if input_kind == "probs":
        return rows.log(), None, torch.zeros(rows.shape[0], dtype=rows.dtype)
    if rows.shape[1] == 0:
        raise ValueError("input has no classes")
    row_max = rows.amax(1, keepdim=True) if rows.numel() else rows.sum(1, keepdim=True)
    # A row whose max is -inf has no finite logit: log-probabilities are undefined (NaN).
    shifted = rows - torch.where(torch.isneginf(row_max), torch.nan, row_max)
    lse_tail = shifted.exp().sum(1, keepdim=True).log()
    log_probs = shifted - lse_tail
    p = log_probs.exp()
    spread = shifted.abs().mul_(p).masked_fill_(p == 0, 0.0).sum(1)
    return log_probs, (row_max + lse_tail)[:, 0], spread


def _limit_of_rows(rows: Tensor, a: Tensor, row_loss: Tensor, input_kind: str) -> Tensor:
    """Per row, the limit of the loss as the ``+inf`` logits grow (see the module docstring)."""
    if input_kind != "logits" or rows.numel() == 0:
        return row_loss
    infinite = torch.isposinf(rows)
    if not bool(infinite.any()):
        return row_loss.clone()
    mass_below = ((a > 0) & ~infinite).any(1)
    single = infinite.sum(1) == 1
    limit = torch.where(mass_below, torch.inf, torch.where(single, 0.0, torch.nan)).to(row_loss.dtype)
    applies = infinite.any(1) & ~torch.isnan(rows).any(1)
    return torch.where(applies, limit, row_loss)


def _weighted_target(target_rows: Tensor, target_kind: str, num_classes: int, weight: Optional[Tensor],
                     ignore_index: int, label_smoothing: float) -> tuple[Tensor, Tensor]:
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.to(torch.float64).cpu()
    eps = float(label_smoothing)
    if target_kind == "probs":
        a = w * ((1 - eps) * target_rows + eps / num_classes)
        return a, torch.tensor(float(target_rows.shape[0]), dtype=torch.float64)
    kept = target_rows != ignore_index
    safe = torch.where(kept, target_rows, torch.zeros_like(target_rows))
    if bool(((safe < 0) | (safe >= num_classes)).any()):
        bad = target_rows[kept & ((safe < 0) | (safe >= num_classes))][0].item()
        raise IndexError(f"target {bad} is out of bounds for {num_classes} classes")
    onehot = torch.zeros(safe.shape[0], num_classes, dtype=torch.float64).scatter_(1, safe[:, None], 1.0)
    w_target = w[safe] * kept
    a = (1 - eps) * w_target[:, None] * onehot + (eps / num_classes) * w * kept[:, None]
    return a, w_target.sum()


def _z_weights(target_rows: Tensor, target_kind: str, weight: Optional[Tensor], ignore_index: int,
               weighting: str) -> Tensor:
    """Each position's z-loss weight: 1 per kept position, or ``w[y]`` under ``'class_weight'``."""
    if target_kind == "probs":
        return torch.ones(target_rows.shape[0], dtype=torch.float64)
    kept = (target_rows != ignore_index).to(torch.float64)
    if weighting == "unweighted" or weight is None:
        return kept
    safe = torch.where(target_rows != ignore_index, target_rows, torch.zeros_like(target_rows))
    return weight.to(torch.float64).cpu()[safe] * kept


def evaluate(input: Tensor, target: Tensor, *, weight: Optional[Tensor] = None, ignore_index: int = -100,
             reduction: str = "mean", label_smoothing: float = 0.0, input_kind: str = "logits",
             target_kind: Optional[str] = None, variant: Variant = Variant()) -> Evaluation:
    """Evaluate the loss in float64 on exactly the values given (already rounded to their dtype)."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind={input_kind!r}; expected one of {INPUT_KINDS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; expected one of {REDUCTIONS}")
    if variant.active and input_kind != "logits":
        raise ValueError(f"{variant} applies to logits, not input_kind={input_kind!r}")
    if target_kind is None:
        target_kind = "probs" if target.is_floating_point() else "index"
    if target_kind not in REFERENCE_TARGET_KINDS:
        raise ValueError(f"target_kind={target_kind!r}; expected one of {REFERENCE_TARGET_KINDS}")
    # A copy even of a float64 cpu input: the caller may write into its tensor after (a loss that
    # overwrites its logits, in a snippet that evaluated the truth before the call).
    x = input.detach().to("cpu", torch.float64, copy=True)
    t = target.detach().cpu()
    num_classes = x.shape[0] if x.dim() == 1 else x.shape[1]
    rows, logit_derivative, cap_tanh = variant.transform(to_rows(x, class_dim=True))
    if target_kind == "probs":
        if t.shape != x.shape:
            raise ValueError(f"probability target shape {tuple(t.shape)} != input shape {tuple(x.shape)}")
        target_rows = to_rows(t.to(torch.float64), class_dim=True)
        position_shape = x.shape[:1] + x.shape[2:] if x.dim() > 1 else torch.Size([])
    else:
        expected_shape = x.shape[:1] + x.shape[2:] if x.dim() > 1 else torch.Size([])
        if t.shape != expected_shape:
            raise ValueError(f"index target shape {tuple(t.shape)} != {tuple(expected_shape)}")
        target_rows = to_rows(t.long(), class_dim=False)
        position_shape = expected_shape
    log_probs, lse, spread = _log_probs(rows, input_kind)
    a, denominator = _weighted_target(target_rows, target_kind, num_classes, weight, ignore_index, label_smoothing)
    row_loss = -_safe_product(a, log_probs).sum(1)
    if reduction != "mean":
        denominator = torch.tensor(1.0, dtype=torch.float64)
    evaluation = Evaluation(row_loss_limit=_limit_of_rows(rows, a, row_loss, input_kind),
        input_kind=input_kind, reduction=reduction, input_shape=x.shape, position_shape=position_shape,
        inputs=rows, log_probs=log_probs, logsumexp=lse, spread=spread, weighted_target=a, row_loss=row_loss,
        denominator=denominator, variant=variant, logit_derivative=logit_derivative, cap_tanh=cap_tanh)
    if variant.z_loss == 0:
        return evaluation
    z_weight = _z_weights(target_rows, target_kind, weight, ignore_index, variant.z_loss_weighting)
    z_denominator = z_weight.sum() if reduction == "mean" else torch.tensor(1.0, dtype=torch.float64)
    share = denominator / z_denominator if bool(z_denominator != 0) else torch.zeros((), dtype=torch.float64)
    evaluation = replace(evaluation, z_weight=z_weight, z_loss_share=share)
    z_part = evaluation.row_z_loss
    return replace(evaluation, row_loss=row_loss + z_part, row_loss_limit=evaluation.row_loss_limit + z_part)


def cross_entropy(input: Tensor, target: Tensor, **options) -> Tensor:
    """The float64 loss, with ``torch.nn.functional.cross_entropy``'s keywords plus the kinds."""
    return evaluate(input, target, **options).loss

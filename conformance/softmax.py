"""The float64 truth of the softmax forms: ``softmax`` and ``log_softmax`` of the fed input, cast
to float64, along ``dim``, with the vector-Jacobian products and the row statistics the bounds
read (``tolerance``). Rows are moved to the last dim and flattened, so every statistic is
``(rows, n)`` and ``to_input`` puts an elementwise result back in the input's layout.

A row holding NaN, or ``+inf``, is NaN, as torch's: float64 arithmetic on ``z - max z`` makes it
so (``inf - inf``).

Variants (``SoftmaxVariant``, the kit's names of ``vocabulary.SOFTMAX_VARIANTS``), applied in this
order: ``z = scale * x`` (``scale`` may be negative), then ``softcap * tanh(z / softcap)`` (the
loss variants' transform, ``reference.Variant.transform``), then ``-inf`` wherever ``mask`` (the
kit's convention: True takes part, torch SDPA's; broadcastable to the input) or ``causal`` (over
the last two dims ``(Sq, Sk)``: query ``i`` sees key ``j <= i``, ``top_left``, SDPA's
``is_causal``; or ``j <= i + Sk - Sq``, ``bottom_right``, flash-attention's) leaves an entry out.
A masked entry's output is exactly 0 (``-inf`` for log-softmax) and its gradient exactly 0: it
does not depend on the input. A *fully masked row* has every ``z`` at ``-inf`` (masked, or
``-inf`` as given, which a cap makes finite); it is what ``fully_masked_rows`` says: ``"nan"``
(torch's, the arithmetic's ``-inf - -inf``), ``"zero"`` (a safe softmax: 0, log-softmax
``-inf``) or ``"uniform"`` (a finite fill such as Megatron's -10000: ``1/n``, ``-log n``); under
the last two its gradient is 0 (the output is a constant). A finite fill reaches only the
entries the mask or ``causal`` leaves out, so under ``"uniform"`` a row that keeps no finite entry
is uniform over its masked entries (``1/k`` of ``k``; all of them for a row masked whole) and 0
elsewhere, and a row of ``-inf`` as given that the mask leaves whole is NaN, as torch's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import Tensor

from .reference import Variant
from .vocabulary import SOFTMAX_CONVENTIONS

__all__ = ["SoftmaxVariant", "TORCH_SOFTMAX", "SoftmaxEvaluation", "evaluate_softmax", "SOFTMAX_FORMS"]

SOFTMAX_FORMS = ("softmax", "log_softmax")


@dataclass(frozen=True)
class SoftmaxVariant:
    """The options beyond torch's softmax of one call (the module docstring): ``scale``,
    ``softcap``, ``mask`` (True takes part), ``causal``; and the implementation's declared
    ``causal_alignment`` and ``fully_masked_rows``. The default is torch's softmax."""

    scale: float = 1.0
    softcap: Optional[float] = None
    mask: Optional[Tensor] = field(default=None, compare=False)
    causal: bool = False
    causal_alignment: str = SOFTMAX_CONVENTIONS["causal_alignment"][0]
    fully_masked_rows: str = SOFTMAX_CONVENTIONS["fully_masked_rows"][0]

    def __post_init__(self):
        Variant(softcap=self.softcap)  # refuses a cap that is not positive
        for name in ("causal_alignment", "fully_masked_rows"):
            if getattr(self, name) not in SOFTMAX_CONVENTIONS[name]:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {SOFTMAX_CONVENTIONS[name]}")
        if self.mask is not None and self.mask.dtype != torch.bool:
            raise ValueError(f"mask: a boolean tensor, not {self.mask.dtype}")

    def options(self) -> dict:
        """The options taken, by the kit's names (``vocabulary.SOFTMAX_VARIANTS``)."""
        taken = {"scale": self.scale != 1.0, "softcap": self.softcap is not None, "mask": self.mask is not None,
                 "causal": self.causal}
        return {name: getattr(self, name) for name, on in taken.items() if on}

    @property
    def masks(self) -> bool:
        return self.mask is not None or self.causal

    def kept(self, shape: tuple) -> Optional[Tensor]:
        """Where an input shaped ``shape`` takes part (mask and causal; ``None``: everywhere), on the mask's device."""
        if not self.masks:
            return None
        keep = torch.ones(shape, dtype=torch.bool, device=None if self.mask is None else self.mask.device)
        if self.mask is not None:
            keep = keep & self.mask
        if self.causal:
            sq, sk = shape[-2:]
            offset = sk - sq if self.causal_alignment == "bottom_right" else 0
            keep = keep & torch.ones(sq, sk, dtype=torch.bool, device=keep.device).tril(offset)
        return keep

    def code(self) -> str:
        """The variant as a snippet writes it (its mask is the snippet's ``mask``)."""
        defaults = TORCH_SOFTMAX
        parts = [f"{f.name}={'mask' if f.name == 'mask' else repr(getattr(self, f.name))}" for f in fields(self)
                 if f.name == "mask" and self.mask is not None
                 or f.name != "mask" and getattr(self, f.name) != getattr(defaults, f.name)]
        return f"SoftmaxVariant({', '.join(parts)})"


TORCH_SOFTMAX = SoftmaxVariant()  # torch's softmax: no option, the default conventions


@dataclass(frozen=True)
class SoftmaxEvaluation:
    """The truth of one call: ``form``, the input's ``shape`` and ``dim``, and per row (``(rows, n)``)
    the float64 ``inputs``, ``shifted = z - max z``, ``log_probs``, ``probs``, and per row
    ``log_sum = log sum_j exp(z_j - m)`` and ``spread = sum_j p_j |z_j - m|``. Under a variant the
    ``inputs`` are ``z`` as the softmax sees it (scaled, capped, ``-inf`` where masked),
    ``derivative`` is ``dz/dx`` and ``cap_tanh`` the cap's ``tanh`` (``None`` without them),
    ``masked`` the entries mask or causal leave out, ``fully_masked`` the rows with no entry
    above ``-inf`` (under ``"uniform"``, and one the mask leaves out: the module docstring)."""

    form: str
    shape: tuple
    dim: int
    inputs: Tensor
    shifted: Tensor
    log_probs: Tensor
    probs: Tensor
    log_sum: Tensor
    spread: Tensor
    variant: SoftmaxVariant = SoftmaxVariant()
    derivative: Optional[Tensor] = None
    cap_tanh: Optional[Tensor] = None
    masked: Optional[Tensor] = None
    fully_masked: Optional[Tensor] = None

    @property
    def num_classes(self) -> int:
        return self.inputs.shape[1]

    @property
    def output_rows(self) -> Tensor:
        return self.probs if self.form == "softmax" else self.log_probs

    @property
    def output(self) -> Tensor:
        """The truth of the form's output, shaped like the input."""
        return self.to_input(self.output_rows)

    def rows(self, t: Tensor) -> Tensor:
        """``t`` (shaped like the input) as ``(rows, n)`` float64 on the cpu."""
        return t.detach().to("cpu", torch.float64).movedim(self.dim, -1).reshape(-1, self.num_classes)

    def to_input(self, rows: Tensor) -> Tensor:
        moved = list(self.shape)
        moved.append(moved.pop(self.dim))
        return rows.reshape(moved).movedim(-1, self.dim)

    def grad_rows(self, upstream: Tensor) -> Tensor:
        """The VJP per row (``grad_rows_of``)."""
        return self.grad_rows_of(self.rows(upstream))

    def z_grad_rows(self, g: Tensor) -> Tensor:
        """The VJP of upstream rows ``g`` (rows, n) with respect to ``z``: softmax ``y (g - sum(g y))``,
        log-softmax ``g - softmax(z) sum(g)``."""
        if self.form == "softmax":
            return self.probs * (g - (g * self.probs).sum(1, keepdim=True))
        return g - self.probs * g.sum(1, keepdim=True)

    def grad_rows_of(self, g: Tensor) -> Tensor:
        """The VJP of upstream rows ``g`` (rows, n) with respect to the input: with respect to
        ``z``, times ``dz/dx``; 0 where the output does not depend on the input (a masked entry,
        a fully masked row under ``"zero"`` or ``"uniform"``)."""
        rows = self.z_grad_rows(g)
        if self.derivative is not None:
            rows = rows * self.derivative
        if self.masked is not None:
            rows = rows.masked_fill(self.masked, 0.0)
        if self.fully_masked is not None and self.variant.fully_masked_rows != "nan":
            rows = rows.masked_fill(self.fully_masked[:, None], 0.0)
        return rows

    def grad(self, upstream: Tensor) -> Tensor:
        return self.to_input(self.grad_rows(upstream))

    def directional_rows_of(self, v: Tensor) -> Tensor:
        """The Jacobian times tangent rows ``v`` (what forward mode computes): softmax's Jacobian
        ``diag(y) - y y^T`` is symmetric, so its JVP is its VJP; log-softmax ``v - sum(softmax(z) v)``."""
        if self.form == "softmax":
            return self.grad_rows_of(v)
        return v - (self.probs * v).sum(1, keepdim=True)

    def directional(self, tangent: Tensor) -> Tensor:
        return self.to_input(self.directional_rows_of(self.rows(tangent)))

    def hessian_vector(self, upstream: Tensor, v: Tensor) -> Tensor:
        """The derivative of ``<VJP(upstream), v>`` with respect to the input (what double backward
        computes), with ``J(w) = p (w - <w, p>)``: softmax ``J(v g) - <v, p> J(g) - <g, p> J(v)``,
        log-softmax ``-sum(g) J(v)``."""
        g, v = self.rows(upstream), self.rows(v)
        p = self.probs

        def jacobian(w: Tensor) -> Tensor:
            return p * (w - (w * p).sum(1, keepdim=True))

        if self.form == "softmax":
            rows = (jacobian(v * g) - (v * p).sum(1, keepdim=True) * jacobian(g)
                    - (g * p).sum(1, keepdim=True) * jacobian(v))
        else:
            rows = -g.sum(1, keepdim=True) * jacobian(v)
        return self.to_input(rows)


def evaluate_softmax(input: Tensor, dim: int, form: str,
                     variant: SoftmaxVariant = TORCH_SOFTMAX) -> SoftmaxEvaluation:
    """The truth of ``form`` (``SOFTMAX_FORMS``) on ``input`` along ``dim`` under ``variant``, in float64."""
    if form not in SOFTMAX_FORMS:
        raise ValueError(f"form={form!r}: expected one of {SOFTMAX_FORMS}")
    if variant.causal and dim % input.dim() != input.dim() - 1:
        raise ValueError(f"causal applies along the last dim, not dim={dim}")
    dim = dim % input.dim()
    z, derivative, cap_tanh = Variant(logit_scale=variant.scale, softcap=variant.softcap).transform(
        input.detach().to("cpu", torch.float64))
    kept = variant.kept(tuple(input.shape))
    if kept is not None:
        kept = kept.cpu()
        z = z.masked_fill(~kept, -torch.inf)
    n = z.shape[dim]

    def rows_of(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.movedim(dim, -1).reshape(-1, n)

    rows = rows_of(z)
    masked = None if kept is None else ~rows_of(kept.expand(input.shape))
    fully_masked = (rows == -torch.inf).all(1) if n else torch.zeros(rows.shape[0], dtype=torch.bool)
    fill = torch.zeros_like(rows)   # where a row that keeps nothing puts its weight: everywhere
    if variant.fully_masked_rows == "uniform" and masked is None:   # a finite fill reaches masked entries only
        fully_masked = torch.zeros_like(fully_masked)
    elif variant.fully_masked_rows == "uniform":
        fully_masked, fill = fully_masked & masked.any(1), torch.where(masked, 0.0, -torch.inf)
    filled = fully_masked & (variant.fully_masked_rows != "nan")
    row_max = rows.amax(1, keepdim=True) if n else rows.sum(1, keepdim=True)
    shifted = torch.where(filled[:, None], fill, rows - row_max)
    log_sum = shifted.exp().sum(1, keepdim=True).log()
    log_probs = shifted - log_sum
    if variant.fully_masked_rows == "zero":
        log_probs = log_probs.masked_fill(filled[:, None], -torch.inf)
    probs = log_probs.exp()
    spread = torch.where(probs == 0, 0.0, probs * shifted.abs()).sum(1)
    return SoftmaxEvaluation(form=form, shape=tuple(input.shape), dim=dim, inputs=rows, shifted=shifted,
                             log_probs=log_probs, probs=probs, log_sum=log_sum[:, 0], spread=spread, variant=variant,
                             derivative=rows_of(derivative), cap_tanh=rows_of(cap_tanh), masked=masked,
                             fully_masked=fully_masked)

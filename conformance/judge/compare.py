"""The one comparison the judge makes: elementwise ``|actual - expected| <= bound`` in float64,
reduced to the worst element (its index, both values, the error and the bound)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..reference import position

__all__ = ["Comparison", "compare", "compare_each", "as_float64", "or_torch_nonfinite"]


@dataclass(frozen=True)
class Comparison:
    """The worst element of one comparison. ``ratio`` is error / bound (inf for a NaN/inf mismatch)."""

    identity: str
    ratio: float
    index: tuple
    actual: float
    expected: float
    error: float
    bound: float

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0

    def describe(self) -> str:
        where = "element " + str(self.index) if self.index else "value"
        return (f"worst {where}: actual={self.actual!r} expected={self.expected!r} "
                f"error={self.error:.3g} bound={self.bound:.3g} (error/bound={self.ratio:.3g})")


def as_float64(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def compare(identity: str, actual: Tensor, expected: Tensor, bound: Tensor, *,
            also: Optional[Tensor] = None) -> Comparison:
    """Elementwise ``|actual - expected| <= bound`` in float64; non-finite expectations must match
    exactly. ``also``: an alternative accepted per element (the limit where torch's answer is NaN)."""
    return compare_each(identity, actual, expected, (bound,), also=also)[0]


def compare_each(identity: str, actual: Tensor, expected: Tensor, bounds: tuple, *,
                 also: Optional[Tensor] = None) -> tuple:
    """``compare`` against each of ``bounds`` (the judge's contract and its exact grade), the
    errors formed once."""
    a, e = as_float64(actual), as_float64(expected)
    if actual.is_floating_point() and _beyond_range(e, actual.dtype):
        # A true value beyond the dtype's range rounds to an infinity: that is the right answer.
        rounded = e.to(actual.dtype).to(torch.float64)
        e = torch.where(torch.isinf(rounded) & torch.isfinite(e), rounded, e)
    if a.shape != e.shape:
        raise AssertionError(f"[{identity}] shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if e.numel() == 0:
        return tuple(Comparison(identity, 0.0, (), float("nan"), float("nan"), 0.0, 0.0) for _ in bounds)

    a_finite = bool(torch.isfinite(a).all())

    def errors(target: Tensor) -> Tensor:
        if a_finite and bool(torch.isfinite(target).all()):   # the common case, the same errors in fewer passes
            return (a - target).abs()
        finite = torch.isfinite(target)
        same_nonfinite = (a == target) | (torch.isnan(a) & torch.isnan(target))
        error = torch.where(finite, (a - target).abs(), torch.where(same_nonfinite, 0.0, torch.inf))
        return torch.where(torch.isnan(error), torch.inf, error)

    error = errors(e)
    if also is not None:
        alternative = as_float64(also).expand(e.shape)
        error = torch.minimum(error, torch.where(torch.isnan(alternative), torch.inf, errors(alternative)))
    zero, infinite = error == 0, torch.isinf(error)
    infinite = infinite if bool(infinite.any()) else None
    return tuple(_worst(identity, a, e, error, as_float64(bound).expand(e.shape), zero, infinite) for bound in bounds)


def _beyond_range(e: Tensor, dtype: torch.dtype) -> bool:
    """Whether a value of ``e`` lies beyond ``dtype``'s largest finite one (float64 has none)."""
    return dtype != torch.float64 and bool((e.abs() > torch.finfo(dtype).max).any())


def _worst(identity: str, a: Tensor, e: Tensor, error: Tensor, b: Tensor, zero: Tensor,
           infinite: Optional[Tensor]) -> Comparison:
    """The element of largest error / bound: 0 where the error is (``zero``), inf where it is
    (``infinite``, None where none is)."""
    # inf / inf is NaN: an infinite error beyond an infinite bound is still a failure (the answer
    # accepted there is the alternative's, such as torch's own non-finite answer under parity).
    ratio = (error / b).masked_fill_(zero, 0.0)
    if infinite is not None:
        ratio.masked_fill_(infinite, torch.inf)
    flat = int(ratio.reshape(-1).argmax())
    index = position(flat, e.shape)
    return Comparison(identity, float(ratio.reshape(-1)[flat]), index, float(a.reshape(-1)[flat]),
                      float(e.reshape(-1)[flat]), float(error.reshape(-1)[flat]), float(b.reshape(-1)[flat]))


def or_torch_nonfinite(torch_result: Tensor, also: Optional[Tensor]) -> Tensor:
    """Under parity, torch's own answer where it is not finite (its error, and so the bound, is
    infinite there: the same answer is no worse than torch, any other is), else ``also``."""
    t = as_float64(torch_result)
    other = torch.full_like(t, torch.nan) if also is None else as_float64(also).expand(t.shape)
    return torch.where(torch.isfinite(t), other, t)

"""The protocol every form of implementation follows, and what a form hands the judge.

A form (torch OpInfo's operator family, supplied to a shared harness) says how its
implementation is called (always through the guarded ``Implementation``), the named quantities a
call returns (the loss, each gradient), the float64 truth and the bound kind of each, torch's own
counterpart of each (for the ``parity`` contract), and the lines of a reproduce snippet that
rebuild, feed and call its problem. The judge loops over the quantities: one ``Judge.conforms``
for every family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..vocabulary import dtype_name

__all__ = ["Show", "Quantity", "Form", "call_lines", "upstream_lines", "direction_lines"]


@dataclass(frozen=True)
class Show:
    """What a reproduce snippet prints: code for the actual and the expected quantity (``{at}``
    becomes the worst element's index), after ``steps``, the lines that compute them once the
    snippet has built the case, fed it and evaluated the truth. ``steps=None`` runs the problem's
    own call: forward, and backward with its upstream gradient if it has one. ``truth=False``: the
    snippet evaluates no truth (an input the reference refuses, such as an invalid target, where
    the snippet shows what the implementation did with it)."""

    actual: str
    expected: str
    steps: Optional[tuple] = None
    truth: bool = True


@dataclass(frozen=True)
class Quantity:
    """One returned quantity of a call, ready to judge: ``actual`` (``None``: the call gave none
    where one was due), the truth's ``expected``, the bound ``kind`` (``tolerance.BOUNDS``) and its
    ``terms``; ``declared``: terms of an approximation the implementation declares, which widen the
    contract's bound but not the accuracy grade; ``counterpart``: torch's own result on what the
    implementation was fed (the ``parity`` contract), computed only when asked; ``also``: a result
    accepted besides the truth per element (NaN: none)."""

    identity: str
    actual: Optional[Tensor]
    expected: Tensor
    kind: str
    terms: dict
    show: Show
    declared: dict = field(default_factory=dict)
    counterpart: Optional[Callable[[], Tensor]] = None
    also: Optional[Tensor] = None


class Form(ABC):
    """A family of implementations sharing a calling convention (``vocabulary.FORMS``)."""

    name: str
    # Under ``parity``: whether torch's error replaces the standard bound (a value or a gradient
    # torch computes elementwise as the implementation does) or widens it (a gradient summed over
    # many rows, which torch can get nearly exact by luck, so parity alone would refuse what the
    # standard contract accepts).
    parity_widens: bool = False

    @abstractmethod
    def call(self, impl, problem, **context) -> Any:
        """Forward, and backward with the problem's upstream gradient if it has one: the outcome,
        holding pristine copies of what the implementation was fed."""

    @abstractmethod
    def truth(self, impl, problem, outcome) -> Any:
        """The float64 truth on exactly what the implementation was fed."""

    @abstractmethod
    def quantities(self, impl, problem, outcome, truth) -> list[Quantity]:
        """The quantities of the outcome to judge, in the order a failure should name them."""

    @abstractmethod
    def snippet(self, impl, problem, show: Show) -> list[str]:
        """The lines that rebuild the problem, load the implementation, evaluate the truth and
        (unless ``show.steps`` replaces it) call it as ``call`` does."""

    @abstractmethod
    def call_steps(self, impl, problem, **context) -> list[str]:
        """The snippet's lines of the call as ``call`` makes it (``context``: what the form needs
        besides), run after those that build, feed and evaluate: a check that records the call as
        steps (``judge.snippet.Steps``) runs exactly what its snippet prints."""


def upstream_lines(upstream: str, device: str) -> list[str]:
    """A snippet's lines that build ``grad``, the upstream gradient its recipe ``upstream`` builds, on ``device``."""
    return [upstream] + [f"grad = grad.to({device!r})"] * (device != "cpu")


def direction_lines(shape: tuple, dtype: torch.dtype, seed: int, device: str) -> list[str]:
    """A snippet's lines that build ``v``, a deterministic direction (a tangent, or a Hessian-vector
    product's vector) shaped ``shape`` in ``dtype``, on ``device``."""
    return [f"v = torch.randn({tuple(shape)}, dtype=torch.float64, generator=torch.Generator()"
            f".manual_seed({seed + 5})).to(torch.{dtype_name(dtype)})"] + [f"v = v.to({device!r})"] * (device != "cpu")


def call_lines(call: str, upstream: Optional[str], device: str, result: str) -> list[str]:
    """A snippet's call of a problem on ``x`` as ``Form.call`` makes it: forward alone, or with ``x``
    requiring grad and backward with the upstream gradient ``upstream`` builds, on ``device``."""
    if upstream is None:
        return [f"{result} = {call}"]
    return ["x.requires_grad_()", f"{result} = {call}", *upstream_lines(upstream, device), f"{result}.backward(grad)"]

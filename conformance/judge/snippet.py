"""The reproduce snippet of a failure: plain-torch code that rebuilds the problem, loads the
implementation, evaluates the float64 truth on the inputs as fed, calls it as the check did (the
form's own lines, or the lines a check recorded with ``Steps``) and prints the very mismatch the
check saw."""
from __future__ import annotations

import torch

from .. import forms
from ..cases import Problem
from ..forms import Show
from ..forms import logits as logits_form
from ..impl import Implementation
from ..reference import Variant, evaluate

__all__ = ["repro_snippet", "indent", "Steps", "IMPORT_BITS"]

# A step that imports ``guards.bits``, the bitwise copy checks compare to tell whether a tensor changed.
IMPORT_BITS = "from conformance.guards import bits"


def repro_snippet(problem: Problem, impl: Implementation, show: Show, index: tuple = ()) -> str:
    at = f"[{', '.join(map(str, index))}]" if index else ""
    lines = forms.of(impl).snippet(impl, problem, show)
    lines.append(f"print('actual', {show.actual.format(at=at)}, 'expected', {show.expected.format(at=at)})")
    return "\n".join(lines)


def indent(snippet: str) -> str:
    return "\n".join("    " + line for line in snippet.splitlines())


class Steps:
    """A check's steps on a logits problem, each one piece of code that the check runs and its
    snippet prints (torch's ``SampleInput.summary()`` prints what a test called): what a failure
    shows is what ran, never a second copy written beside it.

    Steps run in a namespace holding what the logits form's snippet has defined before them: the
    case's ``logits``, ``target`` and ``weight`` (copies in their layouts: the case stays as
    built), ``impl``, the fed ``x`` and ``t`` and the float64 ``truth`` on them (unless
    ``truth=False``: an input the reference refuses), the feed and the truth run from the very
    lines the form prints (``logits.FEED``, ``logits.truth_code``). ``impl.call(...)``, the
    snippet's plain call, runs in the check through the guards of every call
    (``Implementation.with_keywords``). ``fed``: pristine copies of ``x`` and ``t``, for an
    outcome's truth and torch's counterpart. ``Steps.replaying``: steps on a problem of any form,
    after its snippet's own lines.

        steps = Steps(impl, problem)
        loss = steps(f"loss = {logits_form.call_code(impl, problem)}")["loss"]
        judge.value(problem, outcome, steps["truth"], show=steps.show("loss{at}.item()", "truth.loss{at}.item()"))
    """

    def __init__(self, impl: Implementation, problem: Problem, *, truth: bool = True) -> None:
        case = problem.case
        self.names = {"torch": torch, "evaluate": evaluate, "Variant": Variant, "impl": _Guarded(impl),
                      "logits": _own_copy(case.logits), "target": _own_copy(case.target),
                      "weight": problem.call_options().weight}
        self.lines: list[str] = []
        exec(logits_form.FEED, self.names)
        self.fed = (self["x"].detach().clone(), self["t"].detach().clone())
        self.truth = truth
        if truth:
            exec(logits_form.truth_code(impl, problem), self.names)

    @classmethod
    def replaying(cls, impl: Implementation, problem, *, truth: bool = False) -> Steps:
        """Steps of a problem of any form, in the namespace its form's own snippet builds before
        the call (the recipe run again, the implementation the one loaded, guarded), with the
        form's ``truth`` on the input as built where asked: a check that records the form's call
        (``Form.call_steps``) or a transform of it runs what its snippet prints."""
        steps = cls.__new__(cls)
        steps.names, steps.lines, steps.truth, steps.fed = {"impl": _Guarded(impl)}, [], truth, None
        load = impl.load_code()
        for line in forms.of(impl).snippet(impl, problem, Show("", "", steps=(), truth=truth)):
            if line not in load:
                exec(compile(line, "<snippet line>", "exec"), steps.names)
        return steps

    def __call__(self, *steps: str) -> Steps:
        """Run each step in turn, remembered before it runs (a step that raises is the last one a
        snippet shows)."""
        for step in steps:
            self.lines.append(step)
            exec(compile(step, "<recorded step>", "exec"), self.names)
        return self

    def __getitem__(self, name: str):
        return self.names[name]

    def show(self, actual: str, expected: str) -> Show:
        """What the snippet prints after the steps run so far (``Show``)."""
        return Show(actual, expected, tuple(self.lines), truth=self.truth)


def _own_copy(t):
    """A copy of ``t`` in the same layout (strides, offset, the storage it views) in a storage of its own."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage().clone(), t.storage_offset(),
                                                               t.shape, t.stride())


class _Guarded:
    """``impl`` as steps see it: its ``call`` is the guarded call, everything else the implementation's."""

    def __init__(self, impl: Implementation) -> None:
        self._impl = impl

    def call(self, *args, **keywords):
        return self._impl.with_keywords(args, keywords)

    def __getattr__(self, name: str):
        return getattr(self._impl, name)

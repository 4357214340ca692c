"""The reproduce snippet of a failure: plain-torch code that rebuilds the problem, loads the
implementation, evaluates the float64 truth on the inputs as fed, calls it as the check did (the
form's own lines, or the check's ``Show.steps``) and prints the very mismatch the check saw."""
from __future__ import annotations

from .. import forms
from ..cases import Problem
from ..forms import Show
from ..impl import Implementation

__all__ = ["repro_snippet", "indent"]


def repro_snippet(problem: Problem, impl: Implementation, show: Show, index: tuple = ()) -> str:
    at = f"[{', '.join(map(str, index))}]" if index else ""
    lines = forms.of(impl).snippet(impl, problem, show)
    lines.append(f"print('actual', {show.actual.format(at=at)}, 'expected', {show.expected.format(at=at)})")
    return "\n".join(lines)


def indent(snippet: str) -> str:
    return "\n".join("    " + line for line in snippet.splitlines())

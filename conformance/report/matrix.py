"""The conformance matrix's page: one row per implementation of a catalogue (``conformance.matrix``
runs them), families and dtypes across, the worst accuracy of each row and every failing check,
described as tables and rendered by ``rendering`` as a report is."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..records import Check, Status
from ..vocabulary import DTYPE_NAMES
from .rendering import html_page, markdown_page
from .runfile import Run, id_key
from .tables import Table, cut, number, ratio_cell, verdict_cell

__all__ = ["RAN", "NOT_INSTALLED", "STOPPED", "BROKEN", "Row", "failing", "render_matrix"]

RAN = "ran"
NOT_INSTALLED = "not installed"
STOPPED = "stopped at the row timeout"
BROKEN = "could not run"


@dataclass(frozen=True)
class Row:
    """One catalogue entry and what came of it: its run (``None`` where it did not run, or was
    stopped before writing one), the packages' versions, what it ran (``profile``: the pytest
    arguments beyond the default run) and, for a row that did not finish, why (``note``)."""

    name: str
    description: str
    state: str
    profile: tuple = ()
    versions: dict = field(default_factory=dict)
    run: Optional[Run] = None
    note: str = ""
    seconds: float = 0.0

    @property
    def implementations(self) -> list:
        """The implementations its run judged (torch's default run judges several), in order."""
        return list(dict.fromkeys(c.implementation for c in self.run.checks)) if self.run else []


def failing(rows: list) -> list:
    """Every failing check of the matrix, as ``(row, check)``."""
    return [(row, c) for row in rows if row.run for c in row.run.checks if c.status == Status.FAILED]


def _label(row: Row, implementation: str) -> str:
    return row.name if len(row.implementations) < 2 else f"{row.name}: {implementation}"


def _ran(row: Row) -> str:
    return "default run" if not row.profile else "reduced: " + " ".join(row.profile)


def _lines(row: Row) -> list:
    """A row's lines of the matrix: each implementation it judged with its checks, or the row alone
    (``None`` for its checks) where it did not run."""
    if not row.implementations:
        return [(row.name, None)]
    return [(_label(row, impl), [c for c in row.run.checks if c.implementation == impl])
            for impl in row.implementations]


def _families(rows: list) -> list:
    return sorted({c.feature for row in rows if row.run for c in row.run.checks})


def _dtypes(rows: list) -> list:
    found = {c.dtype for row in rows if row.run for c in row.run.checks}
    return [d for d in DTYPE_NAMES if d in found] + sorted(found - set(DTYPE_NAMES))


def _absent(row: Row) -> tuple:
    return (row.state, "muted") if row.state == NOT_INSTALLED else (row.state, "fail")


def _grid(rows: list, width: int, cells: Callable[[list], list]) -> list:
    """One line per implementation of each row: its label and ``cells(checks)`` (``width`` cells),
    or, for a row that did not run, its state in the first cell and the rest empty."""
    return [[label] + (cells(checks) if checks is not None else
                       [_absent(row), *[("", "muted")] * (width - 1)][:width])
            for row in rows for label, checks in _lines(row)]


def _family_cell(checks: list) -> tuple:
    """A family's verdict, naming the dtypes of its failures."""
    if not checks:
        return ("", "muted")
    text, tone = verdict_cell(checks)
    by_dtype = defaultdict(int)
    for c in checks:
        if c.status == Status.FAILED:
            by_dtype[c.dtype] += 1
    if by_dtype:
        text += " (" + ", ".join(f"{'any dtype' if d == '-' else d} {n}" for d, n in sorted(by_dtype.items())) + ")"
    return text, tone


def _worst(checks: list) -> Optional[Check]:
    """The check whose error came nearest its bound or furthest beyond it; a failure that
    compared nothing (an exception, a missing raise: ratio inf) is a finding, not an accuracy."""
    measured = [c for c in checks if c.ratio is not None and math.isfinite(c.ratio)
                and c.status in (Status.PASSED, Status.FAILED, Status.XPASSED)]
    return max(measured, key=lambda c: c.ratio, default=None)


def _matrix_table(rows: list) -> Table:
    families = _families(rows)

    def cells(checks: list) -> list:
        worst = _worst(checks)
        return ([verdict_cell(checks)] + [_family_cell([c for c in checks if c.feature == f]) for f in families]
                + [ratio_cell(worst.ratio if worst else None)])
    lines = _grid(rows, len(families) + 2, cells)
    return Table("Matrix", "Implementations down, families of checks across: each cell counts the checks (pass, "
                 "FAIL failed/run with the dtypes of the failures, declared deviations, unsupported features); "
                 "the last column is the worst error over its bound in the row (above 1: a failure).",
                 ["implementation", "all checks"] + families + ["worst error/bound"], lines)


def _dtype_table(rows: list) -> Table:
    dtypes = _dtypes(rows)
    lines = _grid(rows, len(dtypes), lambda checks: [
        verdict_cell(cs) if (cs := [c for c in checks if c.dtype == d]) else ("", "muted") for d in dtypes])
    return Table("By dtype", "The same checks per dtype ('any dtype': checks that run no one dtype).",
                 ["implementation"] + ["any dtype" if d == "-" else d for d in dtypes], lines)


def _accuracy_table(rows: list) -> Table:
    lines = []
    for row in rows:
        for label, checks in _lines(row):
            worst = _worst(checks or [])
            if worst:
                lines.append([label, ratio_cell(worst.ratio), worst.identity, number(worst.error),
                              number(worst.bound), id_key(worst.id)])
    return Table("Worst accuracy", "Per implementation, the check whose error came nearest its bound (or furthest "
                 "beyond it).", ["implementation", "error/bound", "identity", "error", "bound", "check"], lines)


def _reason_line(check: Check, prefix: str) -> str:
    return next((line.strip() for line in check.reason.splitlines() if line.strip().startswith(prefix)), "")


def _findings_in_brief(rows: list) -> Table:
    """The findings grouped by implementation, check and identity: one line per defect, where the
    full table has one per failing check (a defect shows in every dtype and reduction it meets)."""
    groups = defaultdict(list)
    for row, c in failing(rows):
        first = cut((c.reason.splitlines() or [""])[0], 120)
        groups[(_label(row, c.implementation), id_key(c.id).partition("[")[0], c.identity or first)].append(c)
    lines = []
    for (label, check, identity), checks in groups.items():
        dtypes = sorted({"any dtype" if c.dtype == "-" else c.dtype for c in checks})
        worst = max(checks, key=lambda c: c.ratio if c.ratio is not None else math.inf)
        lines.append([label, check, identity, str(len(checks)), ", ".join(dtypes), ratio_cell(worst.ratio),
                      id_key(worst.id)])
    return Table("Findings in brief", "The failing checks grouped by implementation, check and identity, with the "
                 "dtypes they fail in and the worst of them (all of them, with their parameters, in Findings).",
                 ["implementation", "check", "identity", "failing", "dtypes", "worst error/bound", "worst check"],
                 lines)


def _findings_table(rows: list) -> Table:
    lines = []
    for row, c in failing(rows):
        first = cut((c.reason.splitlines() or [""])[0], 200)
        params = _reason_line(c, "params:").removeprefix("params: ")
        lines.append([_label(row, c.implementation), id_key(c.id), c.identity or first, params,
                      number(c.error), number(c.bound), ratio_cell(c.ratio)])
    return Table("Findings", "Every failing check: the identity judged (or the message where nothing numeric was "
                 "compared), the parameters of the call, and the worst error against its bound. Rerun one with "
                 "the row's hook and `-k` on the check's name to get its reproduce snippet.",
                 ["implementation", "check", "identity", "params", "error", "bound", "error/bound"], lines)


def _rows_table(rows: list) -> Table:
    lines = []
    for row in rows:
        counts = defaultdict(int)
        for c in row.run.checks if row.run else []:
            counts[c.status] += 1
        checks = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
        tone = "muted" if row.state == NOT_INSTALLED else "ok" if row.state == RAN else "fail"
        lines.append([row.name, row.description, "\n".join(row.implementations),
                      ", ".join(f"{k} {v}" for k, v in row.versions.items()),
                      _ran(row), (row.state + (f": {row.note}" if row.note else ""), tone), checks,
                      f"{row.seconds:.0f} s" if row.seconds else ""])
    return Table("Rows", "What each catalogue entry is and what it ran: the default run, or a reduced profile (the "
                 "pytest arguments it added) where the full run does not fit its time.",
                 ["row", "what it is", "judged", "versions", "ran", "state", "checks", "wall"], lines)


def _headline(rows: list) -> tuple:
    ran = [r for r in rows if r.run]
    failed = {r.name for r, _ in failing(rows)}
    absent = sum(r.state == NOT_INSTALLED for r in rows)
    broken = [r.name for r in rows if r.state != NOT_INSTALLED and not r.run]
    parts = [f"{len(ran)} of {len(rows)} rows judged", f"{len(failed)} with failing checks"]
    parts += [f"{absent} not installed"] * bool(absent) + [f"{len(broken)} could not run"] * bool(broken)
    return ", ".join(parts), "fail" if failed or broken else "ok"


def _environment(rows: list) -> list:
    """The versions the rows ran with (python, torch, the kit: each row's run file records them;
    more than one line where rows differ, as a venv's row may)."""
    seen = dict.fromkeys(f"python {e.get('python', '?')}, torch {e.get('torch', '?')}, kit {e.get('kit', '?')}, "
                         f"{e.get('platform', '?')}, {e.get('threads', '?')} torch threads"
                         for e in (r.run.environment for r in rows if r.run))
    return list(seen) or ["no row ran"]


def render_matrix(rows: list, fmt: str, *, generated: str) -> str:
    """The matrix page as ``md`` or ``html``; ``generated`` says when and how it was made."""
    if fmt not in ("md", "html"):
        raise ValueError(f"fmt={fmt!r}: expected 'md' or 'html'")
    headline, tone = _headline(rows)
    tables = [_matrix_table(rows), _dtype_table(rows), _accuracy_table(rows), _findings_in_brief(rows),
              _findings_table(rows), _rows_table(rows)]
    lists = [[(line, "") for line in [generated] + _environment(rows)]]
    if fmt == "md":
        return markdown_page("Conformance matrix", headline, lists, tables)
    return html_page("Conformance matrix", headline, tone, lists, tables)

"""Rendering: the tables as aligned terminal text no wider than the terminal, and a whole report
as Markdown or as one self-contained HTML page."""
from __future__ import annotations

import html
import re
import textwrap
from collections import defaultdict
from typing import Optional

from .. import paired
from ..records import STATUSES, Status
from .plots import ratio_plot
from .runfile import Run
from .tables import Cell, report_tables

__all__ = ["render", "render_text", "baseline_lines", "markdown_page", "html_page"]


def _cell_text(cell: Cell) -> str:
    text = str(cell[0] if isinstance(cell, tuple) else cell).removeprefix("conformance/suite/")
    return " / ".join(line.strip() for line in text.splitlines())


# Where a cell may wrap: after spaces, after _ : [ / , = ( and after a hyphen before a letter
# (cpu-bfloat16-sum), never inside a number (2.3842e-07, -0.00062) or a word.
_BREAK = re.compile(r"(?<=\s)(?=\S)|(?<=[_:\[/,=(])(?=[^\s_:\[/,=(])|(?<=-)(?=[A-Za-z])")


_SPACE = re.compile(r"(?<=\s)(?=\S)")   # headers wrap between words only


def _chunks(text: str, header: bool = False) -> list[str]:
    return [c for c in (_SPACE if header else _BREAK).split(text) if c]


def _wrap(text: str, width: int, header: bool = False) -> list[str]:
    """``text`` in lines of at most ``width``, broken between chunks; a chunk longer than the
    width (only where the terminal is narrower than one) is split."""
    lines = [""]
    for chunk in _chunks(text, header):
        if len((lines[-1] + chunk).rstrip()) > width and lines[-1].strip():
            lines.append("")
        lines[-1] += chunk.lstrip() if not lines[-1] else chunk
        while len(lines[-1].rstrip()) > width:
            lines[-1:] = [lines[-1][:width], lines[-1][width:]]
    return [line.rstrip() for line in lines]


def _fit(rows: list, width: int) -> tuple[list, list]:
    """Column widths that fit ``width`` (two spaces of indent, two between columns): headers wrap
    first, then the widest column above its longest chunk gives way; where even the longest
    chunks do not fit, columns are left out from the right. Returns the widths and the kept
    columns' indices (``rows[0]`` is the header)."""
    natural = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    least = [max(len(c.strip()) for k, r in enumerate(rows) for c in _chunks(r[i], k == 0) or [""])
             for i in range(len(rows[0]))]
    if sum(natural) + 2 * len(natural) > width:
        natural = [max([least[i]] + [len(r[i]) for r in rows[1:]]) for i in range(len(rows[0]))]
    kept = list(range(len(natural)))
    while len(kept) > 1 and sum(least[i] for i in kept) + 2 * len(kept) > width:
        kept.pop()
    widths = [natural[i] for i in kept]
    floor = [least[i] if len(kept) > 1 else min(least[i], width - 2) for i in kept]
    while sum(widths) + 2 * len(widths) > width:
        room = [w - f for w, f in zip(widths, floor)]
        if max(room) <= 0:
            break
        widths[room.index(max(room))] -= 1
    return widths, kept


def render_text(tables: list, width: int) -> list[str]:
    """Tables as aligned plain-text lines no longer than ``width`` (the terminal's): long cells
    wrap between words and never inside a number or a header word; a table wider than the
    terminal even so leaves out columns from the right and says which."""
    lines = []
    for table in tables:
        title = f"{table.title}: {table.note}" if table.note else f"{table.title}:"
        lines += textwrap.wrap(title, width, subsequent_indent="  ", break_on_hyphens=False)
        if not table.rows:
            continue
        rows = [[_cell_text(c) for c in table.columns]] + [[_cell_text(c) for c in row] for row in table.rows]
        widths, kept = _fit(rows, width)
        for k, row in enumerate(rows):
            cells = [_wrap(row[i], w, header=k == 0) for i, w in zip(kept, widths)]
            for k in range(max(map(len, cells))):
                parts = [(cell[k] if k < len(cell) else "").ljust(w) for cell, w in zip(cells, widths)]
                lines.append(("  " + "  ".join(parts)).rstrip())
        if len(kept) < len(table.columns):
            left_out = ", ".join(_cell_text(table.columns[i]) for i in range(len(table.columns)) if i not in kept)
            lines += textwrap.wrap(f"(left out to fit {width} columns: {left_out}; a wider terminal or "
                                   "--conformance-report shows them)", width, initial_indent="  ",
                                   subsequent_indent="  ", break_on_hyphens=False)
    return lines


def baseline_lines(run: Run, baseline: Run) -> list[tuple]:
    """What a regression report judged against, as ``(text, tone)``: the baseline's file,
    implementation, versions, date and seed (tone ""), and warnings (tone "warn") where it
    measured something other than this run did (another loss, other benchmark shapes), which
    the gate cannot see."""
    env, old = run.environment, baseline.environment
    lines = [(f"baseline: {baseline.source or '(not from a file)'}: {old.get('implementation', '?')}, kit "
              f"{old.get('kit', '?')}, torch {old.get('torch', '?')}, created {old.get('created', '?')}, seed "
              f"{old.get('seed', '?')}", "")]
    if old.get("implementation") != env.get("implementation"):
        lines.append((f"warning: the baseline judged {old.get('implementation', '?')}, this run "
                      f"{env.get('implementation', '?')}: the regressions compare two different losses", "warn"))
    shapes, old_shapes = (sorted({f"{b.shape} {b.device}" for b in r.benchmarks}) for r in (run, baseline))
    if run.benchmarks and shapes != old_shapes:
        lines.append((f"warning: the benchmark shapes differ: this run {', '.join(shapes)}; the baseline "
                      f"{', '.join(old_shapes) or 'none'}; only the groups of both are compared", "warn"))
    return lines


def _environment(run: Run) -> list:
    env = run.environment
    counts = defaultdict(int)
    for c in run.checks:
        counts[c.status] += 1
    lines = [f"implementation: {env.get('implementation', '?')} (input {env.get('input_kind', '?')}, "
             f"target {env.get('target_kind', '?')})",
             f"torch {env.get('torch', '?')}, kit {env.get('kit', '?')}, devices {', '.join(env.get('devices', []))}, "
             f"seed {env.get('seed', '?')}, {env.get('threads', '?')} threads",
             "checks: " + (", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) or "none")]
    settings = env.get("machine", {}).get("environment")
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    return lines


def _measured(run: Run) -> str:
    """What a run without failures found: its checks pass, or, a benchmark-only run, how many
    groups it timed (a group that timed nothing is no pass)."""
    if any(c.feature != "benchmark" for c in run.checks):
        return "all checks pass or are declared"
    timed = sum(b.interval is not None for b in run.benchmarks)
    return (f"benchmarks only: {timed} of {len(run.benchmarks)} groups timed beside torch; "
            "no conformance checks in this run")


def _headline(run: Run, baseline: Optional[Run], found: list, timings: list) -> tuple:
    failed = sum(c.status == "failed" for c in run.checks)
    verdict = f"{failed} failing check{'s' * (failed != 1)}" if failed else _measured(run)
    untimed = any(b.interval is None for b in run.benchmarks)
    not_run = sum(c.status == Status.NOT_RUN for c in run.checks)
    if not_run:
        verdict += f", {not_run} not run (taken to hang, or too slow at their size)"
    if baseline is None:
        return verdict, "fail" if failed else "warn" if untimed else "ok"
    noisy = sum(t.verdict == paired.UNDECIDED for t in timings)
    verdict = (f"{noisy} timing{'s' * (noisy != 1)} too noisy to decide; " if noisy else "") + verdict
    if found:
        kinds = defaultdict(int)
        for r in found:
            kinds[r.kind] += 1
        detail = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        return f"{len(found)} regression{'s' * (len(found) != 1)} against the baseline ({detail}); {verdict}", "fail"
    return f"no regressions against the baseline; {verdict}", "fail" if failed else "warn" if noisy or untimed else "ok"


def _md_cell(cell: Cell) -> str:
    text = cell[0] if isinstance(cell, tuple) else cell
    return str(text).replace("|", "\\|").replace("\n", " / ")


def markdown_page(title: str, headline: str, lists: list, tables: list, *, figures: Optional[dict] = None) -> str:
    """A page in Markdown: the title, the headline, ``lists`` of ``(text, tone)`` lines (a toned
    line in bold), then each table under its title; ``figures`` maps a table's title to a figure
    (an image link) shown after it."""
    out = [f"# {title}", "", f"**{headline}**"]
    for lines in lists:
        out += [""] + [f"- **{text}**" if tone else f"- {text}" for text, tone in lines]
    for table in tables:
        out += ["", f"## {table.title}", ""] + ([table.note, ""] if table.note else [])
        if not table.rows:
            out.append("none")
            continue
        out.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
        out.append("|" + "---|" * len(table.columns))
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
        if figures and table.title in figures:
            out += ["", figures[table.title]]
    return "\n".join(out) + "\n"


def _markdown(run: Run, baseline: Optional[Run], found: list, timings: list, plot_name: Optional[str]) -> str:
    headline, _ = _headline(run, baseline, found, timings)
    tables = report_tables(run, found, timings)
    figures = {t.title: f"![implementation time over torch time]({plot_name})"
               for t in tables if t.title.startswith("Benchmarks")} if plot_name else None
    return markdown_page("Conformance report", headline, _lists(run, baseline), tables, figures=figures)


def _lists(run: Run, baseline: Optional[Run]) -> list:
    """What a report says before its tables: the run's environment, and what it was judged against."""
    return [[(line, "") for line in _environment(run)]] + ([baseline_lines(run, baseline)] if baseline else [])


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;white-space:pre-line}
th{background:#f0f0f0}td.ok{background:#dff3e4}td.warn{background:#fcefd2}td.fail{background:#f8d7d5;font-weight:bold}
td.muted{color:#888;background:#f7f7f7}p.note{color:#555;font-size:13px;margin:.2em 0}
.headline{padding:.6em 1em;font-size:16px;font-weight:bold;display:inline-block}
.headline.ok{background:#dff3e4}.headline.warn{background:#fcefd2}.headline.fail{background:#f8d7d5}ul{font-size:13px}
li.warn{background:#fcefd2;font-weight:bold}
summary{cursor:pointer;color:#245;margin:.3em 0}"""


LONG_TABLE = 25  # rows; a longer table starts folded in HTML, so the page opens on the verdict


def _html_cell(cell: Cell, tag: str = "td") -> str:
    text, tone = cell if isinstance(cell, tuple) else (cell, "")
    attr = f' class="{tone}"' if tone else ""
    return f"<{tag}{attr}>{html.escape(str(text))}</{tag}>"


def html_page(title: str, headline: str, tone: str, lists: list, tables: list, *,
              figures: Optional[dict] = None) -> str:
    """A self-contained HTML page: the title, the headline in its ``tone``, ``lists`` of
    ``(text, tone)`` lines, then each table under its title (folded when long); ``figures`` maps a
    table's title to a figure (inline SVG) shown before it."""
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
           f"<div class='headline {tone}'>{html.escape(headline)}</div>"]
    for lines in lists:
        out += ["<ul>"] + [_html_cell(line, "li") for line in lines] + ["</ul>"]
    for table in tables:
        out.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.note:
            out.append(f"<p class='note'>{html.escape(table.note)}</p>")
        if not table.rows:
            out.append("<p>none</p>")
            continue
        if figures and table.title in figures:
            out.append(figures[table.title])
        long = len(table.rows) > LONG_TABLE
        if long:
            out.append(f"<details><summary>all {len(table.rows)} rows</summary>")
        out.append("<table><tr>" + "".join(_html_cell(c, "th") for c in table.columns) + "</tr>")
        out += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows]
        out.append("</table></details>" if long else "</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html(run: Run, baseline: Optional[Run], found: list, timings: list) -> str:
    headline, tone = _headline(run, baseline, found, timings)
    tables = report_tables(run, found, timings)
    figures = {t.title: ratio_plot(run, baseline)
               for t in tables if t.title.startswith("Benchmarks")}
    return html_page("Conformance report", headline, tone, _lists(run, baseline), tables, figures=figures)


def render(run: Run, fmt: str, *, baseline: Optional[Run] = None, found: Optional[list] = None,
           timings: Optional[list] = None, plot_name: Optional[str] = None) -> str:
    """The report as ``md`` or ``html``; ``found`` are the regressions against ``baseline`` and
    ``timings`` its ``timing_comparisons`` (the verdict of each benchmark, too noisy ones included).

    Markdown links the plot as ``plot_name`` (an SVG file written beside it); HTML embeds it.
    """
    if fmt not in ("md", "html"):
        raise ValueError(f"fmt={fmt!r}: expected 'md' or 'html'")
    found, timings = found or [], timings or []
    return _markdown(run, baseline, found, timings, plot_name) if fmt == "md" else _html(run, baseline, found, timings)

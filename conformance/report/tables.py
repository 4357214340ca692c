"""Tables: what a report shows, described once as data (``Table``: a title, a note, columns and
rows of cells with their tone) and rendered to Markdown, HTML or the terminal (``rendering``)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .. import paired
from ..records import Gap, Status
from ..vocabulary import DTYPE_NAMES
from .baseline import NOT_TIMED, ratio_text
from .runfile import Benchmark, Run, Side

__all__ = ["Cell", "Table", "verdict_tables", "benchmark_summary", "report_tables", "ratio_tone", "label",
           "verdict_cell", "ratio_cell", "number", "cut"]

Cell = Union[str, tuple]  # text, or (text, tone) with tone ok, warn, fail or muted


@dataclass(frozen=True)
class Table:
    title: str
    note: str
    columns: list
    rows: list


def verdict_cell(checks: Sequence) -> Cell:
    """The verdict of a group of checks (a cell of a verdict matrix): ``pass N`` with what else
    they were, ``FAIL failed/run``, or ``unsupported`` / ``skipped`` where nothing ran."""
    counts = defaultdict(int)
    for c in checks:
        counts[c.status] += 1
    total = sum(counts.values())
    hung = f" · {counts['not run']} not run" if counts.get("not run") else ""
    if counts.get("failed"):
        return f"FAIL {counts['failed']}/{total}{hung}", "fail"
    if not counts.get("passed") and not counts.get("xfailed") and not counts.get("xpassed"):
        if hung:
            return f"{counts['not run']} not run", "fail"
        return ("unsupported" if counts.get("unsupported") else "skipped"), "muted"
    extras = [f"{counts[s]} {'declared' if s == 'xfailed' else s}"
              for s in ("not run", "xfailed", "xpassed", "unsupported", "skipped") if counts.get(s)]
    text = " · ".join([f"pass {counts.get('passed', 0)}"] + extras)
    return text, ("fail" if hung else "warn" if counts.get("xfailed") or counts.get("xpassed") else "ok")


def _column_order(column: tuple) -> tuple:
    dtype, device = column
    return (DTYPE_NAMES.index(dtype) if dtype in DTYPE_NAMES else len(DTYPE_NAMES), dtype, device)


def _matrix(run: Run) -> tuple[list, list, list, dict]:
    """Features, (dtype, device) columns and their headers, and the checks of each cell."""
    cells = defaultdict(list)
    for check in run.checks:
        cells[(check.feature, check.dtype, check.device)].append(check)
    features = sorted({k[0] for k in cells})
    columns = sorted({k[1:] for k in cells}, key=_column_order)
    headers = [" ".join(["any dtype" if d == "-" else d] + ([] if v == "-" else [v])) for d, v in columns]
    return features, columns, headers, cells


def _verdict_table(run: Run) -> Table:
    features, columns, headers, cells = _matrix(run)
    rows = []
    for feature in features:
        row = [feature]
        for column in columns:
            checks = cells.get((feature, *column), [])
            row.append(verdict_cell(checks) if checks else ("", "muted"))
        rows.append(row)
    return Table("Verdict", "Checks per feature, dtype and device; 'declared' counts documented deviations "
                 "(expected failures); 'not run', checks taken to hang after earlier runs of theirs ran past the "
                 "time limit, or too slow at their size after a smaller one did.", ["feature"] + headers, rows)


def ratio_cell(ratio: Optional[float]) -> Cell:
    if ratio is None:
        return ("", "muted")
    return (f"{ratio:.3g}", "fail" if ratio > 1 else "warn" if ratio > 0.5 else "ok")


def _accuracy_tables(run: Run) -> list:
    features, columns, headers, cells = _matrix(run)
    rows = []
    for feature in features:
        worst = [max((c.ratio for c in cells.get((feature, *column), []) if c.ratio is not None), default=None)
                 for column in columns]
        if any(w is not None for w in worst):
            rows.append([feature] + [ratio_cell(w) for w in worst])
    passes = [c for c in run.checks if c.status in ("passed", "xpassed") and c.ratio]
    closest = [[c.id, c.identity, number(c.error), number(c.bound), ratio_cell(c.ratio)]
               for c in sorted(passes, key=lambda c: -c.ratio)[:10]]
    return [Table("Accuracy", "The worst error as a fraction of its bound (1 = at the bound).", ["feature"] + headers,
                  rows),
            Table("Closest passes", "The passing checks nearest their bound.",
                  ["test", "identity", "error", "bound", "error/bound"], closest)]


def number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3g}"


def _problems_table(run: Run) -> Table:
    rows = [[c.id, (c.status, "fail" if c.status == "failed" else "muted"), "\n".join(c.reason.splitlines()[:3])]
            for c in run.checks if c.status in ("failed", "xpassed")]
    return Table("Failures", "The first lines of each message; the run file holds all of it, with the snippet that "
                 "reproduces the case.", ["test", "status", "message"], rows)


def ratio_tone(ratio: Optional[float]) -> str:
    """How a time over torch's reads: about torch's (ok), up to 25 % slower (warn), slower (fail)."""
    return "muted" if ratio is None else "ok" if ratio <= 1.05 else "warn" if ratio <= 1.25 else "fail"


def _ms(side: Side) -> str:
    return "" if side.median is None else f"{side.median * 1e3:.4g}"


def _interval_cell(b: Benchmark) -> Cell:
    """The 95 % interval and its half width; warn where it is wider than the precision asked for."""
    interval = b.interval
    if interval is None:
        return ("", "muted")
    if interval.low is None:
        return (f"none ({interval.pairs} pairs)", "warn")
    precise = b.precision is None or interval.half_width <= b.precision
    return (f"{interval.low:.2f}-{interval.high:.2f} (+-{100 * interval.half_width:.1f}%)", "ok" if precise else "warn")


VERDICT_TONES = {paired.SLOWER: "fail", paired.NOT_SLOWER: "ok", paired.UNDECIDED: "warn"}


_TIMING_COLUMNS = ["torch ms", "impl ms", "impl/torch", "95% interval", "pairs"]
_AGAINST_COLUMNS = ["baseline impl/torch", "against baseline"]


def _timing_cells(b: Benchmark, against: dict) -> list:
    """How fast a benchmark ran: each side's median round, the ratio with its interval and pairs,
    and, where ``against`` (its timing comparisons by id) is not empty, its verdict against the
    baseline. A benchmark that timed nothing says so, in the colour of a failure."""
    ratio = b.ratio_to_torch
    cells = [_ms(b.torch), _ms(b.impl), (NOT_TIMED, "fail") if ratio is None else (f"{ratio:.2f}x", ratio_tone(ratio)),
             _interval_cell(b), str(b.pairs)]
    if against:
        t = against.get(b.id)
        cells += [("", "muted"), ("", "muted")] if t is None else [ratio_text(t.before),
                                                                   (t.verdict, VERDICT_TONES[t.verdict])]
    return cells


def benchmark_summary(run: Run, timings: list) -> Table:
    """The terminal's view of the benchmarks: per group, the implementation's time beside torch's,
    the ratio with its interval, and (``timings``: against a baseline) the gate's verdict."""
    against = {t.after.id: t for t in timings}
    rows = [[label(b)] + _timing_cells(b, against) for b in run.benchmarks]
    return Table("Speed beside torch", "median round of each side; impl/torch is the median of the paired ratios "
                 "with its 95% interval (below 1: faster than torch)",
                 ["benchmark"] + _TIMING_COLUMNS + _AGAINST_COLUMNS * bool(against), rows)


def label(b: Benchmark) -> str:
    return f"{b.op} {b.dtype} {b.shape} {b.device}"


def _benchmark_table(run: Run, timings: list) -> Table:
    against = {t.after.id: t for t in timings}
    linear = any(b.logits_bytes is not None for b in run.benchmarks)
    rows = []
    for b in run.benchmarks:
        row = [b.op, b.dtype, b.shape, b.device] + _timing_cells(b, against)
        for side in (b.impl, b.torch):
            row.append("" if side.bytes_per_second is None else
                       f"{side.bytes_per_second / 1e9:.3g} ({side.roofline_percent:.0f}%)")
        for side in (b.impl, b.torch):
            row.append("" if side.peak_extra_bytes is None else f"{side.peak_extra_bytes / 2**20:.0f}")
        if linear:
            row.append("" if b.logits_bytes is None else f"{b.logits_bytes / 2**20:.0f}")
        rows.append(row)
    columns = ["op", "dtype", "shape", "device"] + _TIMING_COLUMNS + _AGAINST_COLUMNS * bool(against)
    columns += ["impl GB/s (roofline)", "torch GB/s (roofline)", "impl extra MiB", "torch extra MiB"]
    columns += ["logits MiB"] * linear
    copy = sorted({f"{b.device} {b.copy_bytes_per_second / 1e9:.3g} GB/s" for b in run.benchmarks
                   if b.copy_bytes_per_second})
    asked = sorted({f"+-{100 * b.precision:g}%" for b in run.benchmarks if b.precision is not None})
    return Table("Benchmarks beside torch", "The two sides timed in alternating rounds on the same inputs; times are "
                 "each side's median round; impl/torch is the median of the paired ratios, with its 95% interval "
                 f"(marked where wider than the {', '.join(asked) or 'precision'} asked for). Against the baseline, a "
                 "timing is slower only when its interval's lower end over the baseline's upper end exceeds the "
                 "allowed slowdown, and too noisy to decide when the intervals neither show that nor rule it out. "
                 "Bytes per second count the logits read once and the gradient written once, against the copy "
                 "bandwidth measured in the same run (" + ", ".join(copy) + "); extra memory is the peak beyond the "
                 "inputs" + ("; a linear loss's bytes count its hidden states and weight instead, and logits MiB is "
                             "what the composition materialises, the memory a fused linear loss exists to save"
                             if linear else "") + ".", columns, rows)


def _regression_tables(found: list) -> list:
    groups = defaultdict(list)
    for r in found:
        groups[(r.kind, r.feature)].append(r.dtype)
    summary = [[(kind, "fail"), feature, str(len(dtypes)), ", ".join(sorted(set(dtypes)))]
               for (kind, feature), dtypes in groups.items()]
    # no rows without regressions: ``_shown`` drops both tables
    return [Table("Regressions against the baseline", "", ["kind", "feature", "checks", "dtypes"], summary),
            Table("Each regression", "", ["kind", "test", "baseline", "this run"],
                  [[(r.kind, "fail"), r.id, r.before, r.after] for r in found])]


def cut(text: str, length: int) -> str:
    """``text`` in at most ``length`` characters, an ellipsis saying where it was cut."""
    return text if len(text) <= length else text[:length - 1] + "…"


def _failures_by_identity(run: Run) -> Table:
    """Failing checks grouped by the identity that failed, with the first one's message."""
    groups = defaultdict(list)
    for c in run.checks:
        if c.status == "failed":
            groups[c.identity or cut((c.reason.splitlines() or ["?"])[0], 60)].append(c)
    rows = [[identity, str(len(checks)), checks[0].id, "\n".join(checks[0].reason.splitlines()[:2])]
            for identity, checks in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return Table("Failures by identity", "", ["identity", "checks", "first", "message"], rows)


def _gaps_table(run: Run) -> Table:
    """Features reported as unsupported: declared by the implementation, variants beyond torch's
    loss it does not take, or probed (an optional transform raised while the check ran), with the
    first reason."""
    gaps = {}
    for c in run.checks:
        if c.status == Status.UNSUPPORTED:
            gap = c.gap or Gap("declared", ("(not recorded in this run file)",), c.reason)
            count, reason = gaps.get((gap.how, ", ".join(gap.features)), (0, gap.reason))
            gaps[(gap.how, ", ".join(gap.features))] = (count + 1, reason)
    rows = [[how, feature, str(count), cut(reason, 160) if how == "probed" else ""]
            for (how, feature), (count, reason) in sorted(gaps.items())]
    return Table("Unsupported features", "Declared in the implementation's `unsupported`, not taken (variants beyond "
                 "torch's loss it has no option for), or probed: an optional transform raised "
                 "(--conformance-require FEATURE makes a probed gap fail).",
                 ["how", "feature", "checks", "first reason"], rows)


def _span(values: list) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def _kib(count: int) -> str:
    return f"{count / 1024:.1f} KiB"


def _collectives_table(run: Run) -> Table:
    """Per implementation and world size, the collectives of one call in forward and in backward
    over its vocab-parallel checks: the fewest to the most, and the most bytes handed to them."""
    groups = defaultdict(list)
    for c in run.checks:
        if c.collectives:
            groups[(c.implementation, c.collectives["world_size"])].append(c.collectives)
    rows = [[impl, str(world_size), str(len(found))]
            + [text for phase in ("forward", "backward")
               for text in (_span([f[phase][0] for f in found]), _kib(max(f[phase][1] for f in found)))]
            for (impl, world_size), found in sorted(groups.items())]
    return Table("Collectives per call", "Rank 0's, in one forward and one backward of each vocab-parallel check "
                 "(torch's own test of loss_parallel expects 3 all-reduces in forward and none in backward).",
                 ["implementation", "ranks", "checks", "forward", "forward bytes (most)", "backward",
                  "backward bytes (most)"], rows)


def _bytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if abs(count) >= 2**20 else f"{count} B"


def _memory_table(run: Run, *, terminal: bool = False) -> Table:
    """The memory checks' measurements: a linear loss's peak in forward and backward beside its
    logits' size, and what repeated calls of each loss left allocated, each with its limit; on the
    ``terminal``, the repeated-call checks that left nothing are counted in the note, not listed."""
    rows, clean = [], 0
    for c in run.checks:
        m = c.memory
        if not m:
            continue
        if terminal and m["measure"] == "growth" and c.status != "failed":
            clean += 1
            continue
        what = "peak" if m["measure"] == "peak" else "left"
        limit = f"< {_bytes(m['limit'])}" if m["limit"] is not None else "not judged"
        logits = "" if m["logits_bytes"] is None else f" (logits {_bytes(m['logits_bytes'])})"
        tone = "fail" if c.status == "failed" else "ok"
        rows.append([c.id.rpartition("::")[2], (f"{what} {_bytes(m['bytes'])}", tone), limit + logits])
    note = ("bytes beyond the inputs (cpu: the autograd profiler's record of every allocation): the peak of a linear "
            "loss declaring memory = 'chunked', below its N x V logits; what repeated identical calls left "
            "allocated, nothing" + (f" ({clean} checks left nothing)" if clean else "") + ".")
    return Table("Memory", note, ["test", "measured", "limit"], rows)


GRADE_WORST = 5


def _grade(run: Run) -> Optional[Table]:
    """How many checks meet the ``exact`` (shift-invariant) bound, and the worst that do not;
    ``None`` when the run graded nothing (benchmarks only)."""
    graded = [c for c in run.checks if c.exact_ratio is not None and c.status in ("passed", "xpassed", "failed")]
    if not graded:
        return None
    meeting = sum(c.exact_ratio <= 1 for c in graded)
    worst = sorted((c for c in graded if c.exact_ratio > 1), key=lambda c: -c.exact_ratio)[:GRADE_WORST]
    rows = [[c.id, c.exact_identity, c.exact_worst, f"{c.exact_ratio:.3g}",
             "fused lse - z_y" if c.status != "failed" else "failed"] for c in worst]
    return Table("Accuracy grade", f"{meeting} of {len(graded)} checks meet the exact (shift-invariant) bound; "
                 "the grade never fails a run under the standard contract.",
                 ["test", "identity", "worst element", "error/exact bound", "within"], rows)


def _design_table(run: Run) -> Optional[Table]:
    """The covering designs the run drew its design-driven cases from (conformance.design)."""
    design = run.environment.get("design") or {}
    if not design.get("families"):
        return None
    t = design["strength"]
    combos = "pairs" if t == 2 else f"{t}-tuples"
    rows = [[family, str(d["factors"]), str(d["cases"]), (f"{d['covered']} of {d['required']} {combos}",
                                                          "ok" if d["covered"] == d["required"] else "fail")]
            for family, d in design["families"].items()]
    return Table("Covering design", f"strength {t}, seed {design['seed']}: every combination of levels of any {t} "
                 "factors meets in at least one case (--conformance-deep: strength 3)",
                 ["family", "factors", "cases", "covered"], rows)


def _shown(tables: list) -> list:
    """The tables with something to say: rows, or the grade's count (its rows are only the checks
    that miss the exact bound; ``_grade`` is None when nothing was graded)."""
    return [t for t in tables if t is not None and (t.rows or t.title == "Accuracy grade")]


def report_tables(run: Run, found: list, timings: list) -> list:
    """Every table of a report file, in order (the terminal shows fewer: ``verdict_tables``)."""
    tables = [_verdict_table(run)] + _shown(_regression_tables(found) + _accuracy_tables(run) + [
        _failures_by_identity(run), _problems_table(run), _gaps_table(run), _collectives_table(run),
        _memory_table(run), _grade(run), _design_table(run)])
    if run.benchmarks:
        tables.append(_benchmark_table(run, timings))
    return tables


def verdict_tables(run: Run, found: Sequence = (), timings: Sequence = ()) -> list:
    """What the terminal shows at the end of a run: the verdict matrix, the regressions against a
    baseline (``found``), the failures by identity, the unsupported features, the collectives, the
    memory checks' measurements, the accuracy grade, the closest passes and the speed beside torch
    (with ``timings``, the gate's verdict of each benchmark)."""
    closest = _accuracy_tables(run)[1]
    closest = Table(closest.title, closest.note, closest.columns, closest.rows[:3])
    return [_verdict_table(run)] + _shown(_regression_tables(list(found)) + [
        _failures_by_identity(run), _gaps_table(run), _collectives_table(run), _memory_table(run, terminal=True),
        _grade(run), _design_table(run), closest, benchmark_summary(run, list(timings))])

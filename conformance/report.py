"""Results as data first: a run's checks and benchmarks as JSON, the regressions against a
baseline run, and both rendered as Markdown or as one self-contained HTML page.

A run file is what ``--conformance-report=PATH.json`` writes; benchmarks come embedded in it
(when the run benchmarked) or from pytest-benchmark's ``--benchmark-json`` file. A timing is
compared with the baseline's through the two ratios' intervals (``paired.compare``): slower,
not slower, or too noisy to decide; only slower is a regression.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from . import paired
from .records import STATUSES, Check, Gap, ReportError, Status

__all__ = ["SCHEMA", "STATUSES", "ACCURACY_FLOOR", "ACCURACY_FACTOR", "SLOWDOWN", "ReportError", "Check", "Side",
           "Benchmark", "Run", "Regression", "TimingComparison", "save", "load", "load_benchmarks", "writable",
           "regressions", "timing_comparisons", "ratio_text", "ratio_plot", "render", "verdict_tables",
           "baseline_lines", "benchmark_summary", "render_text"]

# 2: one benchmark per group, both sides timed in paired rounds, the ratio with its interval.
SCHEMA = "ce-conformance-run/2"

# A check whose error stays under a tenth of its bound is not an accuracy regression however far
# it moved: the bound, not the last run, is the contract, and tiny errors move with the data.
ACCURACY_FLOOR = 0.1
# The regression rule's defaults: an error/bound grown by more than ACCURACY_FACTOR, a timing more
# than SLOWDOWN (a fraction) slower relative to torch (``regressions``).
ACCURACY_FACTOR = 2.0
SLOWDOWN = 0.25


@dataclass(frozen=True)
class Side:
    """One side's rounds of a benchmark (the implementation's or torch's): times in seconds, the
    rate from the median round, the extra memory of the warm-up call."""

    median: Optional[float] = None
    min: Optional[float] = None
    bytes_per_second: Optional[float] = None
    roofline_percent: Optional[float] = None
    peak_extra_bytes: Optional[int] = None


@dataclass(frozen=True)
class Benchmark:
    """One group: the implementation and torch timed in ``pairs`` alternating rounds.
    ``ratio_to_torch`` is the median of the paired ratios, ``ratio_low`` to ``ratio_high`` its
    95 % interval (``conformance.paired``); the rounds went on until the interval was within
    ``precision`` of the ratio or the time budget was spent."""

    id: str
    group: str
    implementation: str
    op: str
    dtype: str
    device: str
    shape: str
    pairs: int = 0
    ratio_to_torch: Optional[float] = None
    ratio_low: Optional[float] = None
    ratio_high: Optional[float] = None
    precision: Optional[float] = None
    traffic_bytes: Optional[int] = None
    logits_bytes: Optional[int] = None   # linear losses: the N x V logits the composition materialises
    copy_bytes_per_second: Optional[float] = None
    impl: Side = Side()
    torch: Side = Side()

    @property
    def interval(self) -> Optional[paired.RatioInterval]:
        """The ratio and its interval; ``None`` for a run that timed nothing (``--benchmark-disable``)."""
        if self.ratio_to_torch is None:
            return None
        return paired.RatioInterval(self.ratio_to_torch, self.ratio_low, self.ratio_high, self.pairs)

    @classmethod
    def from_dict(cls, data: dict) -> "Benchmark":
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in names}
            values.update({side: Side(**values[side]) for side in ("impl", "torch") if side in values})
            return cls(**values)
        except TypeError as exc:
            raise ReportError(f"benchmark {data.get('id', '?')!r}: {exc}") from None


@dataclass(frozen=True)
class Run:
    """Everything one run found, and where it ran."""

    environment: dict
    checks: list = field(default_factory=list)
    benchmarks: list = field(default_factory=list)
    source: str = field(default="", compare=False)   # the file it was loaded from, to name a baseline

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "environment": self.environment, "checks": [c.to_json() for c in self.checks],
                "benchmarks": [dataclasses.asdict(b) for b in self.benchmarks]}

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReportError(f"not a conformance run (schema {SCHEMA!r} expected, "
                              f"found {data.get('schema') if isinstance(data, dict) else type(data).__name__!r})")
        checks = [Check.from_json(c) for c in data["checks"]]
        return cls(environment=data.get("environment", {}), checks=checks,
                   benchmarks=[Benchmark.from_dict(b) for b in data.get("benchmarks", [])])


def save(run: Run, path: Union[str, Path]) -> None:
    Path(path).write_text(json.dumps(run.to_json(), indent=1) + "\n")


def _read_json(path: Union[str, Path]):
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None


def load(path: Union[str, Path]) -> Run:
    """Read a run file written by ``--conformance-report``."""
    data = _read_json(path)   # its errors name the file already
    try:
        return dataclasses.replace(Run.from_json(data), source=str(path))
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def writable(path: Union[str, Path]) -> Path:
    """``path``, checked before a run spends its time: its folder is created if missing (as
    ``--junitxml`` does) and must accept a file there; ``ReportError`` names the path otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{path}: cannot create its folder {path.parent} ({exc.strerror})") from None
    if path.is_dir():
        raise ReportError(f"{path}: is a folder, not a file")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ReportError(f"{path}: not writable")
    return path


def load_benchmarks(path: Union[str, Path]) -> list:
    """The kit's benchmarks from a pytest-benchmark JSON file (``--benchmark-json``, autosave)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return [Benchmark.from_dict(dict(b["extra_info"], id=b["fullname"], group=b["group"]))
            for b in data["benchmarks"] if "implementation" in b.get("extra_info", {})]


# ---------------------------------------------------------------------------------------------
# Regressions against a baseline


@dataclass(frozen=True)
class Regression:
    """Something a baseline run did better: ``kind`` is newly failing, less accurate or slower."""

    kind: str
    id: str
    feature: str
    dtype: str
    before: str
    after: str


def _key(test_id: str) -> str:
    """A test id without its file's path, which depends on where pytest was started (the kit's
    test names are unique across its modules)."""
    return test_id.partition("::")[2] or test_id


@dataclass(frozen=True)
class TimingComparison:
    """A benchmark of both runs and what their intervals say (``paired.compare``): ``verdict`` is
    ``paired.SLOWER``, ``paired.NOT_SLOWER`` or ``paired.UNDECIDED`` (too noisy to decide)."""

    before: Benchmark
    after: Benchmark
    verdict: str


def _timed(run: Run) -> dict:
    """The benchmarks of ``run`` that timed something, by ``_key`` of their id."""
    return {_key(b.id): b for b in run.benchmarks if b.interval is not None}


def timing_comparisons(run: Run, baseline: Run, *, slowdown: float = SLOWDOWN) -> list:
    """Each benchmark timed in both runs, judged on the implementation's time over torch's in
    the same run (which does not depend on the machine's speed) with ``slowdown`` (a fraction)
    allowed."""
    if not slowdown >= 0:
        raise ValueError(f"slowdown={slowdown!r}: must be >= 0")
    before = _timed(baseline)
    return [TimingComparison(old, new, paired.compare(new.interval, old.interval, slowdown))
            for new in run.benchmarks if new.interval is not None and (old := before.get(_key(new.id))) is not None]


NOT_TIMED = "not timed (0 pairs)"   # a benchmark under --benchmark-disable: never a pass


def ratio_text(b: Benchmark) -> str:
    """``1.23x torch [1.20, 1.26]``: the ratio and its interval."""
    if b.ratio_to_torch is None:
        return NOT_TIMED
    if b.ratio_low is None or b.ratio_high is None:
        return f"{b.ratio_to_torch:.2f}x torch (no interval: {b.pairs} pairs)"
    return f"{b.ratio_to_torch:.2f}x torch [{b.ratio_low:.2f}, {b.ratio_high:.2f}]"


def regressions(run: Run, baseline: Run, *, accuracy_factor: float = ACCURACY_FACTOR,
                slowdown: float = SLOWDOWN) -> list:
    """Checks that newly fail (a declared failure, xfailed, was failing already), errors that
    grew by more than ``accuracy_factor`` (and exceed ``ACCURACY_FLOOR`` of their bound), timings
    that ``timing_comparisons`` finds slower than in ``baseline``, and benchmarks that ran without
    timing anything (``--benchmark-disable``) where the baseline timed them: a benchmark with no
    pairs never passes the gate.
    """
    if not accuracy_factor >= 1:
        raise ValueError(f"accuracy_factor={accuracy_factor!r}: must be >= 1")
    timings = timing_comparisons(run, baseline, slowdown=slowdown)
    found = []
    before = {_key(c.id): c for c in baseline.checks}
    for check in run.checks:
        old = before.get(_key(check.id))
        if check.status == "failed" and (old is None or old.status not in ("failed", "xfailed")):
            found.append(Regression("newly failing", check.id, check.feature, check.dtype,
                                    old.status if old else "absent", "failed"))
        elif (old is not None and check.ratio is not None and old.ratio is not None and math.isfinite(check.ratio)
              and check.ratio > ACCURACY_FLOOR and check.ratio > accuracy_factor * old.ratio):
            found.append(Regression("less accurate", check.id, check.feature, check.dtype,
                                    f"error/bound {old.ratio:.3g}", f"error/bound {check.ratio:.3g}"))
    found += [Regression("slower", t.after.id, "benchmark", t.after.dtype, ratio_text(t.before), ratio_text(t.after))
              for t in timings if t.verdict == paired.SLOWER]
    timed_before = _timed(baseline)
    found += [Regression("not timed", b.id, "benchmark", b.dtype, ratio_text(timed_before[_key(b.id)]), NOT_TIMED)
              for b in run.benchmarks if b.interval is None and _key(b.id) in timed_before]
    return found


# ---------------------------------------------------------------------------------------------
# Tables: one description, rendered to Markdown or HTML

Cell = Union[str, tuple]  # text, or (text, tone) with tone ok, warn, fail or muted


@dataclass(frozen=True)
class Table:
    title: str
    note: str
    columns: list
    rows: list


def _verdict(counts: dict) -> tuple:
    total = sum(counts.values())
    hung = f" · {counts['not run']} not run" if counts.get("not run") else ""
    if counts.get("failed"):
        return f"FAIL {counts['failed']}/{total}{hung}", "fail"
    if not counts.get("passed") and not counts.get("xfailed") and not counts.get("xpassed"):
        if hung:
            return f"{counts['not run']} not run", "fail"
        return ("unsupported" if counts.get("unsupported") else "skipped"), "muted"
    extras = [f"{counts[s]} {'declared' if s == 'xfailed' else s}" for s in ("not run", "xfailed", "xpassed",
                                                                              "unsupported", "skipped") if counts.get(s)]
    text = " · ".join([f"pass {counts.get('passed', 0)}"] + extras)
    return text, ("fail" if hung else "warn" if counts.get("xfailed") or counts.get("xpassed") else "ok")


DTYPE_ORDER = ("float64", "float32", "float16", "bfloat16")


def _column_order(column: tuple) -> tuple:
    dtype, device = column
    return (DTYPE_ORDER.index(dtype) if dtype in DTYPE_ORDER else len(DTYPE_ORDER), dtype, device)


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
            counts = defaultdict(int)
            for c in checks:
                counts[c.status] += 1
            row.append(_verdict(counts) if checks else ("", "muted"))
        rows.append(row)
    return Table("Verdict", "Checks per feature, dtype and device; 'declared' counts documented deviations "
                 "(expected failures); 'not run', checks taken to hang after earlier runs of theirs ran past the "
                 "time limit.", ["feature"] + headers, rows)


def _ratio_cell(ratio: Optional[float]) -> Cell:
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
            rows.append([feature] + [_ratio_cell(w) for w in worst])
    passes = [c for c in run.checks if c.status in ("passed", "xpassed") and c.ratio]
    closest = [[c.id, c.identity, _format(c.error), _format(c.bound), _ratio_cell(c.ratio)]
               for c in sorted(passes, key=lambda c: -c.ratio)[:10]]
    return [Table("Accuracy", "The worst error as a fraction of its bound (1 = at the bound).", ["feature"] + headers,
                  rows),
            Table("Closest passes", "The passing checks nearest their bound.",
                  ["test", "identity", "error", "bound", "error/bound"], closest)]


def _format(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3g}"


def _problems_table(run: Run) -> Table:
    rows = [[c.id, (c.status, "fail" if c.status == "failed" else "muted"), "\n".join(c.reason.splitlines()[:3])]
            for c in run.checks if c.status in ("failed", "xpassed")]
    return Table("Failures", "The first lines of each message; the run file holds all of it, with the snippet that "
                 "reproduces the case.", ["test", "status", "message"], rows)


def _ratio_tone(ratio: Optional[float]) -> str:
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
    cells = [_ms(b.torch), _ms(b.impl), (NOT_TIMED, "fail") if ratio is None else (f"{ratio:.2f}x", _ratio_tone(ratio)),
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
    rows = [[_label(b)] + _timing_cells(b, against) for b in run.benchmarks]
    return Table("Speed beside torch", "median round of each side; impl/torch is the median of the paired ratios "
                 "with its 95% interval (below 1: faster than torch)",
                 ["benchmark"] + _TIMING_COLUMNS + _AGAINST_COLUMNS * bool(against), rows)


def _label(b: Benchmark) -> str:
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


# ---------------------------------------------------------------------------------------------
# The plot: the implementation's time over torch's, one bar per group, as inline SVG


TONE_COLOURS = {"ok": "#3a9a5b", "warn": "#d99a1e", "fail": "#c8423b"}


def ratio_plot(benchmarks: list, baseline: Optional[list] = None) -> str:
    """A horizontal bar per benchmark group (impl/torch) with its 95 % interval as an error bar,
    a line at 1, baseline ratios as ticks."""
    old = {_key(b.id): b.ratio_to_torch for b in baseline or [] if b.ratio_to_torch is not None}
    bars = [b for b in benchmarks if b.ratio_to_torch is not None]
    if not bars:
        return ""
    label_w, bar_w, row_h, top = 300, 420, 24, 30
    ends = [b.ratio_high if b.ratio_high is not None else b.ratio_to_torch for b in bars]
    xmax = max([2.0] + [1.1 * r for r in ends] + [1.1 * old[_key(b.id)] for b in bars if _key(b.id) in old])
    x = lambda ratio: label_w + bar_w * ratio / xmax  # noqa: E731
    height = top + row_h * len(bars) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{height}" '
             f'font-family="sans-serif" font-size="12" role="img" aria-label="implementation time over torch time">',
             f'<text x="{label_w}" y="16" font-weight="bold">implementation time / torch time '
             f'(shorter is faster; error bars: 95% interval{"; ticks: baseline" if old else ""})</text>']
    step = 0.5 if xmax <= 4 else math.ceil(xmax / 8)
    for i in range(int(xmax / step) + 1):
        tick = i * step
        parts.append(f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" y2="{height - 26}" stroke="#ddd"/>'
                     f'<text x="{x(tick):.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{tick:g}</text>')
    for i, (b, end) in enumerate(zip(bars, ends)):
        y, ratio, mid = top + i * row_h, b.ratio_to_torch, top + i * row_h + row_h / 2
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{html.escape(_label(b))}</text>'
                     f'<rect x="{label_w}" y="{y + 4}" width="{x(ratio) - label_w:.1f}" height="{row_h - 8}" '
                     f'fill="{TONE_COLOURS[_ratio_tone(ratio)]}"/>'
                     f'<text x="{x(end) + 4:.1f}" y="{y + 15}">{ratio:.2f}x</text>')
        if b.ratio_low is not None and b.ratio_high is not None:
            low, high = x(b.ratio_low), x(b.ratio_high)
            parts.append(f'<path d="M{low:.1f} {mid - 4}V{mid + 4}M{low:.1f} {mid}H{high:.1f}M{high:.1f} {mid - 4}'
                         f'V{mid + 4}" stroke="#222" fill="none"/>')
        if _key(b.id) in old:
            before = x(old[_key(b.id)])
            parts.append(f'<line x1="{before:.1f}" y1="{y + 1}" x2="{before:.1f}" y2="{y + row_h - 1}" '
                         f'stroke="#000" stroke-width="2"/>')
    parts.append(f'<line x1="{x(1):.1f}" y1="{top - 4}" x2="{x(1):.1f}" y2="{height - 26}" stroke="#333" '
                 f'stroke-dasharray="4 3"/></svg>')
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Rendering


def _cut(text: str, length: int) -> str:
    """``text`` in at most ``length`` characters, an ellipsis saying where it was cut."""
    return text if len(text) <= length else text[:length - 1] + "…"


def _failures_by_identity(run: Run) -> Table:
    """Failing checks grouped by the identity that failed, with the first one's message."""
    groups = defaultdict(list)
    for c in run.checks:
        if c.status == "failed":
            groups[c.identity or _cut((c.reason.splitlines() or ["?"])[0], 60)].append(c)
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
    rows = [[how, feature, str(count), _cut(reason, 160) if how == "probed" else ""]
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


def _shown(tables: list) -> list:
    """The tables with something to say: rows, or the grade's count (its rows are only the checks
    that miss the exact bound; ``_grade`` is None when nothing was graded)."""
    return [t for t in tables if t is not None and (t.rows or t.title == "Accuracy grade")]


def _tables(run: Run, found: list, timings: list) -> list:
    tables = [_verdict_table(run)] + _shown(_regression_tables(found) + _accuracy_tables(run) + [
        _failures_by_identity(run), _problems_table(run), _gaps_table(run), _collectives_table(run), _grade(run)])
    if run.benchmarks:
        tables.append(_benchmark_table(run, timings))
    return tables


def verdict_tables(run: Run, found: Sequence = (), timings: Sequence = ()) -> list:
    """What the terminal shows at the end of a run: the verdict matrix, the regressions against a
    baseline (``found``), the failures by identity, the unsupported features, the collectives, the
    accuracy grade, the closest passes and the speed beside torch (with ``timings``, the gate's
    verdict of each benchmark)."""
    closest = _accuracy_tables(run)[1]
    closest = Table(closest.title, closest.note, closest.columns, closest.rows[:3])
    return [_verdict_table(run)] + _shown(_regression_tables(list(found)) + [
        _failures_by_identity(run), _gaps_table(run), _collectives_table(run), _grade(run), closest,
        benchmark_summary(run, list(timings))])


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
        verdict += f", {not_run} not run (taken to hang)"
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


def _markdown(run: Run, baseline: Optional[Run], found: list, timings: list, plot_name: Optional[str]) -> str:
    headline, _ = _headline(run, baseline, found, timings)
    out = ["# Conformance report", "", f"**{headline}**", ""] + [f"- {line}" for line in _environment(run)]
    if baseline is not None:
        out += [""] + [f"- **{text}**" if tone else f"- {text}" for text, tone in baseline_lines(run, baseline)]
    for table in _tables(run, found, timings):
        out += ["", f"## {table.title}", ""] + ([table.note, ""] if table.note else [])
        if not table.rows:
            out.append("none")
            continue
        out.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
        out.append("|" + "---|" * len(table.columns))
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
        if table.title.startswith("Benchmarks") and plot_name:
            out += ["", f"![implementation time over torch time]({plot_name})"]
    return "\n".join(out) + "\n"


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


def _html(run: Run, baseline: Optional[Run], found: list, timings: list) -> str:
    headline, tone = _headline(run, baseline, found, timings)
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Conformance report</title>",
           f"<style>{_CSS}</style></head><body><h1>Conformance report</h1>",
           f"<div class='headline {tone}'>{html.escape(headline)}</div><ul>"]
    out += [f"<li>{html.escape(line)}</li>" for line in _environment(run)] + ["</ul>"]
    if baseline is not None:
        out += ["<ul>"] + [_html_cell(line, "li") for line in baseline_lines(run, baseline)] + ["</ul>"]
    for table in _tables(run, found, timings):
        out.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.note:
            out.append(f"<p class='note'>{html.escape(table.note)}</p>")
        if not table.rows:
            out.append("<p>none</p>")
            continue
        if table.title.startswith("Benchmarks"):
            out.append(ratio_plot(run.benchmarks, baseline.benchmarks if baseline else None))
        long = len(table.rows) > LONG_TABLE
        if long:
            out.append(f"<details><summary>all {len(table.rows)} rows</summary>")
        out.append("<table><tr>" + "".join(_html_cell(c, "th") for c in table.columns) + "</tr>")
        out += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows]
        out.append("</table></details>" if long else "</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


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

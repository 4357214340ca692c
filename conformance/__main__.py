"""``python -m conformance report RUN.json [--baseline OLD.json] [--benchmarks BENCH.json] --format md|html -o OUT``
and ``python -m conformance matrix [--catalogue DIR] [-o PAGE.md|.html] [--only NAME ...] [--row-timeout S]``.

Renders a run (``--conformance-report``) and, with a baseline run, its regressions. The exit
status gates CI: 0 when there are no regressions, 1 when there are, 2 when the report could not
be made (an unreadable input, an unwritable output, bad arguments), so that a gate never takes a
broken job for a regression. OUT's folder is created if missing. A timing whose interval cannot
tell a slowdown from noise is reported as too noisy to decide, and does not fail the gate.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Optional

from . import matrix, paired, report
from .report.matrix import BROKEN, failing, render_matrix

__all__ = ["main"]


def _number_at_least(minimum: float, hint: str = "") -> Callable[[str], float]:
    """An argparse type: a number no smaller than ``minimum`` (NaN and words refused)."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number >= minimum:
            raise argparse.ArgumentTypeError(f"{value!r}: expected a number >= {minimum:g}{hint}")
        return number
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conformance", description="The conformance kit's tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("report", help="render a run, and its regressions against a baseline run",
                              description=__doc__.split("\n\n", 1)[1])
    cmd.add_argument("run", type=Path, metavar="RUN.json", help="written by pytest --conformance-report=RUN.json")
    cmd.add_argument("--baseline", type=Path, metavar="OLD.json", help="an earlier run to find regressions against")
    cmd.add_argument("--benchmarks", type=Path, metavar="BENCH.json",
                     help="pytest-benchmark JSON (--benchmark-json) with this run's timings, "
                          "instead of those embedded in RUN.json")
    cmd.add_argument("--baseline-benchmarks", type=Path, metavar="OLD_BENCH.json",
                     help="pytest-benchmark JSON with the baseline's timings")
    cmd.add_argument("--format", choices=("md", "html"), default=None,
                     help="default: html when OUT ends in .html, else md")
    cmd.add_argument("-o", "--output", type=Path, metavar="OUT", help="default: standard output")
    cmd.add_argument("--max-accuracy-loss", type=_number_at_least(1), default=report.ACCURACY_FACTOR, metavar="FACTOR",
                     help=f"a check whose error/bound grew by more than FACTOR regressed (default "
                          f"{report.ACCURACY_FACTOR:g}; errors under "
                          f"{report.ACCURACY_FLOOR:g} of their bound never count)")
    cmd.add_argument("--max-slowdown", type=_number_at_least(0, " (0.25 means 25% slower)"), default=report.SLOWDOWN,
                     metavar="FRACTION",
                     help="a timing regressed when the lower end of its ratio to torch's 95%% interval is more "
                          f"than FRACTION above the upper end of the baseline's (default {report.SLOWDOWN:g})")
    cmd.epilog = ("exit status: 0 no regressions; 1 regressions against the baseline; 2 the report could not be "
                  "made (unreadable input, unwritable output, bad arguments)")
    cmd = commands.add_parser("matrix", help="run the kit on each implementation of a catalogue into one page",
                              description="Runs the kit once per entry of a catalogue (a folder of hook files, "
                              "one per implementation; see conformance/matrix.py), each in its own pytest process, and "
                              "writes one page: implementations down, families and dtypes across, the worst accuracy "
                              "of each and every failing check.")
    cmd.add_argument("--catalogue", type=Path, default=Path("catalogue"), metavar="DIR",
                     help="a folder of hook files, one per implementation (default: ./catalogue)")
    cmd.add_argument("-o", "--output", type=Path, metavar="PAGE", action="append",
                     help="PAGE.md or PAGE.html, repeatable (default: standard output, Markdown)")
    cmd.add_argument("--only", nargs="+", metavar="NAME", help="these entries only (file names without .py)")
    cmd.add_argument("--runs", type=Path, metavar="DIR",
                     help="keep each row's run file there, as NAME.json (for 'python -m conformance report')")
    cmd.add_argument("--row-timeout", type=_number_at_least(1), default=900.0, metavar="S",
                     help="seconds a row may run; then it is interrupted and keeps the checks done (default 900)")
    cmd.epilog = ("exit status: 0 every row ran and nothing failed; 1 a row has failing checks or could not run; 2 "
                  "the page could not be made (unreadable catalogue, unwritable output, bad arguments). A row whose "
                  "package is not installed is listed as such and changes nothing.")
    return parser


def _with_benchmarks(run: report.Run, path: Optional[Path]) -> report.Run:
    return dataclasses.replace(run, benchmarks=report.load_benchmarks(path)) if path else run


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "matrix":
        return _matrix(args)
    try:
        if args.output:
            report.writable(args.output)
        run = _with_benchmarks(report.load(args.run), args.benchmarks)
        baseline = _with_benchmarks(report.load(args.baseline), args.baseline_benchmarks) if args.baseline else None
        return _report(args, run, baseline)
    except report.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # the output became unwritable after the check (a full disk)
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace, run: report.Run, baseline: Optional[report.Run]) -> int:
    found = report.regressions(run, baseline, accuracy_factor=args.max_accuracy_loss,
                               slowdown=args.max_slowdown) if baseline else []
    timings = report.timing_comparisons(run, baseline, slowdown=args.max_slowdown) if baseline else []
    fmt = args.format or ("html" if args.output and args.output.suffix in (".html", ".htm") else "md")
    plot_name = None
    if fmt == "md" and args.output and run.benchmarks:
        plot = report.ratio_plot(run, baseline)
        if plot:
            plot_path = args.output.with_suffix(".svg")
            plot_path.write_text(plot)
            plot_name = plot_path.name
    text = report.render(run, fmt, baseline=baseline, found=found, timings=timings, plot_name=plot_name)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    for r in found:
        print(f"regression: {r.kind}: {r.id} ({r.before} -> {r.after})", file=sys.stderr)
    for t in timings:
        if t.verdict == paired.UNDECIDED:
            print(f"{t.verdict}: {t.after.id} ({report.ratio_text(t.before)} -> {report.ratio_text(t.after)})",
                  file=sys.stderr)
    if baseline:
        for text, _ in report.baseline_lines(run, baseline):
            print(text, file=sys.stderr)
        print(f"{len(found)} regressions against {args.baseline}", file=sys.stderr)
    return 1 if found else 0


def _matrix(args: argparse.Namespace) -> int:
    try:
        for page in args.output or []:
            report.writable(page)
        entries = matrix.catalogue(args.catalogue, args.only)
        if args.runs:
            args.runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --runs {args.runs}: {exc.strerror}", file=sys.stderr)
        return 2
    except (report.ReportError, matrix.MatrixError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for entry in entries:
        print(f"{entry.name}: running", file=sys.stderr, flush=True)
        rows.append(matrix.run_row(entry, args.catalogue, timeout=args.row_timeout, keep=args.runs))
        row = rows[-1]
        counts = f", {len(row.run.checks)} checks" if row.run else ""
        print(f"{entry.name}: {row.state}{counts}" + (f" ({row.note})" if row.note else ""), file=sys.stderr)
    generated = matrix.generated_line(args.catalogue, args.row_timeout)
    try:
        for page in args.output or [None]:
            text = render_matrix(rows, "html" if page and page.suffix in (".html", ".htm") else "md",
                                 generated=generated)
            if page:
                page.write_text(text)
            else:
                sys.stdout.write(text)
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 1 if failing(rows) or any(row.state == BROKEN for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Results as data first: a run's checks and benchmarks as JSON (``runfile``), the regressions
against a baseline run (``baseline``), the tables that describe both (``tables``), rendered as
terminal text, Markdown or one self-contained HTML page (``rendering``) with the ratio plot
(``plots``). The public names are re-exported here: ``from conformance import report; report.load``.
"""
from ..records import STATUSES, Check, ReportError
from .baseline import (
                          ACCURACY_FACTOR,
                          ACCURACY_FLOOR,
                          SLOWDOWN,
                          Regression,
                          TimingComparison,
                          ratio_text,
                          regressions,
                          timing_comparisons,
)
from .plots import ratio_plot
from .rendering import baseline_lines, render, render_text
from .runfile import SCHEMA, Benchmark, Run, Side, load, load_benchmarks, save, writable
from .tables import benchmark_summary, verdict_tables

__all__ = ["SCHEMA", "STATUSES", "ACCURACY_FLOOR", "ACCURACY_FACTOR", "SLOWDOWN", "ReportError", "Check", "Side",
           "Benchmark", "Run", "Regression", "TimingComparison", "save", "load", "load_benchmarks", "writable",
           "regressions", "timing_comparisons", "ratio_text", "ratio_plot", "render", "verdict_tables",
           "baseline_lines", "benchmark_summary", "render_text"]

"""The plot: the implementation's time over torch's, one bar per benchmark group with its 95 %
interval, as inline SVG (embedded in the HTML report, written beside the Markdown one)."""
from __future__ import annotations

import html
import math
from typing import Optional

from .runfile import Run
from .tables import label, ratio_tone

__all__ = ["TONE_COLOURS", "ratio_plot"]

TONE_COLOURS = {"ok": "#3a9a5b", "warn": "#d99a1e", "fail": "#c8423b"}


def ratio_plot(run: Run, baseline: Optional[Run] = None) -> str:
    """A horizontal bar per benchmark group (impl/torch) of ``run`` with its 95 % interval as an
    error bar, a line at 1, the baseline's ratios as ticks."""
    bars = [b for b in run.benchmarks if b.ratio_to_torch is not None]
    if not bars:
        return ""
    timed_before = baseline.timed_by_key() if baseline else {}
    old = {b.id: timed_before[key].ratio_to_torch for key, b in run.timed_by_key().items() if key in timed_before}
    label_w, bar_w, row_h, top = 300, 420, 24, 30
    ends = [b.ratio_high if b.ratio_high is not None else b.ratio_to_torch for b in bars]
    xmax = max([2.0] + [1.1 * r for r in ends] + [1.1 * r for r in old.values()])
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
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{html.escape(label(b))}</text>'
                     f'<rect x="{label_w}" y="{y + 4}" width="{x(ratio) - label_w:.1f}" height="{row_h - 8}" '
                     f'fill="{TONE_COLOURS[ratio_tone(ratio)]}"/>'
                     f'<text x="{x(end) + 4:.1f}" y="{y + 15}">{ratio:.2f}x</text>')
        if b.ratio_low is not None and b.ratio_high is not None:
            low, high = x(b.ratio_low), x(b.ratio_high)
            parts.append(f'<path d="M{low:.1f} {mid - 4}V{mid + 4}M{low:.1f} {mid}H{high:.1f}M{high:.1f} {mid - 4}'
                         f'V{mid + 4}" stroke="#222" fill="none"/>')
        if b.id in old:
            before = x(old[b.id])
            parts.append(f'<line x1="{before:.1f}" y1="{y + 1}" x2="{before:.1f}" y2="{y + row_h - 1}" '
                         f'stroke="#000" stroke-width="2"/>')
    parts.append(f'<line x1="{x(1):.1f}" y1="{top - 4}" x2="{x(1):.1f}" y2="{height - 26}" stroke="#333" '
                 f'stroke-dasharray="4 3"/></svg>')
    return "".join(parts)

"""Inline SVG charts, rendered on the server: no script and no asset to fetch."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

__all__ = ["Series", "bucketed", "stacked_bars"]

PALETTE = ("#2f6fb0", "#d9822b", "#3c9a5f", "#b03a48", "#7a5cb3", "#8c6d31", "#4aa3a3",
           "#c05fa0")  # fmt: skip
Series = dict[str, list[int]]


def _time(entry: Mapping[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(entry.get("time")))
    except ValueError:
        return None


def bucketed(
    entries: Iterable[Mapping[str, Any]], key: str, *, max_series: int = 6
) -> tuple[list[str], Series]:
    """Counts per time bucket (hour, or day over spans above two days) and per value of
    ``key``; the rarest values beyond ``max_series`` are summed as ``other``."""
    rows = [(t, str(e.get(key, "?"))) for e in entries if (t := _time(e)) is not None]
    if not rows:
        return [], {}
    span = max(t for t, _ in rows) - min(t for t, _ in rows)
    fmt = "%m-%d" if span > dt.timedelta(days=2) else "%m-%d %H:00"
    totals = Counter(v for _, v in rows)
    keep = {v for v, _ in totals.most_common(max_series)}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for t, v in rows:
        counts[v if v in keep else "other"][t.strftime(fmt)] += 1
    buckets = sorted({t.strftime(fmt) for t, _ in rows})
    series = {v: [counts[v][b] for b in buckets] for v in sorted(counts)}
    return buckets, series


def stacked_bars(title: str, buckets: Sequence[str], series: Series, *, width: int = 560,
                 height: int = 180) -> Markup:  # fmt: skip
    """One stacked bar per bucket, a colour per series, with a legend and a title."""
    if not buckets:
        return Markup('<p class="empty">—</p>')
    top, bottom, left = 22, 34, 36
    plot_h = height - top - bottom
    totals = [sum(s[i] for s in series.values()) for i in range(len(buckets))]
    peak = max(*totals, 1)
    slot = (width - left - 8) / len(buckets)
    bar = max(2.0, min(28.0, slot * 0.7))
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + 18 * len(series)}" '
        f'width="{width}" aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 4}" y2="{top + plot_h}" '
        'stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="tick">0</text>',
    ]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    label_every = max(1, len(buckets) // 6)
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar) / 2
        y: float = top + plot_h
        for name, values in series.items():
            if values[i]:
                h = plot_h * values[i] / peak
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{colours[name]}"><title>{escape(name)} {escape(b)}: {values[i]}'
                    "</title></rect>"
                )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" class="tick">{escape(b)}</text>'
            )
    for j, (name, values) in enumerate(series.items()):
        ly = height + 18 * j
        parts.append(
            f'<rect x="{left}" y="{ly - 10}" width="10" height="10" fill="{colours[name]}"/>'
            f'<text x="{left + 16}" y="{ly}" class="legend">{escape(name)} ({sum(values)})'
            "</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every text above went through escape()

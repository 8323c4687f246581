"""The page's building blocks: escaping, numbers, pages of blocks, the caption-score histogram
as inline SVG, and the page's CSS and script."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def num(n: float | int) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def mid_frame(start: int, end: int) -> int:
    return max(int(start), (int(start) + int(end) - 1) // 2)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def short(text: Any, n: int = 90) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def paged(blocks: Sequence[str], per_page: int) -> str:
    pages = [blocks[i : i + per_page] for i in range(0, len(blocks), per_page)]
    return (
        '<div class="paged">'
        + "".join(
            f'<div class="page"{" hidden" if i else ""}>' + "".join(page) + "</div>"
            for i, page in enumerate(pages)
        )
        + "</div>"
    )


def histogram_svg(scores: np.ndarray, cutoff: float | None, *, bins: int = 30) -> str:
    """An inline SVG histogram of caption scores with the cut-off drawn as a line.

    Each bar is split by the clips it holds: those under the cut-off (dropped) at the bottom,
    those at or above it (kept) on top, so the bin that holds the cut-off shows both parts
    in their true proportion. Every bar part carries its clip count (``data-count``)."""
    width, height, pad, base = 760, 220, 36, 190
    if len(scores) == 0:
        return '<p class="muted" id="histogram" data-scored="0">no scored clips</p>'
    lo, hi = float(scores.min()), float(scores.max())
    if cutoff is not None:
        lo, hi = min(lo, cutoff), max(hi, cutoff)
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    edges = np.histogram_bin_edges(scores, bins=bins, range=(lo, hi))
    dropped = scores < cutoff if cutoff is not None else np.zeros(len(scores), bool)
    below = np.histogram(scores[dropped], bins=edges)[0]
    above = np.histogram(scores[~dropped], bins=edges)[0]
    counts = below + above
    top = max(1, int(counts.max()))
    span = width - 2 * pad

    def x(v: float) -> float:
        return pad + span * (v - lo) / (hi - lo)

    parts = [
        f'<svg id="histogram" class="hist" viewBox="0 0 {width} {height}" role="img" '
        f'data-scored="{len(scores)}" data-cutoff="{"" if cutoff is None else f"{cutoff:.4f}"}" '
        f'aria-label="caption-score histogram of {len(scores)} scored clips">'
    ]
    for i, n in enumerate(counts):
        a, b = float(edges[i]), float(edges[i + 1])
        left, w = x(a) + 0.5, max(0.5, x(b) - x(a) - 1)
        title = f"[{a:.3f}, {b:.3f}): {plural(int(n), 'clip')}"
        if below[i] and above[i]:
            title += f", {int(below[i])} under the cut-off, {int(above[i])} at or above it"
        # the dropped part at the bottom, the kept part on top; an empty bin keeps one bar
        stack = [("below", int(below[i])), ("above", int(above[i]))]
        shown = [(kind, k) for kind, k in stack if k] or [
            ("below" if cutoff is not None and b <= cutoff else "above", 0)
        ]
        y = float(base)
        for kind, k in shown:
            h = (base - 20) * k / top
            y -= h
            parts.append(
                f'<rect class="bar {kind}" x="{left:.1f}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{h:.1f}" data-count="{k}"><title>{title}</title></rect>'
            )
    parts.append(f'<line class="axis" x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}"/>')
    for v in np.linspace(lo, hi, 6):
        parts.append(
            f'<text class="tick" x="{x(float(v)):.1f}" y="{base + 16}" '
            f'text-anchor="middle">{v:.2f}</text>'
        )
    parts.append(f'<text class="tick" x="{pad - 4}" y="{24}" text-anchor="end">{top}</text>')
    if cutoff is not None:
        cx = x(cutoff)
        parts.append(
            f'<line id="cutoff" class="cutoff" x1="{cx:.1f}" y1="10" x2="{cx:.1f}" y2="{base}"/>'
            f'<text class="cutoff-label" x="{cx + 4:.1f}" y="20">cut-off {cutoff:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


CSS = """
:root { --kept: #2e7d32; --dropped: #c62828; --muted: #666; --line: #ddd; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid
     var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px 3px 0; text-align: left;
     vertical-align: top; } th { font-weight: 600; } td.n { text-align: right; }
.muted { color: var(--muted); } .ok { color: var(--kept); font-weight: 600; }
.broken { color: var(--dropped); font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 150px; font-size: 12px; } .card .cap { overflow-wrap: anywhere; }
.thumb { display: block; height: 72px; max-width: 150px; border-radius: 3px; }
.nothumb { height: 72px; width: 96px; background: #eee; color: #999; font-size: 11px;
           display: flex; align-items: center; justify-content: center; }
.hist .bar.above { fill: var(--kept); } .hist .bar.below { fill: var(--dropped); }
.hist .axis { stroke: #999; } .hist .tick { font-size: 11px; fill: #555; }
.hist .cutoff { stroke: #000; stroke-dasharray: 4 3; stroke-width: 1.5; }
.hist .cutoff-label { font-size: 12px; }
.hbar { display: inline-block; height: 10px; background: #1565c0; vertical-align: middle; }
.story { margin: 14px 0 22px; } .timeline { position: relative; height: 126px;
         background: #f6f6f6; border-radius: 3px; }
.seg { position: absolute; top: 0; bottom: 0; overflow: hidden; border-left: 2px solid #fff;
       border-top: 5px solid var(--kept); padding: 2px 3px; font-size: 11px;
       box-sizing: border-box; }
.seg.dropped { border-top-color: var(--dropped); background: #fbeaea; }
.seg .thumb, .seg .nothumb { height: 56px; max-width: 100%; }
.seg .prompt { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.axis-row { display: flex; justify-content: space-between; font-size: 11px; color: #777; }
.dups { display: flex; gap: 8px; align-items: flex-start; margin-bottom: 10px; }
.pager button { margin: 0 2px; } .page[hidden] { display: none; }
"""


#: pagination: each .paged block shows one .page at a time
SCRIPT = """
document.querySelectorAll('.paged').forEach(function (box) {
  var pages = box.querySelectorAll('.page');
  if (pages.length < 2) { return; }
  var bar = document.createElement('div');
  bar.className = 'pager';
  pages.forEach(function (page, i) {
    var b = document.createElement('button');
    b.type = 'button';
    b.textContent = String(i + 1);
    b.addEventListener('click', function () {
      pages.forEach(function (p, j) { p.hidden = j !== i; });
    });
    bar.appendChild(b);
  });
  box.insertBefore(bar, box.firstChild);
});
"""

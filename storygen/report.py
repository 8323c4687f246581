"""A render as one self-contained HTML page (``storygen render --report``).

The page holds the preview sheet (inline PNG), the script as a timeline, the plan level by
level (calls, new frames, spacing, where the level's keyframes fall) and where the time went
per level, plus the render's settings and totals. Nothing is fetched: CSS and images are
inline, so the file opens offline.

It imports nothing from storygen's rendering modules (it takes their objects, or their
``to_dict()`` forms) and nothing from ``curate``: the run report (``curate.report``) has its
own page of the same look. The two share no code; what they would share (escaping, a
``data:`` URI, a few CSS rules) is shorter than the import rules it would bend.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd;
     padding-bottom: 4px; }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; }
td.n { text-align: right; } .muted { color: #666; }
.sheet { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.timeline { position: relative; height: 46px; background: #f4f4f4; border-radius: 3px; }
.seg { position: absolute; top: 0; bottom: 0; border-left: 2px solid #fff; padding: 3px;
       box-sizing: border-box; overflow: hidden; white-space: nowrap; text-overflow: ellipsis;
       font-size: 12px; background: #e3edf9; border-top: 4px solid #1565c0; }
.marks { position: relative; height: 14px; }
.mark { position: absolute; top: 2px; width: 2px; height: 10px; background: #c62828; }
.hbar { display: inline-block; height: 10px; background: #1565c0; vertical-align: middle; }
.axis { display: flex; justify-content: space-between; font-size: 11px; color: #777; }
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _as_dict(obj: Any, **kwargs: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    return dict(obj.to_dict(**kwargs))


def _segments(script: Any) -> list[dict[str, Any]]:
    if script is None:
        return []
    segs = (script.get("segments") if isinstance(script, Mapping) else script.segments) or []
    return [
        dict(s)
        if isinstance(s, Mapping)
        else {"start_s": s.start_s, "end_s": s.end_s, "prompt": s.prompt}
        for s in segs
    ]


def _levels(plan: Any) -> list[dict[str, Any]]:
    """Per level: calls, new frames, spacing, and the frames it makes (sorted), from a
    ``Plan`` or from ``Plan.to_dict()`` (whose ``calls`` list, when present, gives the frames)."""
    if hasattr(plan, "levels") and not isinstance(plan, Mapping):
        return [
            {
                "calls": len(lv.calls),
                "new_frames": lv.new_frames,
                "spacing": float(lv.spacing),
                "made": sorted({f for c in lv.calls for f, k in zip(c.frames, c.known) if not k}),
            }
            for lv in plan.levels
        ]
    calls = [c for c in plan.get("calls") or [] if isinstance(c, Mapping)]
    return [
        {
            "calls": int(lv.get("calls") or 0),
            "new_frames": int(lv.get("new_frames") or 0),
            "spacing": float(lv.get("spacing_frames") or 0.0),
            "made": sorted(
                {
                    f
                    for c in calls
                    if c.get("level") == lv.get("index", i)
                    for f, k in zip(c["frames"], c["known"])
                    if not k
                }
            ),
        }
        for i, lv in enumerate(plan.get("levels") or [])
    ]


def build_render_report(
    *,
    stats: Any,
    plan: Any,
    preview_png: str | os.PathLike[str] | bytes | None = None,
    script: Any = None,
    settings: Mapping[str, Any] | None = None,
    video: str | os.PathLike[str] | None = None,
    title: str = "storygen render",
) -> str:
    """The page as a string. ``stats``: a ``GenerationStats`` (or its ``to_dict()``);
    ``plan``: a ``Plan`` (or its ``to_dict()``); ``script``: a ``StoryScript`` (or a dict
    with ``segments``); ``settings``: what the render was asked for (guidance, steps, ...);
    ``preview_png``: the preview sheet, a PNG file or its bytes."""
    st = _as_dict(stats)
    pl = plan.to_dict(calls=False) if hasattr(plan, "to_dict") else dict(plan)
    fps = pl.get("fps") or (settings or {}).get("fps")
    num_frames = int(pl.get("num_frames") or st.get("num_frames") or 0)
    duration = num_frames / fps if fps else None
    out = [f"<h1>{_e(title)}</h1>"]
    if video:
        out.append(f'<p>video: <code id="video">{_e(video)}</code></p>')
    out.append(_totals_html(st, pl, num_frames, fps, duration))
    if settings:
        out.append(
            '<h2>Settings</h2><table id="settings">'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in settings.items())
            + "</table>"
        )
    png = _png(preview_png)
    if png:
        data = base64.b64encode(png).decode()
        out.append(
            "<h2>Preview sheet</h2>"
            f'<img id="preview" class="sheet" src="data:image/png;base64,{data}" '
            'alt="keyframes of the render, level by level">'
        )
    segs = _segments(script)
    if segs:
        out.append(_script_html(segs, duration))
    out.append(_levels_html(plan, pl, st, num_frames))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(out)
        + "</body></html>\n"
    )


def _png(preview: str | os.PathLike[str] | bytes | None) -> bytes | None:
    """The sheet's bytes: given as such, or read from a file that exists."""
    if isinstance(preview, bytes):
        return preview
    if preview and Path(preview).exists():
        return Path(preview).read_bytes()
    return None


def _totals_html(
    st: Mapping[str, Any],
    pl: Mapping[str, Any],
    num_frames: int,
    fps: float | None,
    duration: float | None,
) -> str:
    totals = [
        ("frames", num_frames),
        ("fps", "n/a" if not fps else f"{fps:g}"),
        ("duration", "n/a" if duration is None else f"{duration:.2f} s"),
        ("model calls", pl.get("model_calls", st.get("model_calls"))),
        ("from cache", st.get("calls_from_cache", 0)),
        ("sequential rounds", pl.get("rounds", st.get("rounds"))),
        ("batched UNet passes", st.get("unet_forwards")),
        ("wall time", f"{float(st.get('wall_time_s') or 0.0):.1f} s"),
        (
            "peak memory",
            f"{int(st.get('peak_memory_bytes') or 0) / 2**20:.0f} MiB "
            f"({st.get('peak_memory_kind', '')})",
        ),
        ("devices", ", ".join(st.get("devices") or [])),
    ]
    return (
        '<table id="totals">'
        + "".join(
            f'<tr data-name="{_e(k)}"><th>{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in totals
        )
        + "</table>"
    )


def _script_html(segs: list[dict[str, Any]], duration: float | None) -> str:
    """The script as a timeline over the rendered length: one bar per segment with its prompt;
    the part of the script after the render's end is cut off, and a note says so."""
    script_end = max(float(s["end_s"]) for s in segs)
    total = float(duration or script_end) or 1.0
    bars = []
    for s in segs:
        start, end = float(s["start_s"]), float(s["end_s"])
        if start >= total:
            continue
        bars.append(
            f'<div class="seg" style="left:{100 * start / total:.3f}%;'
            f'width:{100 * (min(end, total) - start) / total:.3f}%" '
            f'title="{start:.2f}–{end:.2f} s: {_e(s["prompt"])}">'
            f"{_e(s['prompt'])}</div>"
        )
    note = ""
    if script_end > total:
        cut = sum(1 for s in segs if float(s["start_s"]) >= total)
        clipped = sum(1 for s in segs if float(s["start_s"]) < total < float(s["end_s"]))
        parts = [f"{cut} segment{'s' if cut != 1 else ''} after it not shown"] if cut else []
        if clipped:
            parts.append(f"{clipped} cut short")
        note = (
            f'<p id="script-cut" class="muted">The render ends at {total:.2f} s, the script at '
            f"{script_end:.2f} s: the timeline shows the rendered part ({', '.join(parts)}).</p>"
        )
    return (
        "<h2>Script</h2>"
        f'<div id="script" class="timeline" data-segments="{len(segs)}">{"".join(bars)}</div>'
        f'<div class="axis"><span>0 s</span><span>{total:.1f} s</span></div>' + note
    )


def _levels_html(plan: Any, pl: Mapping[str, Any], st: Mapping[str, Any], num_frames: int) -> str:
    """The plan level by level: calls, new frames, spacing, time, and where its frames fall."""
    times = [float(t) for t in st.get("level_times_s") or []]
    top = max(times, default=0.0) or 1.0
    rows = []
    for i, level in enumerate(_levels(plan)):
        made = level["made"]
        shown = made if len(made) <= 400 else made[:: max(1, len(made) // 400)]
        marks = "".join(
            f'<span class="mark" style="left:{100 * f / max(1, num_frames - 1):.3f}%"></span>'
            for f in shown
        )
        t = times[i] if i < len(times) else None
        rows.append(
            f'<tr data-level="{i}"><th>level {i}</th><td class="n">{level["calls"]}</td>'
            f'<td class="n">{level["new_frames"]}</td>'
            f'<td class="n">{level["spacing"]:.1f}</td>'
            f'<td class="n">{"" if t is None else f"{t:.1f} s"}</td>'
            f'<td><span class="hbar" style="width:{0 if t is None else 200 * t / top:.0f}px">'
            f'</span></td><td style="width:40%"><div class="marks">{marks}</div></td></tr>'
        )
    return (
        "<h2>Plan and time per level</h2>"
        f'<p class="muted">{_e(pl.get("policy"))} policy, {_e(pl.get("frames_per_call"))} '
        f"frames per call, depth {_e(pl.get('depth'))}. Level 0 draws keyframes over the "
        "whole story; each later level fills between the frames of the one before (red: "
        "the frames a level makes).</p>"
        '<table id="levels"><tr><th></th><th>calls</th><th>new frames</th><th>spacing</th>'
        "<th>time</th><th></th><th>frames made</th></tr>" + "".join(rows) + "</table>"
    )


def write_render_report(
    out_html: str | os.PathLike[str],
    stats: Any,
    plan: Any,
    preview_png: str | os.PathLike[str] | bytes | None = None,
    *,
    script: Any = None,
    settings: Mapping[str, Any] | None = None,
    video: str | os.PathLike[str] | None = None,
    title: str = "storygen render",
) -> Path:
    """Write :func:`build_render_report`'s page to ``out_html`` (temporary name, then
    renamed); returns its path."""
    page = build_render_report(
        stats=stats,
        plan=plan,
        preview_png=preview_png,
        script=script,
        settings=settings,
        video=video,
        title=title,
    )
    path = Path(out_html)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:  # nothing left under the temporary name, written or not
        tmp.unlink(missing_ok=True)
    return path


__all__: Sequence[str] = ("build_render_report", "write_render_report")

"""The sections of the run's page, each as HTML: counts and settings, caption scores, time
per stage, clips by status, stories as timelines, duplicate groups and failures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas import RunManifest
from schemas.failures import READ_MANIFEST
from schemas.tables import DROPPED, KEPT

from ..runs import STAGE_NAMES, STAGES, RunSummary
from .markup import esc, histogram_svg, mid_frame, num, paged, plural, short
from .thumbnails import Thumbnails


def header_html(run: Path, manifest: RunManifest) -> list[str]:
    return [
        f"<h1>curate run <code>{esc(run.resolve())}</code></h1>",
        '<p class="muted">'
        + " · ".join(
            esc(x)
            for x in (
                f"created {manifest.created_at}",
                f"schema {manifest.schema_version}",
                f"code {manifest.code_version}",
            )
        )
        + "</p>",
    ]


def counts_html(
    summary: RunSummary,
    clips: Sequence[Mapping[str, Any]],
    stories: int,
    failures: int,
    cfg: Mapping[str, Any],
) -> list[str]:
    """The counts and the invariant, the run's settings and the cut-off."""
    c = summary.counts
    ok = summary.invariant_ok
    status = Counter(r["status"] for r in clips)
    reasons = Counter(r["reason"] for r in clips if r["status"] == DROPPED)
    rows = [
        ("inputs", c.get("inputs", 0)),
        ("videos with clips", c.get("videos_with_clips", 0)),
        ("failed videos", c.get("videos_failed", 0)),
        ("manifest rows rejected", c.get("manifest_rejected", 0)),
        ("pending (run stopped)", c.get("pending", 0)),
        ("clips", len(clips)),
        ("kept clips", status.get(KEPT, 0)),
        ("dropped clips", status.get(DROPPED, 0)),
        *((f"dropped: {k}", v) for k, v in reasons.most_common()),
        ("stories", stories),
        ("failures rows", failures),
    ]
    out = [
        '<h2 id="counts-title">Counts and the invariant</h2>',
        '<table id="counts">'
        + "".join(
            f'<tr data-count="{esc(k)}"><th>{esc(k)}</th><td class="n">{num(int(v))}</td></tr>'
            for k, v in rows
        )
        + "</table>",
        f'<p id="invariant" data-ok="{str(ok).lower()}">invariant: {esc(summary.invariant)} '
        f'<span class="{"ok" if ok else "broken"}">[{"ok" if ok else "BROKEN"}]</span></p>',
    ]
    if cfg.get("stopped"):
        out.append(f'<p class="broken">STOPPED: {esc(cfg["stopped"])}</p>')
    out.append("<h3>Settings</h3><table>")
    for key in ("input", "model", "captioner", "detector", "threshold", "dedup_threshold"):
        if key in cfg:
            out.append(f"<tr><th>{esc(key)}</th><td>{esc(cfg[key])}</td></tr>")
    cutoff = cfg.get("cutoff")
    out.append(
        f"<tr><th>cut-off</th><td>{'n/a' if cutoff is None else f'{cutoff:.4f}'}</td></tr></table>"
    )
    return out


def scores_html(clips: Sequence[Mapping[str, Any]], cutoff: float | None, bins: int) -> list[str]:
    """The caption-score percentiles and histogram, with the cut-off."""
    scores = np.asarray(
        [r["caption_score"] for r in clips if r["caption_score"] is not None], np.float64
    )
    out = ["<h2>Caption scores</h2>"]
    if len(scores):
        q = np.percentile(scores, [5, 50, 95])
        out.append(
            f"<p>{num(len(scores))} scored clips; p5 {q[0]:.3f}, median {q[1]:.3f}, "
            f"p95 {q[2]:.3f}. Clips under the cut-off are dropped as "
            f"<code>low_caption_score</code>.</p>"
        )
    out.append(histogram_svg(scores, cutoff, bins=bins))
    return out


def clips_html(
    by_group: Mapping[str, Sequence[Mapping[str, Any]]],
    shown: Mapping[str, Sequence[Mapping[str, Any]]],
    thumbs: Thumbnails,
    per_group: int,
) -> list[str]:
    """A grid of thumbnails per group (kept, then each drop reason), of the clips ``shown``."""
    out = [
        "<h2>Clips, by status</h2>",
        f'<p class="muted">Up to {per_group} clips per group, a seeded sample; '
        "the middle frame of each clip, its source caption and CLIP score (→ the prompt it "
        "got, where that differs).</p>",
    ]
    for group, sample in shown.items():
        total = len(by_group[group])
        title = "kept" if group == KEPT else f"dropped: {group}"
        out.append(
            f'<section class="group" data-group="{esc(group)}" data-total="{total}">'
            f'<h3>{esc(title)} <span class="muted">({num(total)}'
            f"{'' if total <= len(sample) else f', {len(sample)} shown'})</span></h3>"
            '<div class="grid">' + "".join(clip_card(r, thumbs) for r in sample) + "</div>"
            "</section>"
        )
    return out


def stories_html(stories: Sequence[Mapping[str, Any]], total: int, thumbs: Thumbnails) -> list[str]:
    """The ``stories`` drawn (of ``total``) as timelines, 10 to a page."""
    return [
        "<h2>Stories</h2>",
        f'<p class="muted">{num(total)} stories'
        + (f", {len(stories)} shown (a seeded sample)" if len(stories) < total else "")
        + ". Each bar is a segment of the timed prompt sequence, with its prompt and the "
        'frame at its middle; <span class="ok">green</span>: its clips are kept (training '
        'data), <span class="broken">red</span>: dropped, kept in the story so the '
        "timeline stays whole.</p>",
        '<div id="stories">' + paged([story_block(s, thumbs) for s in stories], 10) + "</div>",
    ]


def duplicates_html(
    groups: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    total: int,
    by_id: Mapping[str, Mapping[str, Any]],
    thumbs: Thumbnails,
    copies_per_group: int,
) -> list[str]:
    """The duplicate ``groups`` drawn (of ``total``): the kept clip first, then its copies."""
    out = ["<h2>Duplicate groups</h2>"]
    if not groups:
        out.append('<p class="muted" id="duplicates">no duplicates</p>')
        return out
    out.append(
        f'<p class="muted">{num(total)} kept clips have copies; '
        f"{len(groups)} groups shown: the kept clip first, then its copies.</p>"
    )
    blocks = []
    for original, copies in groups:
        members = [by_id.get(original), *copies[:copies_per_group]]
        blocks.append(
            '<div class="dups">'
            + "".join(clip_card(r, thumbs) for r in members if r is not None)
            + (
                f'<div class="muted">+{len(copies) - copies_per_group} more</div>'
                if len(copies) > copies_per_group
                else ""
            )
            + "</div>"
        )
    out.append('<div id="duplicates">' + "".join(blocks) + "</div>")
    return out


def clip_card(clip: Mapping[str, Any], thumbs: Thumbnails) -> str:
    score = clip.get("caption_score")
    mid = mid_frame(clip["start_frame"], clip["end_frame"])
    lines = [
        thumbs.img(clip["uri"], mid, clip["clip_id"]),
        f'<div class="cid muted">{esc(clip["clip_id"])}</div>',
        f'<div class="score">score {"n/a" if score is None else f"{score:.3f}"}</div>',
        f'<div class="cap" title="source caption">{esc(short(clip.get("source_caption")))}</div>',
    ]
    if clip.get("recaption") and clip.get("recaption") != clip.get("source_caption"):
        lines.append(
            f'<div class="cap muted" title="prompt ({esc(clip.get("recaption_source"))})">'
            f"→ {esc(short(clip['recaption']))}</div>"
        )
    return f'<div class="card" data-clip-id="{esc(clip["clip_id"])}">' + "".join(lines) + "</div>"


def story_block(story: Mapping[str, Any], thumbs: Thumbnails) -> str:
    duration = float(story["duration_s"]) or 1.0
    segs = []
    for seg in story["segments"]:
        left = 100.0 * float(seg["start_s"]) / duration
        width = 100.0 * (float(seg["end_s"]) - float(seg["start_s"])) / duration
        status = seg.get("status") or "n/a"
        label = f"{seg['start_s']:.2f}–{seg['end_s']:.2f} s · {status}" + (
            f" ({seg['reason']})" if seg.get("reason") else ""
        )
        score = seg.get("score")
        mid = mid_frame(seg["start_frame"], seg["end_frame"])
        segs.append(
            f'<div class="seg {esc(status)}" style="left:{left:.3f}%;width:{width:.3f}%" '
            f'data-status="{esc(status)}" title="{esc(label)}: {esc(seg["prompt"])}'
            f'{"" if score is None else f" (score {score:.3f})"}">'
            + thumbs.img(story.get("uri"), mid, seg["prompt"])
            + f'<div class="prompt">{esc(seg["prompt"])}</div>'
            + f'<div class="muted">{esc(label)}</div></div>'
        )
    kept = sum(1 for s in story["segments"] if s.get("status") == KEPT)
    return (
        f'<div class="story" data-story-id="{esc(story["story_id"])}">'
        f"<h3>{esc(story['story_id'])} "
        f'<span class="muted">{duration:.1f} s, {story["fps"]:g} fps, '
        f"{plural(len(story['segments']), 'segment')}, {kept} kept</span></h3>"
        f'<div class="timeline">{"".join(segs)}</div>'
        f'<div class="axis-row"><span>0 s</span><span>{duration:.1f} s</span></div></div>'
    )


def timing_section_html(timing: Mapping[str, Any] | None) -> str:
    if not timing:
        return (
            '<p class="muted" id="timing">no timing recorded (it is measured by '
            "<code>curate run</code> and kept in _timing.json)</p>"
        )
    stage_s = {k: float(v) for k, v in (timing.get("stage_s") or {}).items()}
    phase_s = {k: float(v) for k, v in (timing.get("phase_s") or {}).items()}
    parts = [
        f"<p>wall time {float(timing.get('wall_s') or 0.0):.1f} s"
        + (" (" + ", ".join(f"{k} {v:.1f} s" for k, v in phase_s.items()) + ")" if phase_s else "")
        + "</p>"
    ]
    if not stage_s:
        parts.append(
            '<p class="muted" id="timing">no per-stage time (this runner collects no '
            "metrics, or every video was done already)</p>"
        )
        return "".join(parts)
    total = sum(stage_s.values()) or 1.0
    top = max(stage_s.values()) or 1.0
    rows = "".join(
        f'<tr data-stage="{esc(k)}"><th>{esc(STAGE_NAMES.get(k, k))}</th><td class="n">{v:.1f} s</td>'
        f'<td class="n">{v / total:.0%}</td><td><span class="hbar" style="width:'
        f'{240 * v / top:.0f}px"></span></td><td class="muted">{esc(STAGES.get(k, ""))}</td></tr>'
        for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1])
    )
    parts.append(
        '<p class="muted">Per-video stages, summed over workers.</p>'
        f'<table id="timing">{rows}</table>'
    )
    return "".join(parts)


def failures_html(failures: list[dict], limit: int) -> str:
    if not failures:
        return '<p class="muted" id="failures">no failures</p>'
    kinds = Counter((f["stage"], f["error_type"]) for f in failures)
    head = (
        '<table id="failure-counts"><tr><th>stage</th><th>error</th><th>rows</th></tr>'
        + "".join(
            f'<tr><td>{esc(s)}</td><td>{esc(t)}</td><td class="n">{num(n)}</td></tr>'
            for (s, t), n in sorted(kinds.items())
        )
        + "</table>"
    )
    ordered = sorted(
        failures, key=lambda f: (f["stage"] != READ_MANIFEST, f["stage"], f["input_id"])
    )
    listed = ordered[:limit]
    rows = [
        f"<tr><td>{esc(f['input_id'])}</td><td>{esc(f['stage'])}</td>"
        f"<td>{esc(f['error_type'])}</td><td>{esc(short(f['message'], 200))}</td></tr>"
        for f in listed
    ]
    header = "<tr><th>input</th><th>stage</th><th>error</th><th>reason</th></tr>"
    pages = [
        "<table>" + header + "".join(rows[i : i + 25]) + "</table>" for i in range(0, len(rows), 25)
    ]
    note = (
        f'<p class="muted">{num(len(failures))} rows'
        + (f", the first {len(listed)} listed" if len(listed) < len(failures) else "")
        + "; all are in failures/.</p>"
    )
    return head + note + '<div id="failures">' + paged(pages, 1) + "</div>"

"""A curate run as one self-contained HTML page (``OUT/report.html``).

Every ``curate run`` writes it and ``curate report RUN`` writes it again. The page holds
everything inline (CSS, a few lines of script, images as ``data:`` URIs), so it opens offline
and can be mailed or archived as one file. It shows:

- the counts and the invariant, the run's settings;
- the caption-score histogram with the cut-off;
- where the time went, per stage (kept beside the report in ``_timing.json``, since only the
  run itself can measure it);
- for each drop reason, and for the kept clips, a grid of thumbnails with caption and score;
- stories as timelines: one bar per segment, coloured by its clips' status, with its prompt
  and a keyframe;
- duplicate groups side by side, and the failures table.

Its size does not grow with the run: thumbnails, stories and duplicate groups are seeded
samples of fixed size, and the failures table lists the first rows (paged), after the
complete count per stage and error. Counts and the histogram always cover every clip.
Thumbnails come from the clips' stored keyframes when the run kept them, else from the
source videos (one middle frame per clip or segment, decoded at thumbnail size).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas import RunManifest, read_parquet
from schemas.failures import READ_MANIFEST
from schemas.tables import DROP_REASONS, DROPPED, KEPT

from .run_folder import REPORT_NAME, TIMING_NAME
from .runs import STAGE_NAMES, STAGES, read_columns

logger = logging.getLogger(__name__)


#: the clip columns the report reads (never the embeddings)
CLIP_COLUMNS = (
    "clip_id",
    "video_id",
    "uri",
    "start_frame",
    "end_frame",
    "start_s",
    "end_s",
    "fps",
    "source_caption",
    "caption_score",
    "status",
    "reason",
    "recaption",
    "recaption_source",
    "duplicate_of",
    "keyframe_format",
)


@dataclass(frozen=True)
class ReportLimits:
    """How much of a large run the page shows; everything beyond is counted, not drawn."""

    #: thumbnails per drop reason, and of kept clips
    per_group: int = 24
    #: stories drawn as timelines (10 to a page)
    stories: int = 40
    #: duplicate groups shown, and copies per group
    duplicate_groups: int = 12
    copies_per_group: int = 4
    #: failures rows listed (25 to a page); the counts per stage and error cover all
    failures: int = 500
    #: histogram bins
    bins: int = 30
    #: thumbnail height in pixels
    thumb_height: int = 72
    #: the seed of every sample
    seed: int = 0


# --- reading the run ------------------------------------------------------------------------


def save_timing(run_dir: str | os.PathLike[str], timing: Mapping[str, Any]) -> Path:
    """Keep a run's timing (``wall_s``, ``phase_s``, ``stage_s``) beside its report."""
    path = Path(run_dir) / TIMING_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(timing), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_timing(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(run_dir) / TIMING_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- thumbnails -----------------------------------------------------------------------------


def _jpeg_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fit(image: Any, height: int) -> Any:
    w, h = image.size
    return image.resize((max(1, round(w * height / h)), height))


class Thumbnails:
    """Middle frames of clips and segments as ``data:`` URIs, decoded one video at a time."""

    def __init__(self, height: int) -> None:
        self.height = height
        self._wanted: dict[str, set[int]] = defaultdict(set)
        self._keyframes: dict[tuple[str, int], bytes] = {}
        self._done: dict[tuple[str, int], str | None] = {}

    def want(self, uri: str | None, frame: int, keyframe: bytes | None = None) -> None:
        if not uri:
            return
        if keyframe is not None:
            self._keyframes[(uri, frame)] = keyframe
        else:
            self._wanted[uri].add(int(frame))

    def render(self) -> None:
        from PIL import Image

        for (uri, frame), data in self._keyframes.items():
            try:
                self._done[(uri, frame)] = _jpeg_uri(
                    _fit(Image.open(io.BytesIO(data)), self.height)
                )
            except Exception as exc:  # an unreadable stored keyframe: no thumbnail
                logger.debug("%s frame %d: keyframe unreadable: %s", uri, frame, exc)
                self._done[(uri, frame)] = None
        if not self._wanted:
            return
        from .video import read_frames

        for uri, frames in sorted(self._wanted.items()):
            order = sorted(frames)
            try:
                pixels = read_frames(uri, order, short_side=self.height)
            except Exception as exc:  # a moved or unreadable video: the page says so
                logger.warning("report: no thumbnails from %s: %s", uri, exc)
                for f in order:
                    self._done[(uri, f)] = None
                continue
            for f, px in zip(order, pixels):
                self._done[(uri, f)] = _jpeg_uri(_fit(Image.fromarray(np.asarray(px)), self.height))

    def img(self, uri: str | None, frame: int, alt: str) -> str:
        src = self._done.get((uri or "", int(frame)))
        if src is None:
            return f'<div class="nothumb" title="{_e(alt)}">no frame</div>'
        return f'<img class="thumb" src="{src}" alt="{_e(alt)}" title="{_e(alt)}">'


# --- the page -------------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _num(n: float | int) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def _mid(start: int, end: int) -> int:
    return max(int(start), (int(start) + int(end) - 1) // 2)


def _sample(items: Sequence[Any], size: int, seed: int) -> list[Any]:
    """A seeded sample of at most ``size`` items, in their order."""
    if len(items) <= size:
        return list(items)
    picked = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in picked]


def histogram_svg(scores: np.ndarray, cutoff: float | None, *, bins: int = 30) -> str:
    """An inline SVG histogram of caption scores with the cut-off drawn as a line; bins
    below the cut-off are drawn as dropped, the others as kept."""
    width, height, pad, base = 760, 220, 36, 190
    if len(scores) == 0:
        return '<p class="muted" id="histogram" data-scored="0">no scored clips</p>'
    lo, hi = float(scores.min()), float(scores.max())
    if cutoff is not None:
        lo, hi = min(lo, cutoff), max(hi, cutoff)
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
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
        h = (base - 20) * int(n) / top
        kind = "below" if cutoff is not None and b <= cutoff else "above"
        parts.append(
            f'<rect class="bar {kind}" x="{x(a) + 0.5:.1f}" y="{base - h:.1f}" '
            f'width="{max(0.5, x(b) - x(a) - 1):.1f}" height="{h:.1f}" data-count="{int(n)}">'
            f"<title>[{a:.3f}, {b:.3f}): {int(n)} clips</title></rect>"
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


def _pages(blocks: Sequence[str], per_page: int) -> str:
    pages = [blocks[i : i + per_page] for i in range(0, len(blocks), per_page)]
    return (
        '<div class="paged">'
        + "".join(
            f'<div class="page"{" hidden" if i else ""}>' + "".join(page) + "</div>"
            for i, page in enumerate(pages)
        )
        + "</div>"
    )


def _clip_card(clip: Mapping[str, Any], thumbs: Thumbnails) -> str:
    score = clip.get("caption_score")
    mid = _mid(clip["start_frame"], clip["end_frame"])
    lines = [
        thumbs.img(clip["uri"], mid, clip["clip_id"]),
        f'<div class="cid muted">{_e(clip["clip_id"])}</div>',
        f'<div class="score">score {"n/a" if score is None else f"{score:.3f}"}</div>',
        f'<div class="cap" title="source caption">{_e(_short(clip.get("source_caption")))}</div>',
    ]
    if clip.get("recaption") and clip.get("recaption") != clip.get("source_caption"):
        lines.append(
            f'<div class="cap muted" title="prompt ({_e(clip.get("recaption_source"))})">'
            f"→ {_e(_short(clip['recaption']))}</div>"
        )
    return f'<div class="card" data-clip-id="{_e(clip["clip_id"])}">' + "".join(lines) + "</div>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _short(text: Any, n: int = 90) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _story_block(story: Mapping[str, Any], thumbs: Thumbnails) -> str:
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
        mid = _mid(seg["start_frame"], seg["end_frame"])
        segs.append(
            f'<div class="seg {_e(status)}" style="left:{left:.3f}%;width:{width:.3f}%" '
            f'data-status="{_e(status)}" title="{_e(label)}: {_e(seg["prompt"])}'
            f'{"" if score is None else f" (score {score:.3f})"}">'
            + thumbs.img(story.get("uri"), mid, seg["prompt"])
            + f'<div class="prompt">{_e(seg["prompt"])}</div>'
            + f'<div class="muted">{_e(label)}</div></div>'
        )
    kept = sum(1 for s in story["segments"] if s.get("status") == KEPT)
    return (
        f'<div class="story" data-story-id="{_e(story["story_id"])}">'
        f"<h3>{_e(story['story_id'])} "
        f'<span class="muted">{duration:.1f} s, {story["fps"]:g} fps, '
        f"{_plural(len(story['segments']), 'segment')}, {kept} kept</span></h3>"
        f'<div class="timeline">{"".join(segs)}</div>'
        f'<div class="axis-row"><span>0 s</span><span>{duration:.1f} s</span></div></div>'
    )


def build_run_report(
    run_dir: str | os.PathLike[str],
    *,
    timing: Mapping[str, Any] | None = None,
    limits: ReportLimits | None = None,
) -> str:
    """The report of a published run as an HTML string (see the module's docstring)."""
    from .runs import summarize

    lim = limits or ReportLimits()
    run = Path(run_dir)
    manifest = RunManifest.read(run)
    cfg = manifest.config
    clips_t = read_columns(run, manifest, "clips", CLIP_COLUMNS)
    stories_t = read_columns(run, manifest, "stories")
    failures = read_columns(run, manifest, "failures").to_pylist()
    timing = timing if timing is not None else load_timing(run)
    summary = summarize(
        run,
        wall_s=float((timing or {}).get("wall_s") or 0.0),
        phase_s=dict((timing or {}).get("phase_s") or {}),
    )
    c = summary.counts
    clips = clips_t.to_pylist()
    n_clips = len(clips)
    status = Counter(r["status"] for r in clips)
    reasons = Counter(r["reason"] for r in clips if r["status"] == DROPPED)
    cutoff = cfg.get("cutoff")
    scores = np.asarray(
        [r["caption_score"] for r in clips if r["caption_score"] is not None], np.float64
    )
    thumbs = Thumbnails(lim.thumb_height)

    # -- what to draw: seeded samples of fixed size
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in clips:
        by_group[KEPT if r["status"] == KEPT else (r["reason"] or DROPPED)].append(r)
    order = [KEPT, *DROP_REASONS, *sorted(set(by_group) - {KEPT, *DROP_REASONS})]
    shown = {g: _sample(by_group[g], lim.per_group, lim.seed) for g in order if by_group.get(g)}
    story_rows = stories_t.to_pylist()
    story_rows.sort(key=lambda s: s["story_id"])
    stories = _sample(story_rows, lim.stories, lim.seed)
    by_id = {r["clip_id"]: r for r in clips}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in clips:
        if r.get("duplicate_of"):
            groups[r["duplicate_of"]].append(r)
    dup_groups = _sample(sorted(groups.items()), lim.duplicate_groups, lim.seed)

    keyframes: dict[str, bytes] = {}
    if any(clips_t.column("keyframe_format").to_pylist()):
        wanted = {r["clip_id"] for members in shown.values() for r in members}
        for original, copies in dup_groups:
            wanted |= {original, *(r["clip_id"] for r in copies[: lim.copies_per_group])}
        wanted |= {seg["clip_id"] for st in stories for seg in st["segments"] if seg["clip_id"]}
        keyframes = _keyframes_of(run, manifest, wanted)
    for members in shown.values():
        for r in members:
            _want_clip(thumbs, r, keyframes)
    for original, copies in dup_groups:
        for r in [by_id.get(original), *copies[: lim.copies_per_group]]:
            if r is not None:
                _want_clip(thumbs, r, keyframes)
    for st in stories:
        for seg in st["segments"]:
            mid = _mid(seg["start_frame"], seg["end_frame"])
            thumbs.want(st.get("uri"), mid, keyframes.get(seg["clip_id"] or ""))
    thumbs.render()

    # -- the page
    out: list[str] = []
    ok = summary.invariant_ok
    out.append(f"<h1>curate run <code>{_e(run.resolve())}</code></h1>")
    out.append(
        '<p class="muted">'
        + " · ".join(
            _e(x)
            for x in (
                f"created {manifest.created_at}",
                f"schema {manifest.schema_version}",
                f"code {manifest.code_version}",
            )
        )
        + "</p>"
    )
    out.append('<h2 id="counts-title">Counts and the invariant</h2>')
    rows = [
        ("inputs", c.get("inputs", 0)),
        ("videos with clips", c.get("videos_with_clips", 0)),
        ("failed videos", c.get("videos_failed", 0)),
        ("manifest rows rejected", c.get("manifest_rejected", 0)),
        ("pending (run stopped)", c.get("pending", 0)),
        ("clips", n_clips),
        ("kept clips", status.get(KEPT, 0)),
        ("dropped clips", status.get(DROPPED, 0)),
        *((f"dropped: {k}", v) for k, v in reasons.most_common()),
        ("stories", len(story_rows)),
        ("failures rows", len(failures)),
    ]
    out.append(
        '<table id="counts">'
        + "".join(
            f'<tr data-count="{_e(k)}"><th>{_e(k)}</th><td class="n">{_num(int(v))}</td></tr>'
            for k, v in rows
        )
        + "</table>"
    )
    out.append(
        f'<p id="invariant" data-ok="{str(ok).lower()}">invariant: {_e(summary.invariant)} '
        f'<span class="{"ok" if ok else "broken"}">[{"ok" if ok else "BROKEN"}]</span></p>'
    )
    if cfg.get("stopped"):
        out.append(f'<p class="broken">STOPPED: {_e(cfg["stopped"])}</p>')
    out.append("<h3>Settings</h3><table>")
    for key in ("input", "model", "captioner", "detector", "threshold", "dedup_threshold"):
        if key in cfg:
            out.append(f"<tr><th>{_e(key)}</th><td>{_e(cfg[key])}</td></tr>")
    out.append(
        f"<tr><th>cut-off</th><td>{'n/a' if cutoff is None else f'{cutoff:.4f}'}</td></tr></table>"
    )

    out.append("<h2>Caption scores</h2>")
    if len(scores):
        q = np.percentile(scores, [5, 50, 95])
        out.append(
            f"<p>{_num(len(scores))} scored clips; p5 {q[0]:.3f}, median {q[1]:.3f}, "
            f"p95 {q[2]:.3f}. Clips under the cut-off are dropped as "
            f"<code>low_caption_score</code>.</p>"
        )
    out.append(histogram_svg(scores, cutoff, bins=lim.bins))

    out.append('<h2 id="timing-title">Time</h2>')
    out.append(_timing_html(timing))

    out.append("<h2>Clips, by status</h2>")
    out.append(
        f'<p class="muted">Up to {lim.per_group} clips per group, a seeded sample; '
        "the middle frame of each clip, its source caption and CLIP score (→ the prompt it "
        "got, where that differs).</p>"
    )
    for group, sample in shown.items():
        total = len(by_group[group])
        title = "kept" if group == KEPT else f"dropped: {group}"
        out.append(
            f'<section class="group" data-group="{_e(group)}" data-total="{total}">'
            f'<h3>{_e(title)} <span class="muted">({_num(total)}'
            f"{'' if total <= len(sample) else f', {len(sample)} shown'})</span></h3>"
            '<div class="grid">' + "".join(_clip_card(r, thumbs) for r in sample) + "</div>"
            "</section>"
        )

    out.append("<h2>Stories</h2>")
    out.append(
        f'<p class="muted">{_num(len(story_rows))} stories'
        + (f", {len(stories)} shown (a seeded sample)" if len(stories) < len(story_rows) else "")
        + ". Each bar is a segment of the timed prompt sequence, with its prompt and the "
        'frame at its middle; <span class="ok">green</span>: its clips are kept (training '
        'data), <span class="broken">red</span>: dropped, kept in the story so the '
        "timeline stays whole.</p>"
    )
    out.append(
        '<div id="stories">' + _pages([_story_block(s, thumbs) for s in stories], 10) + "</div>"
    )

    out.append("<h2>Duplicate groups</h2>")
    if not dup_groups:
        out.append('<p class="muted" id="duplicates">no duplicates</p>')
    else:
        out.append(
            f'<p class="muted">{_num(len(groups))} kept clips have copies; '
            f"{len(dup_groups)} groups shown: the kept clip first, then its copies.</p>"
        )
        blocks = []
        for original, copies in dup_groups:
            members = [by_id.get(original), *copies[: lim.copies_per_group]]
            blocks.append(
                '<div class="dups">'
                + "".join(_clip_card(r, thumbs) for r in members if r is not None)
                + (
                    f'<div class="muted">+{len(copies) - lim.copies_per_group} more</div>'
                    if len(copies) > lim.copies_per_group
                    else ""
                )
                + "</div>"
            )
        out.append('<div id="duplicates">' + "".join(blocks) + "</div>")

    out.append("<h2>Failures</h2>")
    out.append(_failures_html(failures, lim.failures))

    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>curate run report: {_e(run.name)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        + "\n".join(out)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def _want_clip(thumbs: Thumbnails, clip: Mapping[str, Any], keyframes: Mapping[str, bytes]) -> None:
    mid = _mid(clip["start_frame"], clip["end_frame"])
    thumbs.want(clip["uri"], mid, keyframes.get(clip["clip_id"]))


def _keyframes_of(run: Path, manifest: RunManifest, wanted: set[str]) -> dict[str, bytes]:
    """The stored middle keyframe of each ``wanted`` clip that has keyframes, one shard at a
    time (keyframes are the heavy column of a large run)."""
    import pyarrow.compute as pc

    out: dict[str, bytes] = {}
    ids = pa.array(sorted(wanted), pa.string())
    for shard in manifest.shards:
        if shard.table != "clips":
            continue
        table = read_parquet(run / shard.path, "clips", columns=["clip_id", "keyframes"])
        table = table.filter(pc.is_in(table.column("clip_id"), value_set=ids))
        for cid, frames in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
            if frames:
                out[cid] = frames[len(frames) // 2]
    return out


def _timing_html(timing: Mapping[str, Any] | None) -> str:
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
        f'<tr data-stage="{_e(k)}"><th>{_e(STAGE_NAMES.get(k, k))}</th><td class="n">{v:.1f} s</td>'
        f'<td class="n">{v / total:.0%}</td><td><span class="hbar" style="width:'
        f'{240 * v / top:.0f}px"></span></td><td class="muted">{_e(STAGES.get(k, ""))}</td></tr>'
        for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1])
    )
    parts.append(
        '<p class="muted">Per-video stages, summed over workers.</p>'
        f'<table id="timing">{rows}</table>'
    )
    return "".join(parts)


def _failures_html(failures: list[dict], limit: int) -> str:
    if not failures:
        return '<p class="muted" id="failures">no failures</p>'
    kinds = Counter((f["stage"], f["error_type"]) for f in failures)
    head = (
        '<table id="failure-counts"><tr><th>stage</th><th>error</th><th>rows</th></tr>'
        + "".join(
            f'<tr><td>{_e(s)}</td><td>{_e(t)}</td><td class="n">{_num(n)}</td></tr>'
            for (s, t), n in sorted(kinds.items())
        )
        + "</table>"
    )
    ordered = sorted(
        failures, key=lambda f: (f["stage"] != READ_MANIFEST, f["stage"], f["input_id"])
    )
    listed = ordered[:limit]
    rows = [
        f"<tr><td>{_e(f['input_id'])}</td><td>{_e(f['stage'])}</td>"
        f"<td>{_e(f['error_type'])}</td><td>{_e(_short(f['message'], 200))}</td></tr>"
        for f in listed
    ]
    header = "<tr><th>input</th><th>stage</th><th>error</th><th>reason</th></tr>"
    pages = [
        "<table>" + header + "".join(rows[i : i + 25]) + "</table>" for i in range(0, len(rows), 25)
    ]
    note = (
        f'<p class="muted">{_num(len(failures))} rows'
        + (f", the first {len(listed)} listed" if len(listed) < len(failures) else "")
        + "; all are in failures/.</p>"
    )
    return head + note + '<div id="failures">' + _pages(pages, 1) + "</div>"


def write_run_report(
    run_dir: str | os.PathLike[str],
    out_html: str | os.PathLike[str] | None = None,
    *,
    timing: Mapping[str, Any] | None = None,
    limits: ReportLimits | None = None,
) -> Path:
    """Write the run's report (default ``RUN/report.html``, written under a temporary name
    and renamed); ``timing`` (from the run itself) is kept in ``_timing.json`` for later
    rewrites. Returns the report's path."""
    run = Path(run_dir)
    if timing is not None:
        save_timing(run, timing)
    page = build_run_report(run, timing=timing, limits=limits)
    path = Path(out_html) if out_html is not None else run / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_numbers(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The headline numbers the page shows, for tests and scripts to compare against."""
    run = Path(run_dir)
    manifest = RunManifest.read(run)
    clips = read_columns(run, manifest, "clips", ("status", "reason", "caption_score")).to_pylist()
    return {
        "clips": len(clips),
        "kept": sum(1 for r in clips if r["status"] == KEPT),
        "scored": sum(1 for r in clips if r["caption_score"] is not None),
        "reasons": dict(Counter(r["reason"] for r in clips if r["status"] == DROPPED)),
        "stories": read_columns(run, manifest, "stories", ("story_id",)).num_rows,
        "failures": read_columns(run, manifest, "failures", ("input_id",)).num_rows,
        "cutoff": manifest.config.get("cutoff"),
    }


def report_after_run(run_dir: str | os.PathLike[str], timing: Mapping[str, Any]) -> Path | None:
    """What ``curate run`` calls last: the report, or ``None`` with the reason logged when it
    cannot be written (the run's tables are published already; a report is not worth failing
    it for, and ``curate report`` can write it later)."""
    try:
        return write_run_report(run_dir, timing=timing)
    except Exception as exc:
        logger.error(
            "report not written: %s: %s (curate report %s retries)",
            type(exc).__name__,
            exc,
            run_dir,
        )
        logger.debug("report failure", exc_info=True)
        return None

"""The run's page: what it reads of the run, the seeded samples it draws, and the page written
under a temporary name and renamed."""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas import RunManifest, read_parquet
from schemas.tables import DROP_REASONS, DROPPED, KEPT

from ..run_folder import REPORT_NAME, TIMING_NAME
from ..runs import RunSummary, read_columns, summarize
from .markup import CSS, SCRIPT, esc, mid_frame
from .sections import (
    clips_html,
    counts_html,
    duplicates_html,
    failures_html,
    header_html,
    scores_html,
    stories_html,
    timing_section_html,
)
from .thumbnails import Thumbnails

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


@dataclass
class _Run:
    """What the page reads of a run: every clip (never the embeddings), the stories sorted by
    id, the failures, the timing and the summary with the invariant."""

    path: Path
    manifest: RunManifest
    clips: list[dict[str, Any]]
    keyframes_stored: bool
    stories: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    timing: Mapping[str, Any] | None
    summary: RunSummary


@dataclass
class _Shown:
    """What the page draws: seeded samples of fixed size."""

    #: every clip per group (kept, or its drop reason), and the sample of each shown
    by_group: dict[str, list[dict[str, Any]]]
    groups: dict[str, list[dict[str, Any]]]
    stories: list[dict[str, Any]]
    #: every kept clip with copies -> its copies, and the sample of them shown
    duplicates: dict[str, list[dict[str, Any]]]
    duplicate_groups: list[tuple[str, list[dict[str, Any]]]]
    by_id: dict[str, dict[str, Any]]


def build_run_report(
    run_dir: str | os.PathLike[str],
    *,
    timing: Mapping[str, Any] | None = None,
    limits: ReportLimits | None = None,
) -> str:
    """The report of a published run as an HTML string (see the package's docstring)."""
    lim = limits or ReportLimits()
    run = _read_run(Path(run_dir), timing)
    shown = _choose(run, lim)
    thumbs = _thumbnails(run, shown, lim)
    cfg = run.manifest.config
    out = [
        *header_html(run.path, run.manifest),
        *counts_html(run.summary, run.clips, len(run.stories), len(run.failures), cfg),
        *scores_html(run.clips, cfg.get("cutoff"), lim.bins),
        '<h2 id="timing-title">Time</h2>',
        timing_section_html(run.timing),
        *clips_html(shown.by_group, shown.groups, thumbs, lim.per_group),
        *stories_html(shown.stories, len(run.stories), thumbs),
        *duplicates_html(
            shown.duplicate_groups, len(shown.duplicates), shown.by_id, thumbs, lim.copies_per_group
        ),
        "<h2>Failures</h2>",
        failures_html(run.failures, lim.failures),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>curate run report: {esc(run.path.name)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        + "\n".join(out)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def _read_run(run: Path, timing: Mapping[str, Any] | None) -> _Run:
    """The run's tables through its manifest, and its timing (``_timing.json`` unless given)."""
    manifest = RunManifest.read(run)
    clips = read_columns(run, manifest, "clips", CLIP_COLUMNS)
    stories = read_columns(run, manifest, "stories")
    failures = read_columns(run, manifest, "failures").to_pylist()
    timing = timing if timing is not None else load_timing(run)
    summary = summarize(
        run,
        wall_s=float((timing or {}).get("wall_s") or 0.0),
        phase_s=dict((timing or {}).get("phase_s") or {}),
    )
    story_rows = stories.to_pylist()
    story_rows.sort(key=lambda s: s["story_id"])
    return _Run(
        path=run,
        manifest=manifest,
        clips=clips.to_pylist(),
        keyframes_stored=any(clips.column("keyframe_format").to_pylist()),
        stories=story_rows,
        failures=failures,
        timing=timing,
        summary=summary,
    )


def _sample(items: Sequence[Any], size: int, seed: int) -> list[Any]:
    """A seeded sample of at most ``size`` items, in their order."""
    if len(items) <= size:
        return list(items)
    picked = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in picked]


def _choose(run: _Run, lim: ReportLimits) -> _Shown:
    """The clips per group, stories and duplicate groups the page draws."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in run.clips:
        by_group[KEPT if r["status"] == KEPT else (r["reason"] or DROPPED)].append(r)
    order = [KEPT, *DROP_REASONS, *sorted(set(by_group) - {KEPT, *DROP_REASONS})]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in run.clips:
        if r.get("duplicate_of"):
            groups[r["duplicate_of"]].append(r)
    return _Shown(
        by_group=by_group,
        groups={g: _sample(by_group[g], lim.per_group, lim.seed) for g in order if by_group.get(g)},
        stories=_sample(run.stories, lim.stories, lim.seed),
        duplicates=groups,
        duplicate_groups=_sample(sorted(groups.items()), lim.duplicate_groups, lim.seed),
        by_id={r["clip_id"]: r for r in run.clips},
    )


def _thumbnails(run: _Run, shown: _Shown, lim: ReportLimits) -> Thumbnails:
    """The thumbnails of every drawn clip and story segment: stored keyframes where the run
    kept them, else decoded from the source videos."""
    keyframes: dict[str, bytes] = {}
    if run.keyframes_stored:
        wanted = {r["clip_id"] for members in shown.groups.values() for r in members}
        for original, copies in shown.duplicate_groups:
            wanted |= {original, *(r["clip_id"] for r in copies[: lim.copies_per_group])}
        wanted |= {
            seg["clip_id"] for st in shown.stories for seg in st["segments"] if seg["clip_id"]
        }
        keyframes = _keyframes_of(run.path, run.manifest, wanted)
    thumbs = Thumbnails(lim.thumb_height)
    for members in shown.groups.values():
        for r in members:
            _want_clip(thumbs, r, keyframes)
    for original, copies in shown.duplicate_groups:
        for clip in [shown.by_id.get(original), *copies[: lim.copies_per_group]]:
            if clip is not None:
                _want_clip(thumbs, clip, keyframes)
    for st in shown.stories:
        for seg in st["segments"]:
            mid = mid_frame(seg["start_frame"], seg["end_frame"])
            thumbs.want(st.get("uri"), mid, keyframes.get(seg["clip_id"] or ""))
    thumbs.render()
    return thumbs


def _want_clip(thumbs: Thumbnails, clip: Mapping[str, Any], keyframes: Mapping[str, bytes]) -> None:
    mid = mid_frame(clip["start_frame"], clip["end_frame"])
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

"""The plan of an export: which windows of which videos become samples, in which order, with
which keys, and the failures rows of the selected clips no window can hold. It reads the run's
tables and decodes nothing, so the same run gives the same plan whenever it is made."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from schemas import failure_row
from schemas.tables import DUPLICATE, KEPT

from ..shards import read_table
from .settings import (
    INVALID_VALUE,
    NO_PROMPT,
    OUTSIDE_WINDOWS,
    RUN_TOO_SHORT,
    SAMPLE_CAP,
    SEGMENT_FIELDS,
    STAGE_PLAN,
    STAGE_RUN,
    UPSAMPLED_SOURCE,
    ExportSettings,
)


def source_indices(start: int, count: int, source_fps: float, fps: float) -> np.ndarray:
    """Source frame numbers of ``count`` output frames at ``fps`` from source frame ``start``."""
    return start + np.round(np.arange(count) * (source_fps / fps)).astype(np.int64)


def frames_in_span(start: int, end: int, source_fps: float, fps: float) -> int:
    """How many output frames at ``fps`` the source span ``[start, end)`` holds."""
    if end <= start:
        return 0
    n = int(np.floor((end - start) * fps / source_fps)) + 2
    idx = source_indices(start, n, source_fps, fps)
    return int(np.count_nonzero(idx < end))


@dataclass(frozen=True)
class Piece:
    """One clip's share of a run: source span, prompt, ids and score."""

    clip_id: str | None
    start_frame: int
    end_frame: int
    prompt: str
    score: float | None
    status: str | None
    reason: str | None = None
    #: where the prompt came from: the clip's ``recaption_source``, or "manifest" (raw)
    prompt_source: str | None = None


@dataclass(frozen=True)
class Window:
    """One planned sample."""

    key: str
    video_id: str
    uri: str
    source_fps: float
    #: source frame of each output frame
    source_frames: tuple[int, ...]
    #: the clip (piece index into ``pieces``) shown by each output frame
    piece_of_frame: tuple[int, ...]
    pieces: tuple[Piece, ...]
    position: int  # place in the plan (0, 1, 2, ...)

    def segments(self, fps: float) -> list[dict[str, Any]]:
        """The timed prompts in the sample's own frames and seconds (stories' segment shape)."""
        out: list[dict[str, Any]] = []
        for k, p in enumerate(self.piece_of_frame):
            if out and out[-1]["_piece"] == p:
                out[-1]["end_frame"] = k + 1
                continue
            piece = self.pieces[p]
            out.append(
                {
                    "_piece": p,
                    "start_frame": k,
                    "end_frame": k + 1,
                    "prompt": piece.prompt,
                    "clip_id": piece.clip_id,
                    "score": piece.score,
                    "status": piece.status,
                    "reason": piece.reason,
                    "prompt_source": piece.prompt_source,
                }
            )
        for seg in out:
            del seg["_piece"]
            seg["start_s"] = round(seg["start_frame"] / fps, 6)
            seg["end_s"] = round(seg["end_frame"] / fps, 6)
        return [{k: s[k] for k in SEGMENT_FIELDS} for s in out]

    def segment_spans(self, fps: float) -> list[list[float]]:
        """Per segment (as :meth:`segments` lists them), the whole span of its clip in the
        sample's own frames, ``[start, end)``: a clip the window cuts reaches before the
        segment's first frame or past its last (before 0, past the sample's end). Anchored on
        the segment's own first and last frames, so a span always holds its segment. A
        trainer reads how far each frame is into its prompt's span from it."""
        scale = fps / self.source_fps
        runs: list[list[int]] = []  # [piece, first frame, last frame]
        for k, p in enumerate(self.piece_of_frame):
            if runs and runs[-1][0] == p:
                runs[-1][2] = k
            else:
                runs.append([p, k, k])
        out: list[list[float]] = []
        for p, first, last in runs:
            piece = self.pieces[p]
            before = max(0, self.source_frames[first] - piece.start_frame) * scale
            after = max(0, piece.end_frame - 1 - self.source_frames[last]) * scale
            out.append([round(first - before, 4), round(last + 1 + after, 4)])
        return out

    def main_piece(self) -> Piece:
        counts = np.bincount(np.asarray(self.piece_of_frame), minlength=len(self.pieces))
        return self.pieces[int(np.argmax(counts))]


@dataclass
class VideoJob:
    """The windows of one video, decoded and encoded together."""

    video_id: str
    uri: str
    width: int
    height: int
    windows: list[Window] = field(default_factory=list)

    @property
    def clip_ids(self) -> list[str]:
        return window_clip_ids(self.windows)


@dataclass
class Plan:
    jobs: list[VideoJob]
    #: failures known before decoding (too short, outside windows, no prompt, over the cap)
    failures: list[dict[str, Any]]
    counts: dict[str, int]

    @property
    def samples(self) -> int:
        return sum(len(j.windows) for j in self.jobs)


def video_order(video_id: str) -> str:
    """Plan order of videos: a hash of the id, so consecutive samples come from unrelated
    videos (shards are mixed before any shuffle buffer) and a sample cap takes a random-like,
    reproducible subset."""
    return hashlib.blake2b(video_id.encode(), digest_size=8).hexdigest() + video_id


def sample_key(video_id: str, index: int) -> str:
    """A WebDataset key: no dots (they separate the key from the extension) or slashes."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", video_id)
    if safe != video_id:  # two ids may differ only in characters that were replaced
        safe += "_" + hashlib.blake2b(video_id.encode(), digest_size=3).hexdigest()
    return f"{safe}-{index:04d}"


def _selected(clip: Mapping[str, Any], include_dropped: bool) -> bool:
    if include_dropped:
        return True
    if clip["status"] != KEPT or clip.get("reason") == DUPLICATE:
        return False
    dup = clip.get("duplicate_of")
    return dup is None or dup == clip["clip_id"]


def _prompt(clip: Mapping[str, Any]) -> str | None:
    for key in ("recaption", "source_caption"):
        text = clip.get(key)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def _clip_failure(
    clip: Mapping[str, Any], stage: str, error_type: str, message: str
) -> dict[str, Any]:
    return failure_row(
        clip["clip_id"],
        uri=clip.get("uri"),
        stage=stage,
        error_type=error_type,
        message=f"{clip['clip_id']}: {message}",
    )


def _runs(clips: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Maximal sequences of selected clips that follow each other without a gap."""
    run: list[dict[str, Any]] = []
    for clip in clips:
        if run and clip["start_frame"] != run[-1]["end_frame"]:
            yield run
            run = []
        run.append(clip)
    if run:
        yield run


def plan_export(run_folder: str | os.PathLike[str], settings: ExportSettings) -> Plan:
    """Every sample the export will write, in order, and the clips no sample can hold.

    Reads the run's clips (and, for ``raw``, its failures) through its manifest; decodes
    nothing, so the plan is the same whenever it is made.
    """
    clips = read_table(run_folder, "clips").to_pylist()
    by_video: dict[str, list[dict[str, Any]]] = {}
    for c in clips:
        by_video.setdefault(c["video_id"], []).append(c)
    counts = {"run_clips": len(clips), "run_videos": len(by_video)}
    failures = _undecoded_videos(run_folder, by_video) if settings.raw else []
    if settings.raw:
        counts["undecoded_videos"] = len({f["input_id"] for f in failures})
    jobs: list[VideoJob] = []
    position = 0
    capped = False
    for video_id in sorted(by_video, key=video_order):
        vclips = sorted(by_video[video_id], key=lambda c: (c["start_frame"], c["scene_index"]))
        first = vclips[0]
        job = VideoJob(video_id, first["uri"], int(first["width"]), int(first["height"]))
        if not settings.raw:
            runs, unprompted = _selected_runs(vclips, settings.include_dropped)
            failures.extend(unprompted)
        refused = _refused_video(job, vclips, settings)
        if refused is not None:
            failures.extend(refused)
            continue
        fps = float(first["fps"])
        if settings.raw:
            runs = [_raw_run(vclips)]
        windows: list[Window] = []
        for pieces in runs:
            run_windows, run_failures = _run_windows(job, pieces, fps, settings)
            windows.extend(run_windows)
            failures.extend(run_failures)
        if not windows:
            continue
        if capped or (
            settings.max_samples is not None and position + len(windows) > settings.max_samples
        ):
            capped = True  # later videos are not planned either, so the cap takes whole videos
            failures.extend(_capped(job, windows, settings))
            continue
        job.windows = [
            replace(w, key=sample_key(video_id, i), position=position + i)
            for i, w in enumerate(windows)
        ]
        position += len(windows)
        jobs.append(job)
    counts["planned_samples"] = position
    counts["planned_videos"] = len(jobs)
    return Plan(jobs, failures, counts)


#: how far below the export's fps a video may be and still be exported: NTSC rates (29.97 for
#: 30, 23.976 for 24, 59.94 for 60) repeat one frame in about a thousand, under one in 60 of
#: 16-frame samples, where 25 for 30 repeats one in six
UPSAMPLE_TOLERANCE = 0.002


def _refused_video(
    job: VideoJob, vclips: list[dict[str, Any]], settings: ExportSettings
) -> list[dict[str, Any]] | None:
    """The failures rows of a video the plan cannot take, None when it can: one without a
    manifest caption (``raw``: its prompt would be the empty, unconditional one), one whose
    clips rows hold a frame rate or span no window can be laid over, and one slower than the
    export's fps (its frames would repeat) unless ``allow_upsample``. With ``raw`` the row is
    the video's, otherwise one per selected clip with a prompt (a selected clip without one
    gets its NoPrompt row from :func:`_selected_runs`)."""
    if settings.raw:
        if _raw_caption(vclips) is None:
            return [_video_failure(job, NO_PROMPT, "no manifest caption (source_caption)")]
        used = vclips
    else:
        used = [
            c for c in vclips if _selected(c, settings.include_dropped) and _prompt(c) is not None
        ]
        if not used:
            return None  # nothing to plan: no rows for it here
    ids = [job.video_id] if settings.raw else [c["clip_id"] for c in used]
    problem = _bad_values(vclips[0]["fps"], used)
    if problem is not None:
        return [_id_failure(i, job.uri, INVALID_VALUE, problem) for i in ids]
    fps = float(vclips[0]["fps"])
    if fps < settings.fps * (1 - UPSAMPLE_TOLERANCE) and not settings.allow_upsample:
        why = (
            f"its video is {fps:g} fps, below the export's {settings.fps:g} fps: its samples "
            "would repeat source frames (export at its fps or lower, or pass allow_upsample "
            "(--allow-upsample) to repeat them)"
        )
        return [_id_failure(i, job.uri, UPSAMPLED_SOURCE, why) for i in ids]
    return None


def _bad_values(fps: Any, used: list[dict[str, Any]]) -> str | None:
    """What is wrong with a video's frame rate or its used clips' spans in the clips table,
    None when nothing is."""
    if not _finite_number(fps) or fps <= 0:
        return f"the clips table gives its video fps {fps!r}, not a finite number > 0"
    for c in used:
        start, end = c["start_frame"], c["end_frame"]
        if not (_finite_number(start) and _finite_number(end) and 0 <= start < end):
            return (
                f"the clips table gives clip {c['clip_id']} of its video the span "
                f"[{start!r}, {end!r}), not frames 0 <= start_frame < end_frame"
            )
    return None


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _undecoded_videos(
    run_folder: str | os.PathLike[str], by_video: Mapping[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """``raw``: the run's failures rows of the videos it holds no clips of, restaged."""
    return [
        f
        | {
            "stage": f"{STAGE_RUN}:{f['stage']}",
            "message": f"not decodable in the curate run: {f['message']}",
        }
        for f in read_table(run_folder, "failures").to_pylist()
        if f["input_id"] not in by_video
    ]


def _selected_runs(
    vclips: list[dict[str, Any]], include_dropped: bool
) -> tuple[list[list[Piece]], list[dict[str, Any]]]:
    """One video's runs of selected, prompted clips as pieces, and a failures row for each
    selected clip without a prompt."""
    failures: list[dict[str, Any]] = []
    usable: list[dict[str, Any]] = []
    for c in vclips:
        if not _selected(c, include_dropped):
            continue
        if _prompt(c) is None:
            failures.append(_clip_failure(c, STAGE_PLAN, NO_PROMPT, "no prompt"))
            continue
        usable.append(c)
    runs = [
        [
            Piece(
                c["clip_id"],
                int(c["start_frame"]),
                int(c["end_frame"]),
                _prompt(c) or "",
                c.get("caption_score"),
                c["status"],
                c.get("reason"),
                c.get("recaption_source"),
            )
            for c in run
        ]
        for run in _runs(usable)
    ]
    return runs, failures


def _run_windows(
    job: VideoJob, pieces: list[Piece], fps: float, settings: ExportSettings
) -> tuple[list[Window], list[dict[str, Any]]]:
    """The windows of one run (``L // frames`` of them, centred, without overlap), keys and
    positions left for the plan to set; and a failures row for each clip of the run that no
    window shows, or for all of them when the run is shorter than one window."""
    n = settings.frames
    start, end = pieces[0].start_frame, pieces[-1].end_frame
    total = frames_in_span(start, end, fps, settings.fps)
    count = total // n
    if count == 0:
        return [], _too_short(job, pieces, total, settings)
    offset = (total - count * n) // 2
    idx = source_indices(start, total, fps, settings.fps)
    ends = np.array([p.end_frame for p in pieces])
    piece_idx = np.searchsorted(ends, idx, side="right")
    covered: set[int] = set()
    windows: list[Window] = []
    for w in range(count):
        sl = slice(offset + w * n, offset + (w + 1) * n)
        frame_pieces = tuple(int(i) for i in piece_idx[sl])
        covered.update(frame_pieces)
        windows.append(
            Window(
                key="",
                video_id=job.video_id,
                uri=job.uri,
                source_fps=fps,
                source_frames=tuple(int(i) for i in idx[sl]),
                piece_of_frame=frame_pieces,
                pieces=tuple(pieces),
                position=0,
            )
        )
    failures = [
        _piece_failure(
            p,
            job.uri,
            OUTSIDE_WINDOWS,
            f"its frames lie in the {total - count * n} frames (at "
            f"{settings.fps:g} fps) trimmed off the ends of its run to fit "
            f"{count} window(s) of {n} frames",
        )
        for i, p in enumerate(pieces)
        if i not in covered and p.clip_id is not None and not settings.raw
    ]
    return windows, failures


def _too_short(
    job: VideoJob, pieces: list[Piece], total: int, settings: ExportSettings
) -> list[dict[str, Any]]:
    """The failures rows of a run shorter than one window: its clips', or with ``raw`` the
    video's."""
    n = settings.frames
    if settings.raw:
        return [
            failure_row(
                job.video_id,
                uri=job.uri,
                stage=STAGE_PLAN,
                error_type=RUN_TOO_SHORT,
                message=f"{job.video_id}: {total} frames at {settings.fps:g} fps, "
                f"fewer than one {n}-frame window",
            )
        ]
    return [
        _piece_failure(
            p,
            job.uri,
            RUN_TOO_SHORT,
            f"its run of consecutive selected clips spans {total} frames at "
            f"{settings.fps:g} fps, fewer than one {n}-frame window",
        )
        for p in pieces
        if p.clip_id is not None
    ]


def _capped(job: VideoJob, windows: list[Window], settings: ExportSettings) -> list[dict[str, Any]]:
    """The failures rows of a video past ``max_samples``: its clips', or with ``raw`` its own."""
    ids = [job.video_id] if settings.raw else window_clip_ids(windows)
    return [
        failure_row(
            cid,
            uri=job.uri,
            stage=STAGE_PLAN,
            error_type=SAMPLE_CAP,
            message=f"{cid}: not exported, the plan reached max_samples ({settings.max_samples})",
        )
        for cid in ids
    ]


def window_clip_ids(windows: Sequence[Window]) -> list[str]:
    """Clip ids shown by the windows' frames, in order of appearance."""
    ids: dict[str, None] = {}
    for w in windows:
        for p in w.piece_of_frame:
            cid = w.pieces[p].clip_id
            if cid is not None:
                ids.setdefault(cid)
    return list(ids)


def _raw_caption(vclips: list[dict[str, Any]]) -> str | None:
    """A video's manifest caption (its clips' ``source_caption``), None when it has none."""
    for c in vclips:
        text = c.get("source_caption")
        if isinstance(text, str) and text.strip():
            return text
    return None


def _raw_run(vclips: list[dict[str, Any]]) -> list[Piece]:
    """The whole video, every frame prompted with the manifest caption; the pieces keep the
    clip ids (for the index) but not their prompts."""
    caption = _raw_caption(vclips)
    assert caption is not None  # a video without one is refused before its run is made
    pieces = []
    t = 0
    for c in vclips:
        start = max(int(c["start_frame"]), t)
        end = int(c["end_frame"])
        if end > start:
            pieces.append(Piece(c["clip_id"], start, end, caption, None, "raw", None, "manifest"))
            t = end
    if pieces and pieces[0].start_frame > 0:
        p = pieces[0]
        pieces[0] = Piece(p.clip_id, 0, p.end_frame, p.prompt, None, "raw", None, "manifest")
    return pieces


def _piece_failure(piece: Piece, uri: str, error_type: str, message: str) -> dict[str, Any]:
    assert piece.clip_id is not None
    return _id_failure(piece.clip_id, uri, error_type, message)


def _id_failure(input_id: str, uri: str, error_type: str, message: str) -> dict[str, Any]:
    """A failures row of the plan stage for a clip (or, with ``raw``, a video)."""
    return failure_row(
        input_id,
        uri=uri,
        stage=STAGE_PLAN,
        error_type=error_type,
        message=f"{input_id}: {message}",
    )


def _video_failure(job: VideoJob, error_type: str, message: str) -> dict[str, Any]:
    return _id_failure(job.video_id, job.uri, error_type, message)

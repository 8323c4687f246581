"""Scripts from curated stories tables (``schemas.STORIES_SCHEMA`` rows, as ``curate`` writes
them): one script per row, problems named by story and segment."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.io import SchemaError, read_parquet
from storygen.script.limits import MAX_SEGMENTS, quote
from storygen.script.story import ScriptError, StoryScript, build_script, not_unicode


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond a float's range
        return math.inf


def script_from_stories_row(row: Mapping[str, Any], *, source: str | None = None) -> StoryScript:
    """A script from one ``schemas.STORIES_SCHEMA`` row (problems name story and segment).

    Any mapping gives a script or a :class:`ScriptError`: values of the wrong type, times that
    are not finite and segment lists over :data:`~storygen.script.limits.MAX_SEGMENTS` are
    problems like any other.
    """
    sid = row.get("story_id")
    story = f"story {quote(sid)}"
    uri = row.get("uri")
    source = source or (uri if isinstance(uri, str) else None)
    problems: list[str] = []
    segments = row.get("segments")
    if segments is None:
        segments = []
    elif isinstance(segments, (str, bytes, Mapping)) or not isinstance(segments, Sequence):
        raise ScriptError(source, [f"{story}: segments must be a list, got {quote(segments)}"])
    if len(segments) > MAX_SEGMENTS:
        raise ScriptError(
            source,
            [f"{story}: {len(segments):,} segments, more than the limit of {MAX_SEGMENTS:,}"],
        )
    labels = [f"{story} segment {i}" for i in range(len(segments))]
    raw: list[dict[str, Any] | None] = []
    for seg, label in zip(segments, labels):
        raw.append(_segment(seg, label, problems))
    if not segments:
        problems.append(f"{story}: no segments")
    fps = row.get("fps")
    fps_value = _number(fps)
    if fps is not None and (fps_value is None or not (fps_value > 0 and math.isfinite(fps_value))):
        problems.append(f"{story}: fps must be a positive number, got {quote(fps)}")
        fps_value = None
    duration = row.get("duration_s")
    length_s = _number(duration)
    if duration is not None and (
        length_s is None or not (length_s > 0 and math.isfinite(length_s))
    ):
        problems.append(f"{story}: duration_s must be a positive number, got {quote(duration)}")
        length_s = None
    if sid is not None and not isinstance(sid, (str, int)):
        problems.append(f"{story}: story_id must be text")
        sid = None
    return build_script(
        raw,
        labels,
        problems,
        source=source,
        fps=fps_value,
        story_id=None if sid is None else str(sid),
        length_s=length_s,
    )


def _segment(seg: Any, label: str, problems: list[str]) -> dict[str, Any] | None:
    """One segment of a row as build_script takes it, or None (problems appended)."""
    if not isinstance(seg, Mapping):
        problems.append(f"{label}: expected a segment struct, got {quote(seg)}")
        return None
    missing = [k for k in ("start_s", "end_s", "prompt") if seg.get(k) is None]
    if missing:
        problems.append(f"{label}: missing field(s) {missing}")
        return None
    start, end = _number(seg["start_s"]), _number(seg["end_s"])
    prompt, clip_id, score = seg["prompt"], seg.get("clip_id"), seg.get("score")
    ok = True
    for key, value, number in (("start_s", seg["start_s"], start), ("end_s", seg["end_s"], end)):
        if number is None:
            problems.append(f"{label}: {key} must be a number, got {quote(value)}")
            ok = False
    if not isinstance(prompt, str):
        problems.append(f"{label}: prompt must be text, got {quote(prompt)}")
        ok = False
    if clip_id is not None and not isinstance(clip_id, str):
        problems.append(f"{label}: clip_id must be text, got {quote(clip_id)}")
        ok = False
    if score is not None and _number(score) is None:
        problems.append(f"{label}: score must be a number, got {quote(score)}")
        ok = False
    if not ok:
        return None
    return {
        "start_s": start,
        "end_s": end,
        "prompt": prompt.strip(),
        "clip_id": clip_id,
        "score": None if score is None else _number(score),
    }


def load_parquet(path: Path, story_id: str | None) -> StoryScript:
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise ScriptError(
            str(path),
            [
                "folder holds no .parquet file (a stories table is a .parquet file, or a folder "
                "of the shards curate writes)"
            ],
        )
    try:
        table = read_parquet(path, "stories")
    except SchemaError as exc:
        raise ScriptError(str(path), [str(exc)]) from exc
    except (pa.ArrowException, OSError) as exc:  # a damaged file past its schema
        raise ScriptError(str(path), [f"cannot read the stories table ({exc})"]) from exc
    if table.num_rows == 0:
        raise ScriptError(str(path), ["stories table has no rows"])
    why = not_unicode(story_id) if isinstance(story_id, str) else None
    if why:  # no row holds it (a table is UTF-8), and pyarrow cannot even compare it
        raise ScriptError(str(path), [f"story_id {quote(story_id)} is {why}"])
    try:
        if story_id is None:
            rows = table.slice(0, 1).to_pylist()
        else:
            matches = pc.indices_nonzero(
                pc.fill_null(pc.equal(table["story_id"], story_id), False)
            ).to_pylist()
            rows = table.take(pa.array(matches, pa.int64())).to_pylist()
            if len(rows) > 1:
                uris = [row.get("uri") for row in rows]
                raise ScriptError(str(path), [duplicate_rows(path, story_id, matches, uris)])
    except (pa.ArrowException, KeyError) as exc:
        raise ScriptError(str(path), [f"cannot read the stories table ({exc})"]) from exc
    if not rows:
        ids = table["story_id"].to_pylist()
        shown = ", ".join(quote(i, 40) for i in ids[:20]) + (
            f", … ({len(ids)} in all)" if len(ids) > 20 else ""
        )
        raise ScriptError(
            str(path), [f"no story with story_id {quote(story_id)}; available: {shown}"]
        )
    return script_from_stories_row(rows[0], source=str(path))


def duplicate_rows(path: Path, story_id: str, rows: list[int], uris: list[Any]) -> str:
    """The problem of a story id that more than one row of the table holds, naming the rows
    (in a folder of shards, each row's file and its row there) and their videos."""
    where = [f"row {r}" for r in rows]
    if path.is_dir():  # read_parquet reads the shards in this order, one after another
        try:
            files = sorted(path.glob("*.parquet"))
            ends = list(itertools.accumulate(pq.read_metadata(f).num_rows for f in files))
        except (pa.ArrowException, OSError):
            ends = []
        if ends and ends[-1] > rows[-1]:
            where = []
            for r in rows:
                k = bisect.bisect_right(ends, r)
                where.append(f"{files[k].name} row {r - (ends[k - 1] if k else 0)}")
    where = [
        f"{w} (uri {quote(uri, 60)})" if isinstance(uri, str) else w for w, uri in zip(where, uris)
    ]
    shown = ", ".join(where[:10]) + (f", … ({len(where):,} in all)" if len(where) > 10 else "")
    return (
        f"story_id {quote(story_id)} is on {len(rows):,} rows: {shown}; a stories table holds "
        "each story once, so which one to read is not clear"
    )

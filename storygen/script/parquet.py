"""Scripts from curated stories tables (``schemas.STORIES_SCHEMA`` rows, as ``curate`` writes
them): one script per row, problems named by story and segment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from schemas.io import SchemaError, read_parquet
from storygen.script.story import ScriptError, StoryScript, build_script


def script_from_stories_row(row: Mapping[str, Any], *, source: str | None = None) -> StoryScript:
    """A script from one ``schemas.STORIES_SCHEMA`` row (problems name story and segment)."""
    sid = row.get("story_id")
    segments = list(row.get("segments") or [])
    labels = [f"story {sid!r} segment {i}" for i in range(len(segments))]
    problems: list[str] = []
    raw: list[dict[str, Any] | None] = []
    for seg, label in zip(segments, labels):
        missing = [k for k in ("start_s", "end_s", "prompt") if seg.get(k) is None]
        if missing:
            problems.append(f"{label}: missing field(s) {missing}")
            raw.append(None)
            continue
        raw.append(
            {
                "start_s": float(seg["start_s"]),
                "end_s": float(seg["end_s"]),
                "prompt": str(seg["prompt"]).strip(),
                "clip_id": seg.get("clip_id"),
                "score": seg.get("score"),
            }
        )
    if not segments:
        problems.append(f"story {sid!r}: no segments")
    fps = row.get("fps")
    return build_script(
        raw,
        labels,
        problems,
        source=source or row.get("uri"),
        fps=None if fps is None else float(fps),
        story_id=None if sid is None else str(sid),
        length_s=None if row.get("duration_s") is None else float(row["duration_s"]),
    )


def load_parquet(path: Path, story_id: str | None) -> StoryScript:
    try:
        table = read_parquet(path, "stories")
    except SchemaError as exc:
        raise ScriptError(str(path), [str(exc)]) from exc
    if table.num_rows == 0:
        raise ScriptError(str(path), ["stories table has no rows"])
    if story_id is None:
        rows = table.slice(0, 1).to_pylist()
    else:
        rows = table.filter(pc.equal(table["story_id"], story_id)).to_pylist()
        if not rows:
            ids = table["story_id"].to_pylist()
            shown = ", ".join(map(repr, ids[:20])) + (
                f", … ({len(ids)} in all)" if len(ids) > 20 else ""
            )
            raise ScriptError(
                str(path), [f"no story with story_id {story_id!r}; available: {shown}"]
            )
    return script_from_stories_row(rows[0], source=str(path))

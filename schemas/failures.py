"""Failures rows: the one place a ``FAILURES_SCHEMA`` row is built.

Every input or stage that fails becomes one row naming the input, the stage, the error type
and a one-line message (and, where known, the traceback tail and the manifest file and line).
The manifest readers, the curate steps and the Beam adapters all build their rows here, so the
table has one shape whatever wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the stage of a manifest row the readers could not use
READ_MANIFEST = "read-manifest"


def failure_row(
    input_id: str,
    *,
    stage: str,
    error_type: str,
    message: str,
    uri: str | None = None,
    traceback: str | None = None,
    source: str | None = None,
    source_line: int | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """One failures row (the columns of ``FAILURES_SCHEMA``, in its order)."""
    return {
        "input_id": input_id,
        "uri": uri,
        "stage": stage,
        "error_type": error_type,
        "message": message,
        "traceback": traceback,
        "source": source,
        "source_line": source_line,
        "attempt": attempt,
    }


def video_failure_row(
    video: Mapping[str, Any],
    *,
    stage: str,
    error_type: str,
    message: str,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A failures row about ``video`` (a videos row): its id, uri, manifest position and, when
    the run set one, the attempt it is on (``video["attempt"]``)."""
    return failure_row(
        video.get("video_id") or "?",
        uri=video.get("uri"),
        stage=stage,
        error_type=error_type,
        message=message,
        traceback=traceback,
        source=video.get("source"),
        source_line=video.get("source_line"),
        attempt=video.get("attempt"),
    )

"""A published run: its counts, and the invariant every run must satisfy.

After each run the counts of the published tables are checked against the inputs::

    inputs = videos with clips + videos with failures + rows the manifest reader rejected
             (+ inputs still pending when a run was stopped)

and no video may have both clips and failures rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas import RunManifest, empty_table, read_parquet
from schemas.failures import READ_MANIFEST

#: what each timed stage of a run does, as the summary and the report name it
STAGES: dict[str, str] = {
    "decode": "decode: probe, split scenes, sample frames (child process)",
    "caption": "clean captions",
    "score": "CLIP: scores, embeddings, dedup signatures",
    "captioner": "captioner: a caption per scene",
    "commit": "commit finished videos",
}


#: stage names as people read them, where the metric's name is terse
STAGE_NAMES: dict[str, str] = {"caption": "clean-captions"}


def stage_line(stage_s: dict[str, float]) -> str:
    """``time per stage (summed over workers): score 25.9 s (62%), ...``, largest first."""
    total = sum(stage_s.values()) or 1.0
    return "time per stage (summed over workers): " + ", ".join(
        f"{STAGE_NAMES.get(k, k)} {v:.1f} s ({v / total:.0%})"
        for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1])
    )


@dataclass
class RunSummary:
    """What a run did: its counts, the invariant, and where its time went."""

    output: Path
    counts: dict[str, int]
    invariant_ok: bool
    invariant: str
    wall_s: float
    phase_s: dict[str, float]
    stage_s: dict[str, float]
    stopped: str | None = None
    #: the run's HTML report, once written
    report: Path | None = None

    def timing(self) -> dict[str, Any]:
        """Where the time went, as the report keeps it."""
        return {"wall_s": self.wall_s, "phase_s": self.phase_s, "stage_s": self.stage_s}

    def lines(self) -> list[str]:
        c = self.counts
        out = [
            f"inputs {c.get('inputs', 0)}: {c.get('videos_with_clips', 0)} videos with clips, "
            f"{c.get('videos_failed', 0)} failed, {c.get('manifest_rejected', 0)} manifest rows "
            f"rejected, {c.get('pending', 0)} pending",
            f"clips {c.get('clips', 0)} (kept {c.get('clips_kept', 0)}, dropped "
            f"{c.get('clips_dropped', 0)}); stories {c.get('stories', 0)}; failures rows "
            f"{c.get('failures', 0)}",
            f"invariant: {self.invariant} [{'ok' if self.invariant_ok else 'BROKEN'}]",
            f"shards: {self.output}/{{clips,stories,failures}}/part-*.parquet and "
            f"{self.output}/_manifest.json",
            f"wall time {self.wall_s:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.phase_s.items())
            + ")",
        ]
        if self.stage_s:
            out.append(stage_line(self.stage_s))
        if self.stopped:
            out.append(f"STOPPED: {self.stopped}")
        if self.report is not None:
            out.append(f"report: {self.report}")
        return out


def read_columns(
    run: str | os.PathLike[str],
    manifest: RunManifest,
    table: str,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The ``columns`` of one published table, from the shards its manifest lists (a large
    run's summary and report need not load embeddings)."""
    files = [Path(run) / s.path for s in manifest.shards if s.table == table]
    parts = [read_parquet(f, table, columns=columns) for f in files]
    if not parts:
        empty = empty_table(table)
        return empty.select(list(columns)) if columns is not None else empty
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def summarize(
    output: str | os.PathLike[str], *, wall_s: float, phase_s: dict[str, float]
) -> RunSummary:
    """Counts and the invariant of a published run, from its tables."""
    out = Path(output)
    manifest = RunManifest.read(out)
    counts = dict(manifest.counts)
    clip_videos = set(read_columns(out, manifest, "clips", ["video_id"]).column(0).to_pylist())
    failures = read_columns(out, manifest, "failures", ["input_id", "stage"]).to_pylist()
    failed_videos = {f["input_id"] for f in failures if f["stage"] != READ_MANIFEST}
    rejected = sum(1 for f in failures if f["stage"] == READ_MANIFEST)
    both = clip_videos & failed_videos
    counts["videos_with_clips"] = len(clip_videos)
    counts["videos_failed"] = len(failed_videos)
    total = len(clip_videos) + len(failed_videos) + rejected + counts.get("pending", 0)
    ok = total == counts.get("inputs", -1) and not both
    text = (
        f"inputs {counts.get('inputs')} = {len(clip_videos)} with clips + "
        f"{len(failed_videos)} failed + {rejected} rejected by the manifest reader"
        + (f" + {counts.get('pending')} pending" if counts.get("pending") else "")
        + (f"; {len(both)} videos in both tables: {sorted(both)[:5]}" if both else "")
    )
    return RunSummary(
        output=out,
        counts=counts,
        invariant_ok=ok,
        invariant=text,
        wall_s=wall_s,
        phase_s=phase_s,
        stage_s={},
    )

"""A published run: its counts, and the invariant every run must satisfy.

After each run the counts of the published tables are checked against the inputs::

    inputs = videos with clips + videos with failures + rows the manifest reader rejected
             (+ inputs still pending when a run was stopped)

and no video may have both clips and failures rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas import RunManifest
from schemas.failures import READ_MANIFEST

from . import shards


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
        if self.stopped:
            out.append(f"STOPPED: {self.stopped}")
        return out


def summarize(
    output: str | os.PathLike[str], *, wall_s: float, phase_s: dict[str, float]
) -> RunSummary:
    """Counts and the invariant of a published run, from its tables."""
    out = Path(output)
    manifest = RunManifest.read(out)
    counts = dict(manifest.counts)
    clip_videos = set(shards.read_table(out, "clips").column("video_id").to_pylist())
    failures = shards.read_table(out, "failures").to_pylist()
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

"""A published run folder built straight from a shapes-world corpus' ground truth (no Beam,
no models), so export tests know every clip's exact span and content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate import shards
from schemas import RunManifest, failure_row
from schemas.tables import DROPPED, DUPLICATE, KEPT, LOW_CAPTION_SCORE


def truth_clips(gt: Any) -> list[dict[str, Any]]:
    """One clips row per ground-truth scene: videos with a noisy caption are dropped (low
    caption score), planted duplicates are dropped as duplicates of their original's scene."""
    rows = []
    for v in gt.videos:
        for i, s in enumerate(v.scenes):
            status, reason, dup = KEPT, None, None
            if v.caption_is_noise:
                status, reason = DROPPED, LOW_CAPTION_SCORE
            elif v.duplicate_of is not None:
                status, reason, dup = DROPPED, DUPLICATE, f"{v.duplicate_of}:{i:04d}"
            rows.append(
                {
                    "clip_id": f"{v.video_id}:{i:04d}",
                    "video_id": v.video_id,
                    "scene_index": i,
                    "uri": str(v.path),
                    "start_frame": s.start_frame,
                    "end_frame": s.end_frame,
                    "start_s": s.start_frame / v.fps,
                    "end_s": s.end_frame / v.fps,
                    "fps": v.fps,
                    "width": v.width,
                    "height": v.height,
                    "transition": s.transition_in,
                    "source_caption": v.source_caption,
                    "caption_score": 0.1 if v.caption_is_noise else 0.9,
                    "status": status,
                    "reason": reason,
                    "recaption": s.caption,
                    "recaption_source": "source_fragment",
                    "duplicate_of": dup,
                }
            )
    return rows


def write_run(out: Path, clips: list[dict[str, Any]], failures: list[dict] | None = None) -> Path:
    """Publish ``clips`` (and ``failures``) as a curate run folder."""
    out.mkdir(parents=True, exist_ok=True)
    shards.begin_publish(out)
    infos = [shards.write_shard(out, "clips", 0, 1, clips)]
    if failures:
        infos.append(shards.write_shard(out, "failures", 0, 1, failures))
    shards.publish(out, RunManifest(config={"source": "ground truth"}, shards=infos))
    return out


def run_from_truth(gt: Any, out: Path) -> Path:
    lost = failure_row(
        "lost_video", uri="lost.mp4", stage="probe", error_type="VideoOpenFailure", message="gone"
    )
    return write_run(out, truth_clips(gt), [lost])

"""Published run folders made without a pipeline, for the report's tests: any number of clips,
stories and failures over a few real shapes-world videos (thumbnails decode from them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import shards
from schemas import RunManifest, ShardInfo, rows_to_table, write_parquet
from schemas.tables import CLIPS_SCHEMA, DUPLICATE, LOW_CAPTION_SCORE, STORIES_SCHEMA, TOO_SHORT

SCENES = [
    "a red circle moving left on a navy background",
    "a blue square growing on a beige background",
    "a green star moving up on a black background",
]
FPS = 25.0
SCENE_FRAMES = 40


def make_videos(folder: Path, count: int = 2) -> list[str]:
    from curate.shapes import make_video

    folder.mkdir(parents=True, exist_ok=True)
    return [
        str(make_video(folder / f"v{i}.mp4", SCENES, fps=FPS, scene_frames=SCENE_FRAMES).path)
        for i in range(count)
    ]


def _jpeg(rgb: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), rgb).save(buf, format="JPEG")
    return buf.getvalue()


def fake_run(
    out: Path,
    uris: list[str],
    *,
    videos: int,
    failures: int = 3,
    cutoff: float = 0.5,
    keyframes: bool = False,
) -> dict:
    """A published run of ``videos`` videos with three scenes each: the first kept, the
    second dropped for a low score (or a duplicate of the video before, every 7th video),
    the third too short; a story per video; ``failures`` failed inputs; with ``keyframes``,
    stored JPEG keyframes of one red frame. Returns what it made."""
    rng = np.random.default_rng(0)
    n = videos * len(SCENES)
    vid = [f"v{i:06d}" for i in range(videos) for _ in SCENES]
    scene = [j for _ in range(videos) for j in range(len(SCENES))]
    status, reason, dup = [], [], []
    for i, j in zip(range(n), scene):
        v = i // len(SCENES)
        if j == 0:
            status.append("kept"), reason.append(None), dup.append(None)
        elif j == 1 and v % 7 == 6:
            status.append("dropped"), reason.append(DUPLICATE)
            dup.append(f"v{v - 1:06d}:0000")
        elif j == 1:
            status.append("dropped"), reason.append(LOW_CAPTION_SCORE), dup.append(None)
        else:
            status.append("dropped"), reason.append(TOO_SHORT), dup.append(None)
    scores = np.where(
        np.asarray(scene) == 1, rng.uniform(0.0, cutoff, n), rng.uniform(cutoff, 1, n)
    )
    start = [j * SCENE_FRAMES for j in scene]
    columns = {
        "clip_id": [f"{v}:{j:04d}" for v, j in zip(vid, scene)],
        "video_id": vid,
        "scene_index": scene,
        "uri": [uris[(i // len(SCENES)) % len(uris)] for i in range(n)],
        "start_frame": start,
        "end_frame": [s + SCENE_FRAMES for s in start],
        "start_s": [s / FPS for s in start],
        "end_s": [(s + SCENE_FRAMES) / FPS for s in start],
        "fps": [FPS] * n,
        "width": [160] * n,
        "height": [120] * n,
        "source_caption": [SCENES[j] for j in scene],
        "caption_score": scores.tolist(),
        "status": status,
        "reason": reason,
        "recaption": [SCENES[j] for j in scene],
        "recaption_source": ["source_fragment"] * n,
        "duplicate_of": dup,
    }
    if keyframes:  # stored frames: thumbnails need no video
        frame = _jpeg((200, 30, 30))
        columns["keyframes"] = [[frame, frame, frame]] * n
        columns["keyframe_format"] = ["jpeg"] * n
    clips = pa.Table.from_pydict(
        {f.name: columns.get(f.name, [None] * n) for f in CLIPS_SCHEMA}, schema=CLIPS_SCHEMA
    )
    segments = [
        [
            {
                "start_s": j * SCENE_FRAMES / FPS,
                "end_s": (j + 1) * SCENE_FRAMES / FPS,
                "start_frame": j * SCENE_FRAMES,
                "end_frame": (j + 1) * SCENE_FRAMES,
                "prompt": SCENES[j],
                "clip_id": f"v{v:06d}:{j:04d}",
                "score": 0.7,
                "status": status[v * len(SCENES) + j],
                "reason": reason[v * len(SCENES) + j],
                "prompt_source": "source_fragment",
            }
            for j in range(len(SCENES))
        ]
        for v in range(videos)
    ]
    stories = pa.Table.from_pydict(
        {
            "story_id": [f"v{v:06d}" for v in range(videos)],
            "video_id": [f"v{v:06d}" for v in range(videos)],
            "uri": [uris[v % len(uris)] for v in range(videos)],
            "fps": [FPS] * videos,
            "duration_s": [len(SCENES) * SCENE_FRAMES / FPS] * videos,
            "num_frames": [len(SCENES) * SCENE_FRAMES] * videos,
            "segments": segments,
        },
        schema=STORIES_SCHEMA,
    )
    failure_rows = [
        {
            "input_id": f"bad{i:04d}",
            "uri": f"/nowhere/bad{i}.mp4",
            "stage": "probe",
            "error_type": "CorruptVideo",
            "message": f"bad{i}.mp4: moov atom not found",
        }
        for i in range(failures)
    ]
    shards.begin_publish(out)
    infos = []
    for table, data in (
        ("clips", clips),
        ("stories", stories),
        ("failures", rows_to_table(failure_rows, "failures")),
    ):
        path = out / shards.STAGING_DIR / table / "part-00000-of-00001.parquet"
        write_parquet(data, path, table)
        infos.append(ShardInfo(table=table, path=f"{table}/{path.name}", rows=data.num_rows))
    config = {"model": "models/shapes-clip", "threshold": str(cutoff), "cutoff": cutoff}
    counts = {"inputs": videos + failures, "videos": videos + failures, "pending": 0}
    shards.publish(out, RunManifest(config=config, counts=counts, shards=infos))
    return {
        "clips": n,
        "kept": status.count("kept"),
        "stories": videos,
        "failures": failures,
        "reasons": {r: reason.count(r) for r in set(reason) if r},
    }

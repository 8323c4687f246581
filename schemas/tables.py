"""The pyarrow schemas that join the two halves of storyloom.

Frame spans are half-open: ``start_frame`` is the first frame of a span and ``end_frame`` the
first frame after it; ``start_s = start_frame / fps`` and ``end_s = end_frame / fps``.
"""

from __future__ import annotations

import pyarrow as pa

#: bump when a column is added, removed or changes meaning; written into every Parquet file.
#: A file of the same major version reads (a column added since comes back null), unless its
#: table needs a newer one (:data:`READABLE_SINCE`); another major version gets a clear
#: message. 1.1: failures gained ``attempt``; story segments gained their clips' ``status``,
#: ``reason`` and ``prompt_source``.
SCHEMA_VERSION = "1.1"

#: Parquet metadata keys
META_SCHEMA_VERSION = b"storyloom.schema_version"
META_TABLE = b"storyloom.table"

TIMED_CAPTION = pa.struct(
    [
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

#: one row per input video, as the manifest readers produce them
VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("captions", pa.list_(TIMED_CAPTION)),
        pa.field("duration_s", pa.float64()),
        pa.field("source", pa.string()),
        pa.field("source_line", pa.int64()),
    ]
)

#: clip statuses
KEPT = "kept"
DROPPED = "dropped"
CLIP_STATUSES = (KEPT, DROPPED)

#: reasons a clip is dropped (``reason`` is empty for kept clips)
LOW_CAPTION_SCORE = "low_caption_score"
TOO_SHORT = "too_short"
DUPLICATE = "duplicate"
EMPTY_CAPTION = "empty_caption"
INVALID_CAPTION = "invalid_caption"
DROP_REASONS = (LOW_CAPTION_SCORE, TOO_SHORT, DUPLICATE, EMPTY_CAPTION, INVALID_CAPTION)
#: the drop reasons that say the source caption does not describe the scene
CAPTION_DROP_REASONS = (LOW_CAPTION_SCORE, EMPTY_CAPTION, INVALID_CAPTION)
#: the drop reasons that say the source caption cannot be read at all
UNUSABLE_CAPTION_REASONS = (EMPTY_CAPTION, INVALID_CAPTION)

#: one row per scene
CLIPS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("scene_index", pa.int32(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        # how the scene begins: "start" (first scene), "cut", "fade", "dissolve", "recut"
        pa.field("transition", pa.string()),
        pa.field("detector_score", pa.float64()),
        pa.field("source_caption", pa.string()),
        pa.field("caption_score", pa.float64()),
        pa.field("frame_scores", pa.list_(pa.float32())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("recaption", pa.string()),
        # "source", "source_fragment", "prompt_bank", "captioner"
        pa.field("recaption_source", pa.string()),
        pa.field("recaption_score", pa.float64()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("duplicate_of", pa.string()),
        pa.field("keyframes", pa.list_(pa.binary())),
        pa.field("keyframe_format", pa.string()),
    ]
)

SEGMENT = pa.struct(
    [
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("clip_id", pa.string()),
        pa.field("score", pa.float64()),
        # the status and drop reason of the segment's clips (null in hand-written scripts);
        # only "kept" segments are training data, the others keep the timeline whole
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        # where the prompt came from, as the clips' ``recaption_source``
        pa.field("prompt_source", pa.string()),
    ]
)

#: one row per source video (or hand-written script): a timed prompt sequence
STORIES_SCHEMA = pa.schema(
    [
        pa.field("story_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),
        pa.field("segments", pa.list_(SEGMENT), nullable=False),
    ]
)

#: one row per input or stage that failed
FAILURES_SCHEMA = pa.schema(
    [
        pa.field("input_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("traceback", pa.string()),
        # the manifest file and line (1-based) the input came from, where known
        pa.field("source", pa.string()),
        pa.field("source_line", pa.int64()),
        # how many times a run has tried this input (null for rows the manifest reader
        # rejected: the manifest is read afresh by every run)
        pa.field("attempt", pa.int64()),
    ]
)

#: per table, the oldest schema version its files can be read as, and what changed then;
#: a file written before is refused with that change named (minor versions otherwise read)
READABLE_SINCE: dict[str, tuple[str, str]] = {
    "stories": ("1.1", "story segments gained their clips' status, reason and prompt source"),
}

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS_SCHEMA,
    "clips": CLIPS_SCHEMA,
    "stories": STORIES_SCHEMA,
    "failures": FAILURES_SCHEMA,
}

"""pyarrow schemas, validation and input-manifest readers shared by every storyloom package."""

from .io import (
    SchemaError,
    check_version,
    empty_table,
    read_parquet,
    rows_to_table,
    table_to_rows,
    validate_rows,
    write_parquet,
)
from .manifest import MANIFEST_NAME, RunManifest, ShardInfo
from .manifests import FORMATS, ManifestRead, detect_format, read_manifest
from .stories import StoryError, story_problems, validate_story, validate_story_row
from .tables import (
    CLIP_STATUSES,
    CLIPS_SCHEMA,
    DROP_REASONS,
    DROPPED,
    FAILURES_SCHEMA,
    KEPT,
    SCHEMA_VERSION,
    SCHEMAS,
    SEGMENT,
    STORIES_SCHEMA,
    VIDEOS_SCHEMA,
)

__all__ = [
    "CLIPS_SCHEMA",
    "FORMATS",
    "ManifestRead",
    "detect_format",
    "read_manifest",
    "CLIP_STATUSES",
    "DROPPED",
    "DROP_REASONS",
    "FAILURES_SCHEMA",
    "KEPT",
    "MANIFEST_NAME",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "SEGMENT",
    "STORIES_SCHEMA",
    "VIDEOS_SCHEMA",
    "RunManifest",
    "SchemaError",
    "ShardInfo",
    "StoryError",
    "check_version",
    "empty_table",
    "read_parquet",
    "rows_to_table",
    "story_problems",
    "table_to_rows",
    "validate_rows",
    "validate_story",
    "validate_story_row",
    "write_parquet",
]

"""Shard writing for curation runs: atomic commits, a done-set for resume, the final layout.

A run folder looks like this::

    OUT/
      _manifest.json                    written last; lists every shard with its row count
      clips/part-00000-of-00002.parquet
      clips/part-00001-of-00002.parquet
      stories/part-00000-of-00001.parquet
      failures/part-00000-of-00001.parquet
      _work/w-<digest>.parquet          per-video results, committed as videos finish

Work happens in two phases. The per-video phase (decode, split, sample, score) commits one
``_work`` file per batch of finished videos, under a temporary name renamed into place, so a
killed run loses at most the batch in flight; the video ids in the committed work files are
the *done-set* a rerun skips. The corpus phase (percentile threshold, dedup, stories) is cheap
and always reruns over every committed work file, so its results are the same whether the
per-video work was done in one run or in several. Its shards are written to ``_staging/`` and
swapped in as whole folders; ``_manifest.json`` is removed first and written last, so a reader
that finds a manifest finds exactly the shards it lists.

Everything here is plain pyarrow: no Beam.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import (
    MANIFEST_NAME,
    RunManifest,
    ShardInfo,
    empty_table,
    rows_to_table,
    write_parquet,
)
from schemas.io import read_parquet
from schemas.tables import CLIPS_SCHEMA, FAILURES_SCHEMA, SCHEMA_VERSION, VIDEOS_SCHEMA

from .errors import OutputError

logger = logging.getLogger(__name__)

#: the tables a run publishes, in the order the manifest lists them
TABLES = ("clips", "stories", "failures")
WORK_DIR = "_work"
STAGING_DIR = "_staging"
#: written into work files so an old work folder is never mixed with a newer layout
META_WORK_VERSION = b"storyloom.work_version"
WORK_VERSION = f"{SCHEMA_VERSION}/4"

#: per-clip values the corpus phase needs that are not columns of the clips table
CLIP_EXTRAS = pa.struct(
    [
        pa.field("clip_id", pa.string()),
        pa.field("fragment", pa.string()),
        pa.field("caption_note", pa.string()),
        pa.field("frame_embeddings", pa.list_(pa.list_(pa.float32()))),
        # the storyboard embedding of a model that reads storyboards (re-captioning uses it)
        pa.field("scene_embedding", pa.list_(pa.float32())),
        # the captioner's caption of the scene (when a captioner is configured)
        pa.field("generated_caption", pa.string()),
        # what dedup compares (CLIP embedding + pixel thumbnails), computed while frames exist
        pa.field("dedup_signature", pa.list_(pa.float32())),
    ]
)

#: one row per finished input video: its clips (scored, not yet filtered) or its failures
WORK_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video", pa.struct(list(VIDEOS_SCHEMA))),
        pa.field("clips", pa.list_(pa.struct(list(CLIPS_SCHEMA)))),
        pa.field("clip_extras", pa.list_(CLIP_EXTRAS)),
        pa.field("failures", pa.list_(pa.struct(list(FAILURES_SCHEMA)))),
    ]
)


# --- the output folder ----------------------------------------------------------------------


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and prove it is writable; raise :class:`OutputError` if not.

    Called before any work starts, so an unusable output fails in a second, not after an hour
    of decoding. Permission bits are not trusted (root ignores them): a file is created,
    renamed and removed, as the real commits will do.
    """
    out = Path(path)
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(
                    f"cannot write the output folder: {parent} exists and is not a folder",
                    uri=str(out),
                )
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        os.replace(probe, probe.with_suffix(".done"))
        probe.with_suffix(".done").unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write the output folder: {exc.strerror or exc}", uri=str(out)
        ) from exc
    return out


def clear_run(path: str | os.PathLike[str]) -> None:
    """Remove everything a previous run wrote into ``path`` (for ``--overwrite``).

    Only storyloom's own names are touched, so an output folder given by mistake loses
    nothing else.
    """
    out = Path(path)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in (*TABLES, WORK_DIR, STAGING_DIR):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)


# --- per-video work: commit, read back, done-set --------------------------------------------


def work_file_name(video_ids: Iterable[str]) -> str:
    """A name determined by the batch's ids, so a retried batch overwrites its own file."""
    digest = hashlib.sha1("\n".join(sorted(video_ids)).encode()).hexdigest()[:20]
    return f"w-{digest}.parquet"


def commit_work(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> Path | None:
    """Commit finished videos as one work file (temporary name, then an atomic rename).

    Each record has ``video_id``, ``video`` (a videos row), ``clips`` (clips rows),
    ``clip_extras`` and ``failures`` (failures rows).
    """
    if not records:
        return None
    folder = Path(path) / WORK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "video_id": r["video_id"],
            "video": _fit(r.get("video"), VIDEOS_SCHEMA),
            "clips": [_fit(c, CLIPS_SCHEMA) for c in r.get("clips") or ()],
            "clip_extras": [_fit(e, CLIP_EXTRAS) for e in r.get("clip_extras") or ()],
            "failures": [_fit(f, FAILURES_SCHEMA) for f in r.get("failures") or ()],
        }
        for r in records
    ]
    table = pa.Table.from_pylist(rows, schema=WORK_SCHEMA).replace_schema_metadata(
        {META_WORK_VERSION: WORK_VERSION.encode()}
    )
    target = folder / work_file_name(r["video_id"] for r in records)
    tmp = folder / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return target


def _fit(row: Mapping[str, Any] | None, schema: pa.Schema | pa.StructType) -> dict | None:
    """Keep the schema's fields only (steps carry transient keys such as frames)."""
    if row is None:
        return None
    return {f.name: row.get(f.name) for f in schema}


def work_files(path: str | os.PathLike[str]) -> list[Path]:
    folder = Path(path) / WORK_DIR
    return sorted(folder.glob("w-*.parquet")) if folder.is_dir() else []


def read_work_file(file: str | os.PathLike[str]) -> list[dict[str, Any]]:
    meta = pq.read_schema(file).metadata or {}
    found = meta.get(META_WORK_VERSION, b"").decode()
    if found != WORK_VERSION:
        raise OutputError(
            f"work file written by another storyloom (work version {found or 'none'}, "
            f"expected {WORK_VERSION}); rerun with --overwrite",
            uri=str(file),
        )
    return pq.read_table(file).to_pylist()


def read_work(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every committed video once (a video committed twice, e.g. by a retried bundle, once)."""
    seen: set[str] = set()
    for file in work_files(path):
        for record in read_work_file(file):
            if record["video_id"] not in seen:
                seen.add(record["video_id"])
                yield record


def done_set(path: str | os.PathLike[str]) -> set[str]:
    """Video ids whose per-video work is committed under ``path``."""
    done: set[str] = set()
    for file in work_files(path):
        done.update(pq.read_table(file, columns=["video_id"]).column("video_id").to_pylist())
    return done


#: the per-video settings committed work was done under (reused only under the same ones)
WORK_CONFIG = "_config.json"


def check_work_config(output: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Refuse to mix committed work done under other per-video settings."""
    path = Path(output) / WORK_DIR / WORK_CONFIG
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{WORK_CONFIG}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
        return
    before = json.loads(path.read_text())
    changed = {k: (before.get(k), config.get(k)) for k in config if before.get(k) != config.get(k)}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise OutputError(
            f"the committed work was done with other per-video settings ({what}); "
            "rerun with --overwrite to redo it, or use another output folder",
            uri=str(output),
        )


# --- final shards ---------------------------------------------------------------------------


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def shard_count(rows: int, *, rows_per_shard: int) -> int:
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
    return max(1, -(-rows // rows_per_shard))


def shard_of(key: str, count: int) -> int:
    """A stable shard for ``key`` (Python's ``hash`` changes between processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % count


def write_shard(
    path: str | os.PathLike[str],
    table: str,
    index: int,
    count: int,
    rows: Sequence[Mapping[str, Any]],
    *,
    sort_key: str | Sequence[str] | None = None,
) -> ShardInfo:
    """Write one shard of ``table`` into ``path/_staging/`` (atomic); return its manifest entry."""
    rows = list(rows)
    if sort_key is not None:
        keys = [sort_key] if isinstance(sort_key, str) else list(sort_key)
        rows.sort(key=lambda r: tuple(_sortable(r.get(k)) for k in keys))
    rel = f"{table}/{shard_name(index, count)}"
    write_parquet(rows_to_table(rows, table), Path(path) / STAGING_DIR / rel, table)
    return ShardInfo(table=table, path=rel, rows=len(rows))


def table_counts(table: str, rows: Iterable[Mapping[str, Any]]) -> Counter:
    """The manifest's counts for one shard's rows: rows per table, clips per status and drop
    reason, failures per stage."""
    counts: Counter = Counter()
    for row in rows:
        counts[table] += 1
        if table == "clips":
            counts[f"clips_{row['status']}"] += 1
            if row.get("reason"):
                counts[f"clips_dropped_{row['reason']}"] += 1
        elif table == "failures":
            counts[f"failures_stage_{row['stage']}"] += 1
    return counts


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def begin_publish(path: str | os.PathLike[str]) -> None:
    """Start the corpus phase: clear staging and withdraw the old manifest."""
    out = Path(path)
    staging = out / STAGING_DIR
    if staging.exists():
        shutil.rmtree(staging)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def publish(path: str | os.PathLike[str], manifest: RunManifest) -> Path:
    """Swap the staged table folders in and write ``_manifest.json`` last.

    Every table in :data:`TABLES` gets a folder, holding an empty shard when it has no rows,
    so globbing readers (DuckDB, ``datasets``) always find a file with the schema.
    """
    out = Path(path)
    staging = out / STAGING_DIR
    listed = {s.path for s in manifest.shards}
    for table in TABLES:
        if not any(p.startswith(f"{table}/") for p in listed):
            manifest.shards.append(write_shard(out, table, 0, 1, []))
    for table in TABLES:
        new = staging / table
        old = out / table
        trash = out / f".{table}.old-{uuid.uuid4().hex[:8]}"
        if old.exists():
            os.replace(old, trash)
        os.replace(new, old)
        if trash.exists():
            shutil.rmtree(trash)
    shutil.rmtree(staging, ignore_errors=True)
    manifest.shards.sort(key=lambda s: (TABLES.index(s.table), s.path))
    return manifest.write(out)


def read_table(path: str | os.PathLike[str], table: str) -> pa.Table:
    """One published table of a run, through its manifest (the shards it lists, in order)."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    out = Path(path)
    manifest = RunManifest.read(out)
    files = [out / s.path for s in manifest.shards if s.table == table]
    tables = [read_parquet(f, table) for f in files]
    if not tables:
        return empty_table(table)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@dataclass
class RunFolder:
    """Convenience view of a published run: its manifest and tables."""

    path: Path

    @property
    def manifest(self) -> RunManifest:
        return RunManifest.read(self.path)

    def table(self, name: str) -> pa.Table:
        return read_table(self.path, name)


def count_work_clips(path: str | os.PathLike[str]) -> int:
    """Clips across committed work files, from Parquet metadata alone (nothing decoded)."""
    total = 0
    for file in work_files(path):
        meta = pq.ParquetFile(file).metadata
        schema = meta.schema
        col = next(
            (
                i
                for i in range(len(schema))
                if schema.column(i).path == "clips.list.element.clip_id"
            ),
            None,
        )
        if col is None:
            continue
        for rg in range(meta.num_row_groups):
            chunk = meta.row_group(rg).column(col)
            nulls = chunk.statistics.null_count if chunk.statistics is not None else 0
            total += chunk.num_values - (nulls or 0)
    return total

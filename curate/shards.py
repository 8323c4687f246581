"""Shard writing for curation runs: atomic commits, what a rerun redoes, the final layout.

A run folder looks like this::

    OUT/
      _manifest.json                    written last; lists every shard with its row count
      clips/part-00000-of-00002.parquet
      clips/part-00001-of-00002.parquet
      stories/part-00000-of-00001.parquet
      failures/part-00000-of-00001.parquet
      _work/w-<digest>.parquet          per-video results, committed as videos finish
      _work/_rate-<run>-<process>.json  a worker process' failure counts, while a run with
                                        --max-failure-rate goes (removed when it ends)
      .storyloom.lock                   held while a run writes the folder (curate.run_folder)

Work happens in two phases. The per-video phase (decode, split, sample, score) commits one
``_work`` file per batch of finished videos, under a temporary name renamed into place, so a
killed run loses at most the batch in flight. Each committed video carries the *fingerprint*
of what determined its result (its manifest row, its file's size and modification time, the
per-video settings; :func:`curate.work.fingerprint`) and its attempt number. A rerun skips a
video whose committed fingerprint matches and that did not fail (:func:`resume_plan`); a
changed row or file is redone, and a failed video is tried again unless told not to. The
corpus phase (percentile threshold, dedup, stories) is cheap and always reruns over the
current record of every video, so its results are the same whether the per-video work was
done in one run or in several. Its shards are written to ``_staging/`` and moved into the
table folders file by file, replacing storyloom's own older shards and nothing else;
``_manifest.json`` is removed first and written last, so a reader that finds a manifest finds
exactly the shards it lists.

Everything here is plain pyarrow: no Beam.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
from schemas.io import SchemaError, read_parquet
from schemas.tables import CLIPS_SCHEMA, FAILURES_SCHEMA, SCHEMA_VERSION, VIDEOS_SCHEMA

from .errors import OutputError
from .run_folder import (
    RATE_PREFIX,
    STAGING_DIR,
    TABLES,
    WORK_DIR,
    is_shard,
    remove_old_tables,
    remove_owned,
)

logger = logging.getLogger(__name__)

#: written into work files so an old work folder is never mixed with a newer layout
META_WORK_VERSION = b"storyloom.work_version"
WORK_VERSION = f"{SCHEMA_VERSION}/5"
#: keys a run sets on a videos row it processes (:mod:`.work`; not columns of the videos
#: table): what determined the result (its fingerprint) and the how-manieth attempt it is
FINGERPRINT = "fingerprint"
ATTEMPT = "attempt"

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
        # what determined the result (curate.work.fingerprint), the attempt it came from,
        # and whether the video failed: what a rerun decides by, read without the rest
        pa.field("fingerprint", pa.string()),
        pa.field("attempt", pa.int64()),
        pa.field("failed", pa.bool_()),
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


# --- per-video work: commit, read back, done-set --------------------------------------------


def work_file_name(keys: Iterable[str]) -> str:
    """A name determined by the batch's records (video id, fingerprint and attempt), so a
    retried batch overwrites its own file and a redone video never overwrites its past."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:20]
    return f"w-{digest}.parquet"


def _record_key(record: Mapping[str, Any]) -> str:
    return f"{record['video_id']}\t{record.get('fingerprint')}\t{record.get('attempt')}"


def commit_work(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> Path | None:
    """Commit finished videos as one work file (temporary name, then an atomic rename).

    Each record has ``video_id``, ``video`` (a videos row), ``clips`` (clips rows),
    ``clip_extras``, ``failures`` (failures rows), and the ``fingerprint`` and ``attempt``
    it was made under (see :func:`curate.work.work_record`).
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
            "fingerprint": r.get("fingerprint"),
            "attempt": r.get("attempt"),
            "failed": bool(r.get("failures")),
        }
        for r in records
    ]
    table = pa.Table.from_pylist(rows, schema=WORK_SCHEMA).replace_schema_metadata(
        {META_WORK_VERSION: WORK_VERSION.encode()}
    )
    target = folder / work_file_name(_record_key(r) for r in records)
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


def write_failure_count(
    path: str | os.PathLike[str], run: str, process: str, *, seen: int, failed: int
) -> None:
    """Publish one worker process' counts of run ``run``'s videos, ``seen`` and ``failed``
    (``_work/_rate-<run>-<process>.json``: temporary name, then an atomic rename)."""
    folder = Path(path) / WORK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{RATE_PREFIX}{run}-{process}.json"
    tmp = folder / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"seen": int(seen), "failed": int(failed)}))
    os.replace(tmp, target)


def failure_count(path: str | os.PathLike[str], run: str) -> tuple[int, int]:
    """``(videos seen, videos failed)`` of run ``run``, summed over the counts every worker
    process of the run published (:func:`write_failure_count`)."""
    seen = failed = 0
    folder = Path(path) / WORK_DIR
    for file in sorted(folder.glob(f"{RATE_PREFIX}{run}-*.json")) if folder.is_dir() else []:
        try:
            counts = json.loads(file.read_text())
            seen, failed = seen + int(counts["seen"]), failed + int(counts["failed"])
        except (OSError, ValueError, KeyError, TypeError):  # removed since it was listed
            continue
    return seen, failed


def clear_failure_counts(path: str | os.PathLike[str]) -> None:
    """Remove the failure counts of every run into ``path`` (a new run counts afresh; a
    finished one leaves none behind)."""
    folder = Path(path) / WORK_DIR
    if folder.is_dir():
        for file in folder.glob(f"{RATE_PREFIX}*.json"):
            file.unlink(missing_ok=True)


def _check_work_version(file: str | os.PathLike[str]) -> None:
    meta = pq.read_schema(file).metadata or {}
    found = meta.get(META_WORK_VERSION, b"").decode(errors="replace")
    if found != WORK_VERSION:
        raise OutputError(
            f"work file written by another storyloom (work version {found or 'none'}, "
            f"expected {WORK_VERSION}); rerun with --overwrite",
            uri=str(file),
        )


def read_work_file(file: str | os.PathLike[str]) -> list[dict[str, Any]]:
    _check_work_version(file)
    return pq.read_table(file).to_pylist()


@dataclass(frozen=True)
class WorkEntry:
    """One committed record of a video, as a rerun sees it (without its clips)."""

    file: str
    fingerprint: str | None
    attempt: int
    failed: bool
    #: its row in ``file``
    row: int = 0


def work_index(path: str | os.PathLike[str]) -> dict[str, list[WorkEntry]]:
    """Every committed record under ``path`` by video id, in file order (small columns only)."""
    index: dict[str, list[WorkEntry]] = {}
    for file in work_files(path):
        _check_work_version(file)
        table = pq.read_table(file, columns=["video_id", "fingerprint", "attempt", "failed"])
        columns = [c.to_pylist() for c in table.columns]
        for row, (vid, fp, attempt, failed) in enumerate(zip(*columns, strict=True)):
            entry = WorkEntry(str(file), fp, int(attempt or 0), bool(failed), row)
            index.setdefault(vid, []).append(entry)
    return index


def current_entry(entries: Iterable[WorkEntry], fingerprint: str) -> WorkEntry | None:
    """The record a run publishes for a video: of those made under ``fingerprint``, the latest
    attempt (the first in file order among equals: a retried bundle committed twice)."""
    best: WorkEntry | None = None
    for entry in entries:
        if entry.fingerprint == fingerprint and (best is None or entry.attempt > best.attempt):
            best = entry
    return best


def choose_record(records: Iterable[tuple[str, Mapping[str, Any]]]) -> Mapping[str, Any]:
    """Of ``(file, record)`` pairs of one video under one fingerprint, the one
    :func:`current_entry` names: the highest attempt, then the first file."""
    return min(records, key=lambda fr: (-(fr[1].get("attempt") or 0), fr[0]))[1]


def read_work(
    path: str | os.PathLike[str], keep: Mapping[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """The current record of every committed video (``keep``: only those videos, under those
    fingerprints); without ``keep``, every video's latest attempt."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for file in work_files(path):
        for record in read_work_file(file):
            vid = record["video_id"]
            if keep is not None and keep.get(vid) != record.get("fingerprint"):
                continue
            found.setdefault(vid, []).append((str(file), record))
    for vid in sorted(found):
        yield dict(choose_record(found[vid]))


def done_set(path: str | os.PathLike[str]) -> set[str]:
    """Video ids with any committed record under ``path`` (current or not)."""
    done: set[str] = set()
    for file in work_files(path):
        done.update(pq.read_table(file, columns=["video_id"]).column("video_id").to_pylist())
    return done


@dataclass
class ResumePlan:
    """What a run does with each usable manifest row, given the committed work."""

    #: video id -> the fingerprint it is published under
    fingerprints: dict[str, str]
    #: rows to process, each with its ``fingerprint`` and ``attempt`` set
    todo: list[dict[str, Any]]
    #: videos whose current record is reused
    done: set[str]
    #: of ``todo``: committed under another fingerprint before; failed before, tried again
    changed: int = 0
    retried: int = 0

    def describe(self) -> str:
        detail = [
            f"{n} {what}"
            for n, what in (
                (self.changed, "changed since they were done"),
                (self.retried, "failed before and tried again"),
            )
            if n
        ]
        text = f"{len(self.done)} already done, {len(self.todo)} to process"
        return text + (f" ({', '.join(detail)})" if detail else "")


def resume_plan(
    path: str | os.PathLike[str],
    videos: Sequence[Mapping[str, Any]],
    fingerprints: Mapping[str, str],
    *,
    retry_failed: bool = True,
) -> ResumePlan:
    """Which of ``videos`` a run must process: those without a committed record under their
    current fingerprint, and (with ``retry_failed``) those whose current record failed. Each
    row to process gets its fingerprint and its attempt number (one more than the video's
    attempts so far, whatever they were made under)."""
    index = work_index(path)
    plan = ResumePlan(fingerprints=dict(fingerprints), todo=[], done=set())
    for video in videos:
        vid = video["video_id"]
        entries = index.get(vid, [])
        current = current_entry(entries, fingerprints[vid])
        if current is not None and (not current.failed or not retry_failed):
            plan.done.add(vid)
            continue
        if current is not None:
            plan.retried += 1
        elif entries:
            plan.changed += 1
        attempts = max((e.attempt for e in entries), default=0)
        plan.todo.append({**video, FINGERPRINT: fingerprints[vid], ATTEMPT: attempts + 1})
    return plan


def current_records(path: str | os.PathLike[str], fingerprints: Mapping[str, str]) -> set[str]:
    """The videos of ``fingerprints`` that have a committed record under their fingerprint."""
    index = work_index(path)
    return {
        vid for vid, fp in fingerprints.items() if current_entry(index.get(vid, ()), fp) is not None
    }


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
    remove_owned(out / STAGING_DIR)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def publish(path: str | os.PathLike[str], manifest: RunManifest) -> Path:
    """Move the staged shards into the table folders and write ``_manifest.json`` last.

    Shards of an earlier run that the new ones do not replace are removed; anything else in a
    table folder (a file storyloom did not write) stays. Every table in :data:`TABLES` gets a
    shard, an empty one when it has no rows, so globbing readers (DuckDB, pandas, pyarrow)
    always find a file with the schema. ``datasets`` does not read a table with no rows: it
    refuses a shard of 0 rows.
    """
    out = Path(path)
    staging = out / STAGING_DIR
    listed = {s.path for s in manifest.shards}
    for table in TABLES:
        if not any(p.startswith(f"{table}/") for p in listed):
            manifest.shards.append(write_shard(out, table, 0, 1, []))
    for table in TABLES:
        folder = out / table
        folder.mkdir(exist_ok=True)
        new = {Path(s.path).name for s in manifest.shards if s.table == table}
        for old in list(folder.iterdir()):
            if old.name not in new and is_shard(old, table):
                old.unlink()
        for name in sorted(new):
            os.replace(staging / table / name, folder / name)
    remove_owned(staging)
    remove_old_tables(out)  # left by an older storyloom's publish that was killed
    manifest.shards.sort(key=lambda s: (TABLES.index(s.table), s.path))
    return manifest.write(out)


def publish_written(
    path: str | os.PathLike[str],
    written: Iterable[tuple[ShardInfo, Mapping[str, int]] | None],
    *,
    config: Mapping[str, Any],
    counts: Mapping[str, int],
) -> tuple[Path, int]:
    """:func:`publish` the shards a run's writers returned (``(info, counts)``, or None where
    a writer had nothing), the writers' counts added to ``counts``; returns the manifest's
    path and the number of shards written."""
    total: Counter = Counter(counts)
    infos = []
    for item in written:
        if item is None:
            continue
        info, c = item
        infos.append(info)
        total.update(c)
    manifest = RunManifest(config=dict(config), counts=dict(total), shards=infos)
    return publish(path, manifest), len(infos)


def read_table(path: str | os.PathLike[str], table: str) -> pa.Table:
    """One published table of a run, through its manifest (the shards it lists, in order)."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    out = Path(path)
    manifest = RunManifest.read(out)
    root = out.resolve()
    files = []
    for shard in manifest.shards:
        if shard.table != table:
            continue
        file = out / shard.path
        if not file.resolve().is_relative_to(root):  # a link out of the folder
            raise SchemaError(
                f"{out / MANIFEST_NAME}: shard {shard.path} is outside the run folder"
            )
        files.append(file)
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
    return sum(work_file_clips(pq.ParquetFile(file).metadata) for file in work_files(path))


def work_file_clips(meta: pq.FileMetaData) -> int:
    """Clips in one work file, from its Parquet metadata."""
    return leaf_count(meta, "clips.list.element.clip_id")


def leaf_count(meta: pq.FileMetaData, path: str) -> int:
    """Non-null values of one (nested) column of a Parquet file, from its metadata alone:
    ``path`` is the column's dotted path, e.g. ``"failures.list.element.input_id"``."""
    schema = meta.schema
    col = next((i for i in range(len(schema)) if schema.column(i).path == path), None)
    if col is None:
        return 0
    total = 0
    for rg in range(meta.num_row_groups):
        chunk = meta.row_group(rg).column(col)
        nulls = chunk.statistics.null_count if chunk.statistics is not None else 0
        total += chunk.num_values - (nulls or 0)
    return total

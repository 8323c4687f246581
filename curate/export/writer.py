"""The output folder: shards filled in plan order and written atomically with fixed tar
headers, a part record after each, what a rerun keeps (the finished parts) and removes (the
rest), and the published index, failures and ``_export.json``."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import rows_to_table

from .codec import Encoded
from .plan import Plan
from .settings import (
    EXPORT_NAME,
    FAILURES_NAME,
    INDEX_NAME,
    INDEX_SCHEMA,
    PARTS_DIR,
    RUN_TOO_SHORT,
    SAMPLE_CAP,
    TAR_MODE,
    TAR_MTIME,
    UPSAMPLED_SOURCE,
    ExportSettings,
)

logger = logging.getLogger(__name__)

#: how the shards' tar headers are written (and counted, for ``shard_bytes``)
TAR_FORMAT: Final = tarfile.GNU_FORMAT
TAR_ENCODING = tarfile.ENCODING
TAR_ERRORS = "surrogateescape"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A member's header, its fields fixed (so the same samples give the same bytes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add one member with fixed header fields; returns the offset of its data in the tar."""
    tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    return tar.offset - len(data) - (-len(data) % tarfile.BLOCKSIZE)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _sample_bytes(sample: Encoded) -> int:
    """What one sample adds to a tar: each member's header as written (a name over 100
    characters adds GNU long-name blocks), data and padding."""
    total = 0
    for name, size in (
        (f"{sample.key}.json", len(_json_bytes(sample.meta))),
        (f"{sample.key}.mp4", len(sample.mp4)),
    ):
        header = _tar_info(name, size).tobuf(TAR_FORMAT, TAR_ENCODING, TAR_ERRORS)
        total += len(header) + size + (-size % tarfile.BLOCKSIZE)
    return total


def _tar_bytes(member_bytes: int) -> int:
    """The size of a tar whose members take ``member_bytes``: end blocks, then the record."""
    total = member_bytes + 2 * tarfile.BLOCKSIZE
    return total + (-total % tarfile.RECORDSIZE)


def _member_bytes(samples: Sequence[Encoded]) -> int:
    """The tar's size for these samples (headers, padding, end blocks)."""
    return _tar_bytes(sum(_sample_bytes(s) for s in samples))


def write_tar(path: Path, samples: Sequence[Encoded]) -> list[int]:
    """Write one shard (temporary name, then rename); returns each sample's mp4 data offset."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    offsets = []
    try:
        with (
            open(tmp, "wb") as fh,
            tarfile.open(
                fileobj=fh, mode="w", format=TAR_FORMAT, encoding=TAR_ENCODING, errors=TAR_ERRORS
            ) as tar,
        ):
            for s in samples:
                _tar_member(tar, f"{s.key}.json", _json_bytes(s.meta))
                offsets.append(_tar_member(tar, f"{s.key}.mp4", s.mp4))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offsets


def index_row(shard: str, sample: Encoded, offset: int) -> dict[str, Any]:
    meta = sample.meta
    segs = meta["segments"]
    counts: dict[int, int] = {}
    for i, s in enumerate(segs):
        counts[i] = counts.get(i, 0) + s["end_frame"] - s["start_frame"]
    main = segs[max(counts, key=lambda i: (counts[i], -i))]
    return {
        "shard": shard,
        "key": sample.key,
        "clip_id": main["clip_id"],
        "prompt": main["prompt"],
        "frames": meta["frames"],
        "video_id": meta["video_id"],
        "uri": meta["uri"],
        "clip_ids": meta["clip_ids"],
        "start_frame": meta["source"]["start_frame"],
        "end_frame": meta["source"]["end_frame"],
        "fps": meta["fps"],
        "width": meta["width"],
        "height": meta["height"],
        "segments": segs,
        "mp4_offset": offset,
        "mp4_bytes": len(sample.mp4),
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def clear_export(out: str | os.PathLike[str]) -> None:
    """Remove what an export wrote into ``out`` (its own names only)."""
    folder = Path(out)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if re.fullmatch(r"\.?shard-\d{6}\.tar(\.tmp-.*)?", p.name) or p.name in (
            INDEX_NAME,
            FAILURES_NAME,
            EXPORT_NAME,
        ):
            p.unlink()
    shutil.rmtree(folder / PARTS_DIR, ignore_errors=True)


def load_parts(out: Path) -> list[dict[str, Any]]:
    """The part records of finished shards, in order; anything after a gap is discarded."""
    parts_dir = out / PARTS_DIR
    parts: list[dict[str, Any]] = []
    for i in range(1_000_000):
        path = parts_dir / f"part-{i:06d}.json"
        if not path.exists():
            break
        record = json.loads(path.read_text())
        shard = record.get("shard")
        if shard is not None and not (out / shard).exists():
            break
        parts.append(record)
    return parts


def prune(out: Path, parts: list[dict[str, Any]]) -> None:
    """Remove shards, part records and temporary files no finished part accounts for."""
    keep_shards = {p["shard"] for p in parts if p.get("shard")}
    for p in out.iterdir():
        if (re.fullmatch(r"shard-\d{6}\.tar", p.name) and p.name not in keep_shards) or (
            p.name.startswith(".shard-") and ".tmp-" in p.name
        ):
            p.unlink()
    for p in (out / PARTS_DIR).glob("part-*.json"):
        if int(p.stem.split("-")[1]) >= len(parts):
            p.unlink()
    for p in (out / PARTS_DIR).glob(".*"):
        p.unlink()


class ShardWriter:
    """Fills shards in plan order; each full shard is written, then its part record."""

    def __init__(self, out: Path, settings: ExportSettings, parts: int, shards: int) -> None:
        self.out, self.settings = out, settings
        self.part, self.shard = parts, shards
        self.samples: list[Encoded] = []
        #: what the samples take in the tar (:func:`_sample_bytes`), kept as they come
        self.bytes = 0
        self.failures: list[dict[str, Any]] = []
        self.next = 0

    def _full_with(self, size: int) -> bool:
        s = self.settings
        if s.samples_per_shard is not None and len(self.samples) + 1 > s.samples_per_shard:
            return True
        return s.shard_bytes is not None and _tar_bytes(self.bytes + size) > s.shard_bytes

    def add(self, sample: Encoded, *, next_position: int) -> str | None:
        written = None
        size = _sample_bytes(sample)
        if self.samples and self._full_with(size):
            written = self._close(final=False)
        limit = self.settings.shard_bytes
        if limit is not None and _tar_bytes(size) > limit:
            logger.warning(
                "sample %s: %d bytes as a tar alone, over shard_bytes (%d): shard %s holds it "
                "alone and passes the limit",
                sample.key,
                _tar_bytes(size),
                limit,
                shard_name(self.shard),
            )
        self.samples.append(sample)
        self.bytes += size
        self.next = next_position
        return written

    def _close(self, *, final: bool) -> str | None:
        name = None
        rows: list[dict[str, Any]] = []
        if self.samples:
            name = shard_name(self.shard)
            offsets = write_tar(self.out / name, self.samples)
            rows = [index_row(name, s, o) for s, o in zip(self.samples, offsets)]
            self.shard += 1
        record = {
            "shard": name,
            "samples": rows,
            "failures": self.failures,
            "next": self.next,
            "final": final,
        }
        write_json_atomic(self.out / PARTS_DIR / f"part-{self.part:06d}.json", record)
        self.part += 1
        self.samples, self.failures, self.bytes = [], [], 0
        return name

    def finish(self) -> None:
        self._close(final=True)


#: a hint per failure type, for the message of an export that holds no sample
EMPTY_HINTS = {
    RUN_TOO_SHORT: "runs shorter than one window: fewer frames (--frames) or a lower --fps",
    SAMPLE_CAP: "the cap takes whole videos, and the first video in the export's order has "
    "more windows than max_samples (--max-samples)",
    UPSAMPLED_SOURCE: "sources slower than the export fps: a lower --fps, or --allow-upsample",
}


@dataclass
class ExportSummary:
    out: Path
    samples: int
    shards: int
    bytes: int
    failures: int
    counts: dict[str, int]
    resumed_from: int = 0
    #: failures rows per error type
    failure_types: dict[str, int] = field(default_factory=dict)
    raw: bool = False

    def lines(self) -> list[str]:
        c = self.counts
        lines = [
            f"export {self.out}: {self.samples} samples in {self.shards} shards "
            f"({self.bytes / 1e6:.2f} MB)"
        ]
        if self.raw:  # raw exports and fails whole videos
            lines.append(
                f"  videos exported {c.get('videos_exported', 0)}, failed "
                f"{c.get('videos_failed', 0)} (of {c.get('input_videos', 0)}: "
                f"{c.get('run_videos', 0)} with clips, {c.get('undecoded_videos', 0)} that "
                "the curate run could not decode)"
            )
        else:
            lines.append(
                f"  clips exported {c.get('clips_exported', 0)}, failed "
                f"{c.get('clips_failed', 0)}, not selected {c.get('clips_not_selected', 0)} "
                f"(of {c.get('run_clips', 0)})"
            )
        over = c.get("shards_over_limit", 0)
        if over:
            lines.append(
                f"  {over} shard(s) pass shard_bytes: each holds one sample larger than it"
            )
        types = self._types()
        lines.append(
            f"  failures {self.failures}{f' ({types})' if types else ''}; "
            f"index {self.out / INDEX_NAME}"
        )
        return lines

    def _types(self) -> str:
        ranked = sorted(self.failure_types.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{name} {n}" for name, n in ranked)

    def why_empty(self) -> str:
        """Why the export holds no sample, from its counts and failures (one line)."""
        c = self.counts
        if not c.get("run_clips"):
            undecoded = c.get("undecoded_videos", 0)
            return "the run holds no clips" + (
                f" ({undecoded} videos it could not decode)" if undecoded else ""
            )
        types = self._types()
        failed = f"{c.get('videos_failed' if self.raw else 'clips_failed', 0)} failed" + (
            f" ({types})" if types else ""
        )
        if self.raw:
            what = f"none of the run's {c.get('input_videos', 0)} videos gave a sample: {failed}"
        else:
            unselected = c.get("clips_not_selected", 0)
            what = (
                f"none of the run's {c.get('run_clips', 0)} clips is in a sample: {failed}, "
                f"{unselected} not selected"
            )
            if unselected:
                what += " (include_dropped (--include-dropped) exports dropped clips)"
        hints = [EMPTY_HINTS[t] for t in sorted(self.failure_types) if t in EMPTY_HINTS]
        return what + "".join(f"; {hint}" for hint in hints) + f"; {FAILURES_NAME} says why"


def publish(
    out: Path, plan: Plan, settings: ExportSettings, identity: dict[str, Any]
) -> ExportSummary:
    parts = load_parts(out)
    rows = [r for p in parts for r in p["samples"]]
    failures = plan.failures + [f for p in parts for f in p["failures"]]
    index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    write_parquet_atomic(out / INDEX_NAME, index)
    write_parquet_atomic(out / FAILURES_NAME, rows_to_table(failures, "failures"))
    shards = []
    for p in parts:
        if p["shard"]:
            path = out / p["shard"]
            shards.append(
                {
                    "path": p["shard"],
                    "samples": len(p["samples"]),
                    "bytes": path.stat().st_size,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            )
    exported = {c for r in rows for c in r["clip_ids"] if c is not None}
    failed = {f["input_id"] for f in failures}
    counts = dict(plan.counts)
    videos = {r["video_id"] for r in rows}
    counts.update(
        samples=len(rows),
        shards=len(shards),
        bytes=sum(s["bytes"] for s in shards),
        frames=sum(r["frames"] for r in rows),
        failures=len(failures),
        videos_exported=len(videos),
    )
    if settings.shard_bytes is not None:
        counts["shards_over_limit"] = sum(s["bytes"] > settings.shard_bytes for s in shards)
    if settings.raw:  # the failures rows are videos'
        counts["videos_failed"] = len(failed - videos)
        counts["input_videos"] = plan.counts["run_videos"] + plan.counts.get("undecoded_videos", 0)
    else:
        counts["clips_exported"] = len(exported)
        counts["clips_failed"] = len(failed - exported)
        counts["clips_not_selected"] = plan.counts["run_clips"] - len(exported | failed)
    manifest = {
        **identity,
        "counts": counts,
        "failure_types": dict(sorted(Counter(f["error_type"] for f in failures).items())),
        "shards": shards,
        "index": INDEX_NAME,
        "failures": FAILURES_NAME,
    }
    write_json_atomic(out / EXPORT_NAME, manifest)
    return summary_of(out, manifest)


def summary_of(out: Path, manifest: Mapping[str, Any]) -> ExportSummary:
    c = manifest["counts"]
    return ExportSummary(
        out=out,
        samples=c["samples"],
        shards=c["shards"],
        bytes=c["bytes"],
        failures=c["failures"],
        counts=dict(c),
        failure_types=dict(manifest.get("failure_types", {})),
        raw=bool(manifest.get("settings", {}).get("raw", False)),
    )

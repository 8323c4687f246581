"""Reading a finished export: ``_export.json``, its shards in order, the samples of any tar
shards (streamed with :mod:`tarfile`), and its failures."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .settings import EXPORT_NAME, FAILURES_NAME, ExportError

log = logging.getLogger(__name__)


def read_export(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``_export.json`` of a finished export."""
    path = Path(folder) / EXPORT_NAME
    if not path.exists():
        raise ExportError("no _export.json: not a finished curate export", uri=str(folder))
    return json.loads(path.read_text())


def shard_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """The shards of a finished export, in order."""
    folder = Path(folder)
    return [folder / s["path"] for s in read_export(folder)["shards"]]


def shard_samples(folder: str | os.PathLike[str]) -> list[int]:
    """How many samples each shard of a finished export holds (``_export.json``), in the
    order of :func:`shard_paths`: what :func:`iter_samples` checks a shard against."""
    return [int(s["samples"]) for s in read_export(folder)["shards"]]


def iter_samples(
    paths: Iterable[str | os.PathLike[str]],
    *,
    expected: Iterable[int | None] | None = None,
    warn: bool = True,
) -> Iterator[dict[str, Any]]:
    """``{"__key__", "json", "mp4"}`` per sample, streaming each tar with :mod:`tarfile`.

    A damaged shard does not end the stream: a ``json`` member that does not parse is handed
    out as ``None`` (the reader skips the sample), and a tar that ends early or is corrupt
    gives the samples read whole before the damage, then the next shard; both are logged
    with the shard's path. ``expected``: each shard's sample count, as ``_export.json``
    lists it (:func:`shard_samples`; None where unknown), in the order of ``paths``: a shard
    that gives another number of whole samples (cut short at a sample's end, overwritten,
    missing) is logged too. ``warn=False`` logs none of it (a reader that reads the same
    shards again and has said so already)."""
    counts = iter(expected) if expected is not None else None
    for path in paths:
        listed = next(counts, None) if counts is not None else None
        current: dict[str, Any] = {}
        read = 0
        damage = None
        try:
            with tarfile.open(path, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if current and current["__key__"] != key:
                        read += 1
                        yield current
                        current = {}
                    fh = tar.extractfile(member)
                    assert fh is not None
                    data = fh.read()
                    current["__key__"] = key
                    current[ext] = (
                        _json_or_none(path, member.name, data, warn) if ext == "json" else data
                    )
        except (tarfile.TarError, EOFError, OSError) as exc:
            # the sample being read may miss members: it is dropped with the rest
            damage = exc
            current = {}
        if current:
            read += 1
            yield current
        if not warn:
            continue
        of = f" of the {listed} _export.json lists" if listed is not None else ""
        if damage is not None:
            log.warning(
                "%s: shard is damaged after the %d samples read so far%s (%s)",
                path,
                read,
                of,
                damage,
            )
        elif listed is not None and read != listed:
            log.warning(
                "%s: %d samples read, _export.json lists %d: the shard was cut short or "
                "changed after the export",
                path,
                read,
                listed,
            )


def _json_or_none(path: Any, name: str, data: bytes, warn: bool = True) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # bad JSON or bad UTF-8
        if warn:
            log.warning("%s: %s is not JSON (%s)", path, name, exc)
        return None


def read_failures(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return pq.read_table(Path(folder) / FAILURES_NAME).to_pylist()

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


def iter_samples(paths: Iterable[str | os.PathLike[str]]) -> Iterator[dict[str, Any]]:
    """``{"__key__", "json", "mp4"}`` per sample, streaming each tar with :mod:`tarfile`.

    A damaged shard does not end the stream: a ``json`` member that does not parse is handed
    out as ``None`` (the reader skips the sample), and a tar that ends early or is corrupt
    gives the samples read whole before the damage, then the next shard; both are logged
    with the shard's path."""
    for path in paths:
        current: dict[str, Any] = {}
        try:
            with tarfile.open(path, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if current and current["__key__"] != key:
                        yield current
                        current = {}
                    fh = tar.extractfile(member)
                    assert fh is not None
                    data = fh.read()
                    current["__key__"] = key
                    current[ext] = _json_or_none(path, member.name, data) if ext == "json" else data
        except (tarfile.TarError, EOFError, OSError) as exc:
            # the sample being read may miss members: it is dropped with the rest
            log.warning("%s: shard is damaged after the samples read so far (%s)", path, exc)
            continue
        if current:
            yield current


def _json_or_none(path: Any, name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # bad JSON or bad UTF-8
        log.warning("%s: %s is not JSON (%s)", path, name, exc)
        return None


def read_failures(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return pq.read_table(Path(folder) / FAILURES_NAME).to_pylist()

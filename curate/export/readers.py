"""Reading a finished export: ``_export.json``, its shards in order, the samples of any tar
shards (streamed with :mod:`tarfile`), and its failures."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .settings import EXPORT_NAME, FAILURES_NAME, ExportError


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
    """``{"__key__", "json", "mp4"}`` per sample, streaming each tar with :mod:`tarfile`."""
    for path in paths:
        with tarfile.open(path, mode="r|") as tar:
            current: dict[str, Any] = {}
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
                current[ext] = json.loads(data) if ext == "json" else data
            if current:
                yield current


def read_failures(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return pq.read_table(Path(folder) / FAILURES_NAME).to_pylist()

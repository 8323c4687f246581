"""The corpus phase's scratch folder (``OUT/_corpus``): where its steps' files go, and the
atomic writes every step uses (a reader never sees half a file, a killed step leaves only a
``.tmp-`` file that the next plan clears)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def dedup_dir(scratch: Path) -> Path:
    """Kept clips' signatures and dedup columns, per chunk (then one store)."""
    return scratch / "dedup"


def part_path(scratch: Path, table: str, part: int, shard: int) -> Path:
    """One chunk's sorted rows of one table's output shard."""
    return scratch / "spill" / table / f"c-{part:05d}-s-{shard:05d}.parquet"


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _atomic_json(value: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _atomic_npy(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)

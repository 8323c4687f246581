"""The ``_manifest.json`` written beside every run's shards."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .io import SchemaError, check_version
from .tables import SCHEMA_VERSION

MANIFEST_NAME = "_manifest.json"


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("storyloom")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


@dataclass
class ShardInfo:
    table: str  # "clips" | "stories" | "failures"
    path: str  # relative to the run folder
    rows: int


@dataclass
class RunManifest:
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION
    code_version: str = field(default_factory=code_version)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "manifest") -> "RunManifest":
        """A manifest from parsed JSON, every field checked: a :class:`SchemaError` names the
        first that is wrong. Shard paths must stay inside the run folder (relative, no
        ``..``), so a tampered manifest cannot point a reader at another file."""

        def bad(what: str) -> SchemaError:
            return SchemaError(f"{where}: malformed run manifest ({what})")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, str):
            raise bad(f"schema_version must be a string, got {version!r:.40}")
        check_version(version, where)
        config = data.get("config", {})
        counts = data.get("counts", {})
        shards = data.get("shards", [])
        if not isinstance(config, dict):
            raise bad("config must be an object")
        if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
        ):
            raise bad("counts must map names to integers")
        if not isinstance(shards, list):
            raise bad("shards must be a list")
        infos = []
        for i, s in enumerate(shards):
            if not isinstance(s, dict) or set(s) != {"table", "path", "rows"}:
                raise bad(f"shards[{i}] must have table, path and rows")
            table, path, rows = s["table"], s["path"], s["rows"]
            if not isinstance(table, str) or not isinstance(path, str):
                raise bad(f"shards[{i}].table and .path must be strings")
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise bad(f"shards[{i}].rows must be a count, got {rows!r:.40}")
            if not inside(path):
                raise bad(f"shards[{i}].path {path!r:.80} is outside the run folder")
            infos.append(ShardInfo(table=table, path=path, rows=rows))
        return cls(
            config=dict(config),
            counts=dict(counts),
            shards=infos,
            schema_version=version,
            code_version=str(data.get("code_version", "unknown")),
            created_at=str(data.get("created_at", "")),
        )

    def write(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> "RunManifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.exists():
            raise SchemaError(f"{path}: no run manifest (is {folder} a curate output folder?)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SchemaError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where=str(path))


def inside(relative: str) -> bool:
    """Whether a manifest's shard path names a file inside the run folder."""
    parts = PurePosixPath(relative).parts
    return (
        bool(relative)
        and "\\" not in relative
        and "\x00" not in relative
        and not PurePosixPath(relative).is_absolute()
        and ".." not in parts
    )

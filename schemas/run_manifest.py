"""The ``_manifest.json`` written beside every run's shards."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
    def from_dict(cls, data: dict[str, Any], *, where: str = "manifest") -> "RunManifest":
        check_version(data.get("schema_version"), where)
        try:
            shards = [ShardInfo(**s) for s in data.get("shards", [])]
            return cls(
                config=dict(data.get("config", {})),
                counts={k: int(v) for k, v in data.get("counts", {}).items()},
                shards=shards,
                schema_version=data["schema_version"],
                code_version=data.get("code_version", "unknown"),
                created_at=data.get("created_at", ""),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise SchemaError(f"{where}: malformed run manifest ({exc})") from exc

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
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, where=str(path))

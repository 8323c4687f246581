"""Row <-> table helpers, Parquet I/O with a schema-version check, and row validation."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .tables import META_SCHEMA_VERSION, META_TABLE, READABLE_SINCE, SCHEMA_VERSION, SCHEMAS


class SchemaError(ValueError):
    """A table, file or row does not match its schema. The message names where and what."""


def _schema(kind: str | pa.Schema) -> tuple[str, pa.Schema]:
    if isinstance(kind, pa.Schema):
        name = (kind.metadata or {}).get(META_TABLE, b"table").decode()
        return name, kind
    if kind not in SCHEMAS:
        raise SchemaError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}")
    return kind, SCHEMAS[kind]


def _check_value(value: Any, typ: pa.DataType, nullable: bool, path: str) -> str | None:
    """Return a problem description for ``value`` against ``typ``, or None if it fits."""
    if value is None:
        return None if nullable else f"{path} is required but missing (null)"
    if pa.types.is_string(typ):
        if not isinstance(value, str):
            return f"{path} must be a string, got {type(value).__name__} {value!r:.80}"
    elif pa.types.is_integer(typ):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{path} must be an integer, got {type(value).__name__} {value!r:.80}"
    elif pa.types.is_floating(typ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{path} must be a number, got {type(value).__name__} {value!r:.80}"
        if value != value:  # NaN
            return f"{path} must be a number, got NaN"
    elif pa.types.is_binary(typ):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return f"{path} must be bytes, got {type(value).__name__}"
    elif pa.types.is_list(typ):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            return f"{path} must be a list, got {type(value).__name__} {value!r:.80}"
        if (
            pa.types.is_floating(typ.value_type)
            and isinstance(value, list)
            and all(type(v) is float and v == v for v in value)
        ):
            return None  # a list of plain floats, none NaN: what embeddings are (fast path)
        for i, item in enumerate(value):
            problem = _check_value(item, typ.value_type, True, f"{path}[{i}]")
            if problem:
                return problem
    elif pa.types.is_struct(typ):
        if not isinstance(value, Mapping):
            return f"{path} must be a mapping, got {type(value).__name__} {value!r:.80}"
        for field in typ:
            problem = _check_value(
                value.get(field.name), field.type, field.nullable, f"{path}.{field.name}"
            )
            if problem:
                return problem
        extra = set(value) - {f.name for f in typ}
        if extra:
            return f"{path} has unknown keys {sorted(extra)}"
    return None


def validate_rows(
    rows: Sequence[Mapping[str, Any]], kind: str | pa.Schema, *, where: str = ""
) -> None:
    """Raise :class:`SchemaError` naming the first bad row, column and value."""
    name, schema = _schema(kind)
    prefix = f"{where}: " if where else ""
    names = set(schema.names)
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise SchemaError(f"{prefix}{name} row {i}: unknown columns {sorted(unknown)}")
        for field in schema:
            problem = _check_value(row.get(field.name), field.type, field.nullable, field.name)
            if problem:
                raise SchemaError(f"{prefix}{name} row {i}: {problem}")


def rows_to_table(
    rows: Iterable[Mapping[str, Any]], kind: str | pa.Schema, *, validate: bool = True
) -> pa.Table:
    """Build a table of ``kind`` from dict rows (missing nullable columns become null)."""
    name, schema = _schema(kind)
    rows = list(rows)
    if validate:
        validate_rows(rows, kind)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    return table.replace_schema_metadata(_metadata(name))


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _metadata(name: str) -> dict[bytes, bytes]:
    return {META_SCHEMA_VERSION: SCHEMA_VERSION.encode(), META_TABLE: name.encode()}


def stamped_schema(kind: str) -> pa.Schema:
    """The schema of ``kind`` with the metadata :func:`write_parquet` stamps a file with (for
    a writer that writes a table row group by row group)."""
    name, schema = _schema(kind)
    return schema.with_metadata(_metadata(name))


def empty_table(kind: str) -> pa.Table:
    name, schema = _schema(kind)
    return schema.empty_table().replace_schema_metadata(_metadata(name))


def write_parquet(table: pa.Table, path: str | os.PathLike[str], kind: str) -> Path:
    """Write ``table`` atomically (temporary name, then rename), stamped with the schema version."""
    name, schema = _schema(kind)
    if not table.schema.remove_metadata().equals(schema, check_metadata=False):
        raise SchemaError(
            f"{path}: table does not match the {name} schema:\n"
            f"got      {table.schema.remove_metadata()}\nexpected {schema}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table.replace_schema_metadata(_metadata(name)), tmp)
    os.replace(tmp, path)
    return path


def _version_tuple(text: str) -> tuple[int, ...] | None:
    try:
        parts = tuple(int(x) for x in text.split("."))
    except ValueError:
        return None
    return parts if parts else None


def check_version(found: str | None, path: str | os.PathLike[str], kind: str | None = None) -> None:
    """Refuse a file of another major version, or a ``kind`` table older than the version
    its readers need (:data:`~schemas.tables.READABLE_SINCE`), with a message saying what to do."""
    if found is None:
        raise SchemaError(
            f"{path}: not a storyloom table (no {META_SCHEMA_VERSION.decode()} in its metadata)"
        )
    if not isinstance(found, str) or _version_tuple(found) is None:
        raise SchemaError(f"{path}: unreadable schema version {found!r:.40}")
    if found != SCHEMA_VERSION:
        here = _version_tuple(SCHEMA_VERSION)
        there = _version_tuple(found)
        assert here is not None and there is not None
        if there[0] != here[0]:
            older = there < here
            age = "an older" if older else "a newer"
            raise SchemaError(
                f"{path}: written with schema version {found}, this storyloom reads "
                f"{SCHEMA_VERSION}; the file comes from {age} storyloom"
                + (" (re-run curate to rewrite it)" if older else " (upgrade storyloom)")
            )
    if kind in READABLE_SINCE:
        since, change = READABLE_SINCE[kind]
        if (_version_tuple(found) or ()) < (_version_tuple(since) or ()):
            raise SchemaError(
                f"{path}: a {kind} table of schema version {found}, from before {since} "
                f"({change}); run `curate run` again with --overwrite to rewrite it"
            )


def conform(table: pa.Table, kind: str, path: str | os.PathLike[str]) -> pa.Table:
    """``table`` (read from ``path``) with exactly the columns of ``kind``, in order.

    A nullable column the file lacks comes back null (a file from an older minor version, or
    a column that is null throughout); a required column it lacks, or a column of another
    type, is a :class:`SchemaError` naming the column.
    """
    name, schema = _schema(kind)
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{path}: the {name} table lacks its column {field.name!r}")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise SchemaError(
                    f"{path}: column {field.name!r} is {column.type}, the {name} table has "
                    f"{field.type}"
                ) from None
        if not field.nullable and column.null_count:
            raise SchemaError(f"{path}: column {field.name!r} holds nulls, it is required")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema).replace_schema_metadata(_metadata(name))


def _read_file(f: Path, kind: str | None, columns: Sequence[str] | None) -> pa.Table:
    """One file's table: all of ``kind``'s columns (conformed), or just ``columns`` (a column
    an older file lacks comes back null)."""
    if columns is None:
        table = pq.read_table(f)
        return conform(table, kind, f) if kind is not None else table
    present = set(pq.read_schema(f).names)
    table = pq.read_table(f, columns=[c for c in columns if c in present])
    if kind is None:
        return table
    _, schema = _schema(kind)
    out = []
    for name in columns:
        if name in present:
            out.append(table.column(name))
        elif name in schema.names and schema.field(name).nullable:
            out.append(pa.nulls(table.num_rows, schema.field(name).type))
        else:
            raise SchemaError(f"{f}: the {kind} table lacks its column {name!r}")
    return pa.Table.from_arrays(out, names=list(columns))


def read_parquet(
    path: str | os.PathLike[str],
    kind: str | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read a storyloom Parquet file (or folder of them), checking version and table kind.

    With ``kind``, the table comes back with exactly that table's columns (see
    :func:`conform`), so files of older minor versions read alongside current ones;
    ``columns``: only these (a report over a large run need not load embeddings).
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        if kind is not None:
            table = empty_table(kind)
            return table.select(list(columns)) if columns is not None else table
        raise SchemaError(f"{path}: folder holds no .parquet file")
    tables = []
    for f in files:
        try:
            meta = pq.read_schema(f).metadata or {}
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{f}: not a Parquet file ({exc})") from exc
        version = meta.get(META_SCHEMA_VERSION)
        found = meta.get(META_TABLE, b"").decode(errors="replace")
        check_version(version.decode(errors="replace") if version else None, f, found)
        if kind is not None and found != kind:
            raise SchemaError(f"{f}: holds a {found!r} table, expected {kind!r}")
        try:
            table = _read_file(f, kind, columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{f}: unreadable Parquet file ({exc})") from exc
        tables.append(table)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

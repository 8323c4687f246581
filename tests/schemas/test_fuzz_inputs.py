"""Fuzzing the input-manifest readers: any bytes give rows and failures rows, or a
``SchemaError`` about the whole file; never another exception, and within a time and memory
bound."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import SchemaError, read_manifest, validate_rows
from schemas.inputs import ManifestLimits, read_folder, read_jsonl, read_webvid_csv

HEADER = b"videoid,contentUrl,duration,page_dir,name\n"
#: per example: wall time and the peak of Python allocations
TIME_BOUND_S = 2.0
MEMORY_BOUND = 64 << 20

FUZZ = settings(
    max_examples=100,
    database=None,
    deadline=None,  # the bound is checked below, with a clearer message
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# text that stresses CSV and JSON: quotes, separators, brackets, line breaks, odd characters
TRICKY = st.lists(
    st.sampled_from([*'",\n\r{}[]:\\ ab1.-\ufeff\x00é\u2028', '""', "NaN", "1e400", "a.mp4"]),
    max_size=40,
).map("".join)


def _json_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


def _rows_like_ours():
    """JSON objects shaped like manifest rows, with any value in any field."""
    value = _json_values()
    caption = st.fixed_dictionaries(
        {}, optional={"start": value, "end": value, "text": value, "x": value}
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "video_id": st.one_of(st.text(max_size=10), value),
            "uri": st.one_of(st.text(max_size=10), value),
            "caption": st.one_of(st.text(max_size=20), value),
            "captions": st.one_of(st.lists(caption, max_size=3), value),
            "duration": value,
        },
    )


def _check(read, path: Path) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = read(path)
    except SchemaError:
        result = None
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < TIME_BOUND_S, f"{elapsed:.2f} s for {path.stat().st_size} bytes"
    assert peak < MEMORY_BOUND, f"{peak / 1e6:.0f} MB for {path.stat().st_size} bytes"
    if result is None:
        return
    validate_rows(result.videos, "videos")
    validate_rows(result.failures, "failures")
    ids = [v["video_id"] for v in result.videos]
    assert len(ids) == len(set(ids))


@FUZZ
@given(body=st.binary(max_size=400))
def test_webvid_csv_any_bytes(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("csv") / "w.csv"
    path.write_bytes(HEADER + body)
    _check(read_webvid_csv, path)


@FUZZ
@given(lines=st.lists(st.lists(TRICKY, min_size=0, max_size=7), max_size=8))
def test_webvid_csv_tricky_fields(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("csv") / "w.csv"
    path.write_bytes(HEADER + "\n".join(",".join(fields) for fields in lines).encode())
    _check(read_webvid_csv, path)


@FUZZ
@given(body=st.binary(max_size=400))
def test_jsonl_any_bytes(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("jsonl") / "m.jsonl"
    path.write_bytes(body)
    _check(read_jsonl, path)


@FUZZ
@given(rows=st.lists(st.one_of(_rows_like_ours(), _json_values()), max_size=6))
def test_jsonl_any_json_values(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("jsonl") / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _check(read_jsonl, path)
    result = read_jsonl(path)
    non_blank = sum(1 for r in rows)
    assert result.inputs == non_blank  # one row or one failures row per line


@FUZZ
@given(
    depth=st.integers(min_value=1, max_value=300_000),
    opener=st.sampled_from(["[", '{"a":']),
)
def test_jsonl_any_nesting_depth(tmp_path_factory, depth, opener):
    closer = "]" if opener == "[" else "}"
    value = opener * depth + "1" + closer * depth
    path = tmp_path_factory.mktemp("jsonl") / "m.jsonl"
    row = '{"video_id": "a", "uri": "a.mp4", "caption": "x", "extra": ' + value + "}"
    path.write_text(row + "\n")
    _check(read_jsonl, path)
    limit = ManifestLimits().max_json_depth
    (got,) = [*read_jsonl(path).videos, *read_jsonl(path).failures]
    assert ("nested deeper" in got.get("message", "")) == (depth + 1 > limit)


@FUZZ
@given(
    sidecar=st.one_of(st.binary(max_size=300), _rows_like_ours().map(lambda r: json.dumps(r))),
    kind=st.sampled_from([".json", ".txt"]),
)
def test_folder_any_sidecar(tmp_path_factory, sidecar, kind):
    root = tmp_path_factory.mktemp("folder")
    (root / "v.mp4").write_bytes(b"\x00")
    data = sidecar if isinstance(sidecar, bytes) else sidecar.encode()
    (root / f"v{kind}").write_bytes(data)
    _check(read_folder, root)
    assert read_folder(root).inputs == 1


@FUZZ
@given(body=st.binary(max_size=300))
def test_read_manifest_any_file(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("any") / "manifest"
    path.write_bytes(body)
    _check(read_manifest, path)

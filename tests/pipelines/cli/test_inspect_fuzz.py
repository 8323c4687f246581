"""``curate inspect`` on folders it did not write, or that were tampered with: a report or a
``SchemaError`` naming the problem, never another exception, and never a file outside the
run folder."""

from __future__ import annotations

import contextlib
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from pipelines.cli.inspect import report
from schemas import RunManifest, SchemaError, rows_to_table, write_parquet
from schemas.tables import META_SCHEMA_VERSION, META_TABLE, SCHEMA_VERSION

FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _clip(i: int, score: float | None = 0.5) -> dict:
    return {
        "clip_id": f"v:{i:04d}",
        "video_id": "v",
        "scene_index": i,
        "uri": "v.mp4",
        "start_frame": 10 * i,
        "end_frame": 10 * i + 10,
        "start_s": float(i),
        "end_s": float(i + 1),
        "fps": 10.0,
        "width": 4,
        "height": 4,
        "status": "kept",
        "caption_score": score,
    }


def _run_folder(tmp_path, clips=None, manifest=None):
    out = tmp_path / "run"
    (out / "clips").mkdir(parents=True, exist_ok=True)
    write_parquet(
        rows_to_table(clips if clips is not None else [_clip(0)], "clips"),
        out / "clips" / "part-00000-of-00001.parquet",
        "clips",
    )
    data = manifest or {
        "schema_version": SCHEMA_VERSION,
        "config": {"cutoff": 0.4},
        "counts": {"inputs": 1},
        "shards": [{"table": "clips", "path": "clips/part-00000-of-00001.parquet", "rows": 1}],
    }
    (out / "_manifest.json").write_text(json.dumps(data))
    return out


def test_a_manifest_that_is_not_an_object_is_named(tmp_path, capsys):
    out = _run_folder(tmp_path, manifest=[])
    (out / "_manifest.json").write_text("[]")
    assert main(["inspect", str(out)]) == 2
    assert "_manifest.json: malformed run manifest (not a JSON object)" in capsys.readouterr().err


def test_a_shard_path_outside_the_run_folder_is_refused(tmp_path, capsys):
    secret = tmp_path / "elsewhere.parquet"
    write_parquet(rows_to_table([_clip(0)], "clips"), secret, "clips")
    for path in (str(secret), "../elsewhere.parquet", "clips/../../elsewhere.parquet"):
        out = _run_folder(
            tmp_path,
            manifest={
                "schema_version": SCHEMA_VERSION,
                "shards": [{"table": "clips", "path": path, "rows": 1}],
            },
        )
        assert main(["inspect", str(out)]) == 2
        assert "outside the run folder" in capsys.readouterr().err


def test_a_shard_missing_a_column_is_named(tmp_path, capsys):
    out = _run_folder(tmp_path)
    shard = out / "clips" / "part-00000-of-00001.parquet"
    table = pq.read_table(shard)
    pq.write_table(
        table.drop_columns(["status"]).replace_schema_metadata(table.schema.metadata), shard
    )
    assert main(["inspect", str(out)]) == 2
    assert "lacks its column 'status'" in capsys.readouterr().err


def test_nan_scores_are_left_out_of_the_histogram(tmp_path):
    out = _run_folder(tmp_path)
    shard = out / "clips" / "part-00000-of-00001.parquet"
    rows = [_clip(0, 0.2), _clip(1, 0.8), _clip(2, None)]
    table = pa.Table.from_pylist(rows, schema=rows_to_table(rows, "clips").schema)
    scores = pa.array([0.2, math.nan, 0.7], pa.float64())
    table = table.set_column(table.schema.get_field_index("caption_score"), "caption_score", scores)
    pq.write_table(
        table.replace_schema_metadata(
            {META_SCHEMA_VERSION: SCHEMA_VERSION.encode(), META_TABLE: b"clips"}
        ),
        shard,
    )
    text = report(out)
    assert "caption scores (2 scored clips, 1 not a number)" in text


def _values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=12,
    )


def _manifests():
    shard = st.fixed_dictionaries(
        {},
        optional={
            "table": st.one_of(st.sampled_from(["clips", "stories", "failures", "x"]), _values()),
            "path": st.one_of(
                st.sampled_from(
                    ["clips/part-00000-of-00001.parquet", "../x.parquet", "/etc/passwd", ""]
                ),
                _values(),
            ),
            "rows": _values(),
        },
    )
    return st.one_of(
        _values(),
        st.fixed_dictionaries(
            {"schema_version": st.one_of(st.just(SCHEMA_VERSION), _values())},
            optional={
                "config": st.one_of(
                    st.fixed_dictionaries({}, optional={"cutoff": _values(), "model": _values()}),
                    _values(),
                ),
                "counts": st.one_of(st.dictionaries(st.text(max_size=8), _values()), _values()),
                "shards": st.one_of(st.lists(shard, max_size=3), _values()),
                "created_at": _values(),
            },
        ),
    )


@FUZZ
@given(manifest=_manifests())
def test_inspect_any_manifest(tmp_path_factory, manifest):
    out = _run_folder(tmp_path_factory.mktemp("fuzz"), manifest={"x": 1})
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with contextlib.suppress(SchemaError):
        assert isinstance(report(out), str)


@FUZZ
@given(data=st.binary(max_size=300), keep=st.integers(min_value=0, max_value=2000))
def test_inspect_any_shard_bytes(tmp_path_factory, data, keep):
    out = _run_folder(tmp_path_factory.mktemp("fuzz"))
    shard = out / "clips" / "part-00000-of-00001.parquet"
    real = shard.read_bytes()
    shard.write_bytes(real[:keep] + data)  # a cut or garbled shard
    with contextlib.suppress(SchemaError):
        assert isinstance(report(out), str)


def test_run_manifest_from_dict_checks_every_field():
    with pytest.raises(SchemaError, match="shards\\[0\\].rows"):
        RunManifest.from_dict(
            {
                "schema_version": SCHEMA_VERSION,
                "shards": [{"table": "clips", "path": "c", "rows": "x"}],
            }
        )

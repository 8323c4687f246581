"""The same curate pipeline on Beam's DaskRunner (a local two-worker cluster) and locally.

On Dask the per-video phase and the corpus phase's keyed steps run on the cluster (see
``pipelines.curate.run_corpus_phase``).
"""

from __future__ import annotations

import json
import logging

import pytest

from curate import shards
from pipelines.curate import run
from pipelines.options import runner_flags
from tests.pipelines.fakes import fake_components, write_fake_corpus

SPECS = {
    **{f"v{i:02d}": (f"scenes={1 + i % 3}", f"clip {i} score 0.{i % 9 + 1}") for i in range(10)},
    "copy": ("scenes=3;look=v08", "copy score 0.95"),
    "segv": ("crash", "x"),
    "gone": (None, "y"),
}


def _rows(out, table):
    key = {"clips": "clip_id", "stories": "story_id", "failures": "input_id"}[table]
    return sorted(shards.read_table(out, table).to_pylist(), key=lambda r: r[key])


@pytest.mark.integration
@pytest.mark.allow_error_logs  # distributed logs lost connections at shutdown
def test_dask_runner_matches_the_local_runner(tmp_path):
    from dask.distributed import LocalCluster

    manifest = write_fake_corpus(tmp_path / "in", SPECS)
    common = [f"--input={manifest}", "--threshold=p30"]
    local = run(
        [*runner_flags("local"), *common, f"--output={tmp_path / 'local'}"],
        components=fake_components(),
        progress=False,
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        dask = run(
            [
                *runner_flags("dask"),
                f"--dask_client_address={cluster.scheduler_address}",
                "--dask_npartitions=4",
                *common,
                f"--output={tmp_path / 'dask'}",
            ],
            components=fake_components(),
            progress=False,
        )
    assert local.invariant_ok and dask.invariant_ok, (local.invariant, dask.invariant)
    manifests = [
        json.loads((tmp_path / name / "_manifest.json").read_text()) for name in ("local", "dask")
    ]
    assert manifests[0]["counts"] == manifests[1]["counts"]
    assert manifests[0]["config"]["cutoff"] == manifests[1]["config"]["cutoff"], [
        m["config"]["cutoff"] for m in manifests
    ]
    for table in ("clips", "stories", "failures"):
        a = _rows(tmp_path / "local", table)
        b = _rows(tmp_path / "dask", table)
        diff = [
            {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)} for x, y in zip(a, b) if x != y
        ]
        assert len(a) == len(b) and not diff, (table, diff[:3])
    story_ids = {r["story_id"] for r in _rows(tmp_path / "dask", "stories")}
    assert len({"v08", "copy"} & story_ids) == 1  # one of the two copies keeps its story
    assert len(_rows(tmp_path / "dask", "failures")) == 2
    assert any(r["reason"] == "duplicate" for r in _rows(tmp_path / "dask", "clips"))

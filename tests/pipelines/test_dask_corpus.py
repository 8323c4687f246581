"""On Dask the corpus phase's keyed steps run in the cluster's worker processes, not in the
launcher (``pipelines.curate.run_corpus_phase``); with the local runner, in the launcher."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from pipelines.curate import run
from pipelines.options import runner_flags
from tests.pipelines.fakes import FakeRecaptioner, fake_components, write_fake_corpus

SPECS = {f"v{i:02d}": (f"scenes={1 + i % 3}", f"clip {i} score 0.{i % 9 + 1}") for i in range(8)}


class PidRecaptioner(FakeRecaptioner):
    """The fake re-captioner, noting the process each instance is set up in."""

    def __init__(self, log: str) -> None:
        self.log = log

    def setup(self) -> None:
        super().setup()
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")


def _components(log):
    return dataclasses.replace(
        fake_components(), recaptioner=PidRecaptioner, recaptioner_kwargs={"log": str(log)}
    )


def _pids(log) -> set[int]:
    return {int(line) for line in log.read_text().split()}


def test_the_local_runner_recaptions_in_the_launcher(tmp_path):
    manifest = write_fake_corpus(tmp_path / "in", SPECS)
    log = tmp_path / "pids"
    summary = run(
        [*runner_flags("local"), f"--input={manifest}", f"--output={tmp_path / 'out'}"],
        components=_components(log),
        progress=False,
    )
    assert summary.invariant_ok
    assert _pids(log) == {os.getpid()}


@pytest.mark.integration
@pytest.mark.allow_error_logs  # distributed logs lost connections at shutdown
def test_on_dask_the_corpus_steps_run_on_the_workers(tmp_path):
    from dask.distributed import Client, LocalCluster

    manifest = write_fake_corpus(tmp_path / "in", SPECS)
    log = tmp_path / "pids"
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        with Client(cluster) as client:
            workers = set(client.run(os.getpid).values())
        summary = run(
            [
                *runner_flags("dask"),
                f"--dask_client_address={cluster.scheduler_address}",
                "--dask_npartitions=4",
                f"--input={manifest}",
                f"--output={tmp_path / 'out'}",
            ],
            components=_components(log),
            progress=False,
        )
    assert summary.invariant_ok
    pids = _pids(log)
    assert len(workers) == 2 and os.getpid() not in workers
    assert pids and pids <= workers

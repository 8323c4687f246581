"""``curate run`` against a real Dask cluster started from the command line, as a user runs it.

A ``dask scheduler`` and two ``dask worker`` processes on loopback (no ``LocalCluster``); the
``curate`` command points at the scheduler with ``--dask-address``. One worker is killed with
SIGKILL while videos are being processed: Dask moves its tasks to the other worker, and the
run must complete with the same tables as the local runner on the same corpus.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate import shards

ROOT = Path(__file__).resolve().parents[2]
DASK = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
CURATE = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _rows(out: Path, table: str) -> list[dict]:
    key = {"clips": "clip_id", "stories": "story_id", "failures": "input_id"}[table]
    rows = shards.read_table(out, table).to_pylist()
    return sorted(rows, key=lambda r: str(r[key]))


def _committed(out: Path) -> int:
    """Work files committed so far (each holds ``commit_every`` videos)."""
    work = out / "_work"
    return sum(1 for _ in work.glob("w-*.parquet")) if work.is_dir() else 0


@pytest.mark.integration
@pytest.mark.allow_error_logs
def test_a_cluster_from_the_command_line_survives_a_killed_worker(tmp_path):
    env = _env()
    corpus = tmp_path / "corpus"
    subprocess.run(
        [
            *CURATE,
            "synth",
            "--out",
            str(corpus),
            "--videos",
            "16",
            "--seed",
            "5",
            "--resolutions",
            "284x160",
            "--no-progress",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    manifest = corpus / "webvid.csv"
    # small commits (two videos each) so that the worker dies with most of the run ahead
    common = ["--input", str(manifest), "--no-progress"]
    beam = ["--", "--commit_every=2"]
    local = subprocess.run(
        [*CURATE, "run", *common, "--output", str(tmp_path / "local"), *beam],
        env=env,
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stderr[-3000:]

    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for_port(port)
        address = f"tcp://127.0.0.1:{port}"
        for name in ("w0", "w1"):
            procs.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        name,
                    ],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        out = tmp_path / "dask"
        run = subprocess.Popen(
            [
                *CURATE,
                "run",
                *common,
                "--output",
                str(out),
                "--runner",
                "dask",
                "--dask-address",
                address,
                *beam,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        killed, at_kill = False, 0
        deadline = time.monotonic() + 600
        while run.poll() is None and time.monotonic() < deadline:
            if not killed and (at_kill := _committed(out)) >= 1:
                procs[1].send_signal(signal.SIGKILL)  # worker w0, mid-run
                killed = True
            time.sleep(0.2)
        output = run.communicate(timeout=60)[0]
        assert run.returncode == 0, output[-3000:]
        assert killed, "the run ended before a worker could be killed"
        assert at_kill < _committed(out), "the worker died after the last commit"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    for table in ("clips", "stories", "failures"):
        a, b = _rows(tmp_path / "local", table), _rows(out, table)
        diff = [(x, y) for x, y in zip(a, b) if not _same(x, y)]
        assert len(a) == len(b) and not diff, (table, len(a), len(b), diff[:1])


def _same(x: object, y: object) -> bool:
    """Equal, floats within 1e-5 (CLIP batches differ between runners: float rounding)."""
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return x == y

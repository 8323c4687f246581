"""The isolated decoder process: crashes, hangs and errors become data, and the worker recovers."""

from __future__ import annotations

import signal

import pytest

from curate.errors import VideoOpenFailure
from curate.isolation import IsolatedWorker, IsolatedWorkerError
from tests.pipelines.fakes import FakeDecoder


def _video(tmp_path, name: str, content: str | None) -> dict:
    path = tmp_path / f"{name}.mp4"
    if content is not None:
        path.write_text(content)
    return {"video_id": name, "uri": str(path), "caption": "x"}


def test_segfault_becomes_an_outcome_and_the_worker_restarts(tmp_path):
    with IsolatedWorker(FakeDecoder, {}, timeout_s=30) as worker:
        first_pid = worker.pid
        crashed = worker.call(_video(tmp_path, "boom", "crash"))
        assert crashed.crashed and not crashed.ok
        assert crashed.error_type == "DecoderCrash"
        assert f"signal {int(signal.SIGSEGV)} (SIGSEGV)" in crashed.message
        # the next call gets a fresh child and a real result
        ok = worker.call(_video(tmp_path, "good", "scenes=2"))
        assert ok.ok, ok.message
        assert [c["scene_index"] for c in ok.value] == [0, 1]
        assert ok.value[0]["frames"].shape == (2, 4, 4, 3)
        assert worker.pid != first_pid
        assert worker.restarts == 1


def test_domain_errors_keep_their_type_and_fields(tmp_path):
    with IsolatedWorker(FakeDecoder, {}, timeout_s=30) as worker:
        out = worker.call(_video(tmp_path, "gone", None))
    assert not out.ok and not out.crashed
    assert isinstance(out.error, VideoOpenFailure)
    assert out.error.video_id == "gone" and out.error.reason == "no such file"
    assert "VideoOpenFailure" in out.traceback


def test_a_hang_is_killed_after_the_timeout(tmp_path):
    with IsolatedWorker(FakeDecoder, {}, timeout_s=1.0) as worker:
        out = worker.call(_video(tmp_path, "stuck", "hang"))
        assert out.timed_out and out.error_type == "DecoderTimeout"
        assert "1 s" in out.message
        assert worker.call(_video(tmp_path, "fine", "scenes=1")).ok


def test_bad_settings_fail_at_start_not_per_video():
    with pytest.raises(IsolatedWorkerError, match="setup failed: TypeError"):
        IsolatedWorker(FakeDecoder, {"no_such_setting": 1}).start()


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="-1"):
        IsolatedWorker(FakeDecoder, {}, timeout_s=-1)

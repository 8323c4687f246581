"""Every bad input gets its own error, naming the file, quickly, without leaking a decoder."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from curate.errors import VideoError
from curate.video import FrameReader, probe, read_frames
from tests.badvideos import EXPECTED_ERRORS, MIN_FRAMES, make_bad_videos

#: each bad input must be classified within this many seconds (they take milliseconds)
TIME_LIMIT_S = 3.0


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    return make_bad_videos(tmp_path_factory.mktemp("bad"))


def test_every_fixture_exists_except_missing(bad_videos):
    assert set(bad_videos) == set(EXPECTED_ERRORS)
    for name, path in bad_videos.items():
        assert (path.exists() or path.is_symlink()) == (name != "missing"), name
    assert bad_videos["zero_byte"].stat().st_size == 0


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_probe_raises_the_expected_error(bad_videos, name):
    path = bad_videos[name]
    t0 = time.perf_counter()
    with pytest.raises(VideoError) as err:
        probe(path, min_frames=MIN_FRAMES)
    elapsed = time.perf_counter() - t0
    assert type(err.value) is EXPECTED_ERRORS[name], (name, err.value)
    assert err.value.uri == str(path)
    assert str(path) in str(err.value)
    assert err.value.reason and "\n" not in err.value.reason
    assert elapsed < TIME_LIMIT_S, f"{name}: {elapsed:.2f} s"


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_frame_reader_and_read_frames_raise_the_same_error(bad_videos, name):
    if name == "one_frame":
        # a valid video: it fails only where two frames are needed
        with FrameReader(bad_videos[name]) as reader:
            assert sum(len(i) for i, _ in reader) == 1
        return
    with pytest.raises(EXPECTED_ERRORS[name]), FrameReader(bad_videos[name]) as reader:
        list(reader)
    with pytest.raises(EXPECTED_ERRORS[name]):
        read_frames(bad_videos[name], [0])


def test_absurd_size_reports_the_declared_size(bad_videos):
    with pytest.raises(EXPECTED_ERRORS["absurd_size"], match="100000x100000"):
        probe(bad_videos["absurd_size"])
    with pytest.raises(EXPECTED_ERRORS["huge_size"], match="16000x16000"):
        probe(bad_videos["huge_size"])
    # a limit set by the caller applies to good files too
    with pytest.raises(EXPECTED_ERRORS["huge_size"], match="64x48"):
        probe(bad_videos["one_frame"], max_pixels=1000)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_no_descriptor_leak_over_many_attempts(bad_videos):
    """200 attempts on every bad input (and 200 reads of a good one) leave no file open."""
    gc.collect()
    before = _open_fds()
    for _ in range(200):
        for name, path in bad_videos.items():
            try:
                probe(path, min_frames=MIN_FRAMES)
            except VideoError:
                pass
            else:
                raise AssertionError(f"{name} was accepted")
        with FrameReader(bad_videos["one_frame"]) as reader:
            for _ in reader:
                pass
    gc.collect()
    assert _open_fds() <= before + 2  # slack for the interpreter's own descriptors


def test_errors_pickle_with_their_fields(bad_videos):
    import pickle

    with pytest.raises(VideoError) as err:
        probe(bad_videos["audio_only"])
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is type(err.value)
    assert (again.uri, again.reason, again.stage) == (
        err.value.uri,
        err.value.reason,
        err.value.stage,
    )

"""Probing and decoding: sizes, exact frame times (29.97, VFR), chunked reading, random
access, and truncated files."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from curate.errors import TooFewFrames, TruncatedVideo, VideoOpenFailure
from curate.video import FrameReader, VideoInfo, probe, read_frames, target_size
from tests.badvideos import encode_into


def write_video(
    path: Path,
    colors: list[int],
    *,
    size: tuple[int, int] = (96, 64),
    rate: Fraction = Fraction(25),
    pts_ms: list[int] | None = None,
    fmt: str = "mp4",
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> Path:
    """An h264 mp4 whose frame ``i`` is grey level ``colors[i]`` below a barcode of ``i`` (8
    black/white blocks across the top half), so a decoded frame tells which frame it is.
    ``pts_ms`` gives irregular times (VFR); ``fmt``, ``codec`` and ``options`` (the muxer's)
    make other containers and codecs."""
    import av

    w, h = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        tb = Fraction(1, 1000) if pts_ms is not None else 1 / rate
        stream.codec_context.time_base = tb
        for i, c in enumerate(colors):
            img = np.full((h, w, 3), c, np.uint8)
            for bit in range(8):
                on = (i >> bit) & 1
                img[: h // 2, bit * w // 8 : (bit + 1) * w // 8] = 235 if on else 16
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts_ms[i] if pts_ms is not None else i
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def ramp(n: int) -> list[int]:
    return [int(v) for v in np.linspace(10, 240, n)]


@pytest.fixture(scope="module")
def ntsc_video(tmp_path_factory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("ntsc") / "ntsc.mp4", ramp(90), rate=Fraction(30000, 1001)
    )


VFR_PTS = [0, 40, 60, 100, 180, 200, 260, 270, 330, 400, 433, 500, 520, 600]


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("vfr") / "vfr.mp4", ramp(len(VFR_PTS)), pts_ms=VFR_PTS
    )


def test_probe_reads_size_codec_and_exact_ntsc_rate(ntsc_video):
    info = probe(ntsc_video)
    assert (info.width, info.height, info.num_frames) == (96, 64, 90)
    assert info.codec == "h264" and "mp4" in info.container
    assert info.frame_rate == Fraction(30000, 1001)
    assert not info.variable_frame_rate and info.frame_times is None
    # frame-exact: t(i) = i * 1001 / 30000, not i / 29.97 rounded
    for i in (0, 1, 29, 30, 89, 90):
        assert info.frame_time(i) == float(Fraction(i * 1001, 30000))
    assert info.duration_s == pytest.approx(90 * 1001 / 30000, abs=1e-12)
    with pytest.raises(ValueError, match="91"):
        info.frame_time(91)


def test_probe_variable_frame_rate_uses_per_frame_timestamps(vfr_video):
    info = probe(vfr_video)
    assert info.variable_frame_rate
    assert info.frame_times is not None
    np.testing.assert_allclose(info.frame_times, np.array(VFR_PTS) / 1000, atol=1e-9)
    assert info.frame_time(4) == pytest.approx(0.18, abs=1e-9)
    assert info.duration_s > VFR_PTS[-1] / 1000
    assert info.fps == pytest.approx(info.num_frames / info.duration_s)


def test_probe_accepts_file_uri_and_pathlike(ntsc_video):
    assert probe(f"file://{ntsc_video}").num_frames == 90
    assert probe(Path(ntsc_video)).uri == str(ntsc_video)


def test_probe_min_frames(ntsc_video):
    with pytest.raises(TooFewFrames, match="90 frame"):
        probe(ntsc_video, min_frames=91)
    with pytest.raises(ValueError, match="0"):
        probe(ntsc_video, min_frames=0)


def test_target_size_keeps_aspect_and_never_upscales():
    assert target_size(1280, 720, out_width=128) == (128, 72)
    assert target_size(640, 360, short_side=90) == (160, 90)
    assert target_size(96, 64, out_width=400) == (96, 64)
    assert target_size(1280, 720, out_width=100, out_height=50) == (100, 50)
    assert target_size(160, 120, out_width=225, out_height=225) == (225, 225)  # exact
    with pytest.raises(ValueError, match="1"):
        target_size(100, 100, out_width=1)


def frame_numbers(frames: np.ndarray, n: int) -> list[int]:
    """Read back the barcode that :func:`write_video` draws (any decode size)."""
    h, w = frames.shape[1:3]
    cols = [int((bit + 0.5) * w / 8) for bit in range(8)]
    bits = frames[:, h // 4, cols, :].mean(axis=-1) > 128  # (n, 8)
    out = (bits * (1 << np.arange(8))).sum(axis=1)
    assert (out < n).all()
    return [int(v) for v in out]


def test_frame_reader_chunks_stride_span_and_size(ntsc_video):
    with FrameReader(ntsc_video, width=64, chunk=16, stride=3, start=5, end=80) as reader:
        assert reader.size == (64, 42)
        assert len(reader) == len(range(5, 80, 3))
        chunks = list(reader)
    indices = np.concatenate([i for i, _ in chunks])
    assert indices.tolist() == list(range(5, 80, 3))
    assert all(len(i) <= 16 and f.shape[1:] == (42, 64, 3) for i, f in chunks)
    frames = np.concatenate([f for _, f in chunks])
    assert frames.dtype == np.uint8
    assert frame_numbers(frames, 90) == indices.tolist()


def test_frame_reader_works_around_decord_widths(ntsc_video):
    """decord 0.6 cannot output 48 px wide frames; the reader takes the next width that works."""
    with FrameReader(ntsc_video, width=48, chunk=32) as reader:
        w, h = reader.size
        frames = np.concatenate([f for _, f in reader])
    assert w in (48, 50) and h == 32
    assert frames.shape == (90, h, w, 3)
    assert frame_numbers(frames, 90) == list(range(90))


def test_read_frames_random_access_order_and_repeats(ntsc_video):
    want = [70, 3, 3, 45, 0]
    frames = read_frames(ntsc_video, want, width=48)
    assert frames.shape == (5, 32, 48, 3)
    assert frame_numbers(frames, 90) == want
    # an exact size is honoured, odd sides and decord's unusable widths included
    for w, h in ((45, 31), (48, 32), (224, 224)):
        assert read_frames(ntsc_video, [7], width=w, height=h).shape == (1, h, w, 3)
        assert frame_numbers(read_frames(ntsc_video, [7], width=w, height=h), 90) == [7]
    full = read_frames(ntsc_video, [10])
    assert full.shape == (1, 64, 96, 3)
    with pytest.raises(ValueError, match="90"):
        read_frames(ntsc_video, [90])
    assert read_frames(ntsc_video, []).shape == (0, 64, 96, 3)


def test_frame_reader_memory_does_not_grow_with_length(tmp_path):
    """Peak traced memory while reading is bounded by the chunk, not the video length."""
    short = write_video(tmp_path / "short.mp4", ramp(60) * 1, size=(160, 96))
    long = write_video(tmp_path / "long.mp4", ramp(60) * 8, size=(160, 96))

    def peak(path: Path) -> int:
        tracemalloc.start()
        with FrameReader(path, chunk=16) as reader:
            for _ in reader:
                pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    p_short, p_long = peak(short), peak(long)
    chunk_bytes = 16 * 160 * 96 * 3
    assert p_long < 4 * chunk_bytes + 2_000_000
    assert p_long < 1.5 * p_short + 500_000


def test_truncated_file_raises_or_keeps_what_decodes(tmp_path):
    good = write_video(tmp_path / "good.mp4", ramp(40), size=(96, 64))
    from tests.badvideos import write_h264

    rng = np.random.default_rng(0)
    noisy = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(40)]
    src = write_h264(tmp_path / "noisy.mp4", noisy, faststart=True)
    cut = tmp_path / "cut.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedVideo, match="cut.mp4") as err:
        probe(cut)
    assert "of 40 declared" in err.value.reason
    info = probe(cut, allow_truncated=True)
    assert info.truncated and info.declared_frames == 40 and 0 < info.num_frames < 40
    reader = FrameReader(cut, allow_truncated=True, chunk=8)
    with reader:
        got = np.concatenate([i for i, _ in reader])
    assert got.tolist() == list(range(len(got)))
    assert 0 < len(got) <= info.num_frames
    assert reader.truncated_at is not None
    assert probe(good).num_frames == 40


def test_video_info_is_a_plain_record(ntsc_video):
    info = probe(ntsc_video)
    assert isinstance(info, VideoInfo)
    assert info.path == str(ntsc_video)
    np.testing.assert_allclose(
        info.frame_times_array([0, 30]), [0.0, 30 * 1001 / 30000], atol=1e-12
    )


def test_missing_file_is_an_open_failure(tmp_path):
    with pytest.raises(VideoOpenFailure, match="no such file") as err:
        probe(tmp_path / "nope.mp4")
    assert err.value.uri == str(tmp_path / "nope.mp4")


# --- odd but valid files --------------------------------------------------------------------------


@pytest.mark.parametrize(("clockwise", "turns"), [(90, -1), (180, 2), (270, 1)])
def test_rotation_metadata_turns_the_frames_as_displayed(tmp_path, clockwise, turns):
    from tests.badvideos import rotated

    plain = write_video(tmp_path / "plain.mp4", ramp(12), size=(96, 64))
    turned = rotated(plain, tmp_path / "turned.mp4", clockwise)
    info = probe(turned)
    assert (info.width, info.height) == ((64, 96) if clockwise != 180 else (96, 64))
    assert info.rotation == (360 - clockwise) % 360  # counterclockwise, as FFmpeg says
    # the same coded frames, turned: exactly the decoded plain frames rotated
    want = np.rot90(read_frames(plain, [0, 5, 11]), k=turns, axes=(1, 2))
    assert np.array_equal(read_frames(turned, [0, 5, 11]), want)
    with FrameReader(turned, chunk=5) as reader:
        got = np.concatenate([frames for _, frames in reader])
    assert got.shape == (12, info.height, info.width, 3)
    assert np.array_equal(got[[0, 5, 11]], want)
    # a reduced size is the displayed size
    small = read_frames(turned, [3], short_side=32)
    assert small.shape[1:3] == ((48, 32) if clockwise != 180 else (32, 48))


def test_timestamps_that_do_not_advance_fall_back_to_the_declared_rate(tmp_path):
    from tests.badvideos import stalled_timestamps

    plain = write_video(tmp_path / "plain.mp4", ramp(20), rate=Fraction(25))
    stalled = stalled_timestamps(plain, tmp_path / "stalled.mp4")
    info = probe(stalled)
    assert (info.num_frames, info.frame_rate, info.variable_frame_rate) == (20, 25, False)
    assert info.duration_s == pytest.approx(0.8)
    assert info.frame_time(10) == pytest.approx(0.4)


def test_constant_2997_in_a_millisecond_time_base_is_not_variable(tmp_path):
    """Matroska keeps times in milliseconds: 29.97 fps frames last 33 or 34 ms, one tick
    apart, and the rate is still constant."""
    path = write_video(tmp_path / "ntsc.mkv", ramp(60), rate=Fraction(30000, 1001), fmt="matroska")
    info = probe(path)
    assert not info.variable_frame_rate and info.frame_times is None
    assert info.num_frames == 60
    assert info.frame_rate == Fraction(30000, 1001)
    assert info.frame_time(30) == float(Fraction(30 * 1001, 30000))


def test_one_tick_still_counts_as_variable_where_a_tick_is_a_whole_frame():
    from curate.video import _is_variable

    tb = Fraction(1, 25)  # frames on a 1/25 s base: a frame of 80 ms is a dropped frame
    starts = np.array([0, 1, 2, 4, 5, 6], np.float64) * float(tb)
    assert _is_variable(starts, tb)
    ms = Fraction(1, 1000)
    assert not _is_variable(np.array([0, 33, 67, 100, 133, 167]) / 1000, ms)
    assert _is_variable(np.array([0, 33, 67, 100, 140, 173]) / 1000, ms)


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [
        ("h264.ts", "libx264", None),
        ("mpeg2.ts", "mpeg2video", None),
        ("bluray.m2ts", "libx264", {"mpegts_m2ts_mode": "1"}),
    ],
)
def test_mpeg_transport_streams_give_the_frames_at_their_indices(tmp_path, name, codec, options):
    """decord returns frames from the wrong place in a transport stream; these files are
    decoded with PyAV, which gives frame i at index i."""
    path = write_video(tmp_path / name, ramp(60), fmt="mpegts", codec=codec, options=options)
    info = probe(path)
    assert info.container == "mpegts" and info.num_frames == 60
    with FrameReader(path, chunk=16) as reader:
        chunks = list(reader)
    indices = np.concatenate([i for i, _ in chunks]).tolist()
    assert indices == list(range(60))
    assert frame_numbers(np.concatenate([f for _, f in chunks]), 60) == indices
    want = [50, 3, 3, 45, 44, 0]
    assert frame_numbers(read_frames(path, want, width=48), 60) == want


def _thumbnail_then_video(path: Path, colors: list[int], size: tuple[int, int]) -> Path:
    """A Matroska file whose first video stream is a one-frame 32x32 MJPEG thumbnail and whose
    second is the video (barcoded as :func:`write_video` does)."""
    import av

    w, h = size
    with av.open(str(path), "w", format="matroska") as container:
        thumb = container.add_stream("mjpeg", rate=1)
        thumb.width, thumb.height, thumb.pix_fmt = 32, 32, "yuvj420p"
        video = container.add_stream("libx264", rate=25, options={"threads": "1"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        image = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 255, np.uint8), format="rgb24")
        image.pts = 0
        encode_into(container, thumb, [image])
        frames = []
        for i, c in enumerate(colors):
            img = np.full((h, w, 3), c, np.uint8)
            for bit in range(8):
                img[: h // 2, bit * w // 8 : (bit + 1) * w // 8] = 235 if (i >> bit) & 1 else 16
            frames.append(av.VideoFrame.from_ndarray(img, format="rgb24"))
            frames[-1].pts = i
        encode_into(container, video, frames)
    return path


def test_a_thumbnail_stream_before_the_video_is_not_what_is_decoded(tmp_path):
    path = _thumbnail_then_video(tmp_path / "thumb.mkv", ramp(40), (96, 64))
    info = probe(path)
    assert (info.width, info.height, info.codec) == (96, 64, "h264")
    assert (info.num_frames, info.frame_rate) == (40, 25)
    with FrameReader(path, chunk=16) as reader:
        frames = np.concatenate([f for _, f in reader])
    assert frames.shape == (40, 64, 96, 3)
    assert frame_numbers(frames, 40) == list(range(40))
    assert frame_numbers(read_frames(path, [30, 2], width=48), 40) == [30, 2]


def test_read_frames_decodes_in_chunks_into_place(ntsc_video, monkeypatch):
    """Distinct frames are decoded a chunk at a time, in frame order, and land where they were
    asked for, repeats and all."""
    import decord

    import curate.video

    sizes: list[int] = []
    get_batch = decord.VideoReader.get_batch

    def counting(self, indices):
        sizes.append(len(indices))
        return get_batch(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", counting)
    monkeypatch.setattr(curate.video, "READ_CHUNK", 8)
    rng = np.random.default_rng(0)
    want = rng.integers(0, 90, 40).tolist() + [89, 0, 0, 89, 17]
    frames = read_frames(ntsc_video, want, width=48)
    assert frames.shape == (len(want), 32, 48, 3)
    assert frame_numbers(frames, 90) == want
    assert sizes and max(sizes) <= 8
    assert sum(sizes) <= len(set(want)) + 4  # each distinct frame once (+ the size checks)


def test_read_frames_memory_is_the_result_and_one_chunk(ntsc_video, monkeypatch):
    import curate.video

    monkeypatch.setattr(curate.video, "READ_CHUNK", 8)
    want = list(range(90)) * 3
    tracemalloc.start()
    frames = read_frames(ntsc_video, want)
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert frame_numbers(frames, 90) == want
    assert top < frames.nbytes + 8 * 4 * frames[0].nbytes + 1_000_000


def test_a_size_decord_cannot_output_is_decoded_with_pyav(tmp_path):
    """decord has no output width that works for a 2x2 video; PyAV decodes it."""
    import av

    from tests.badvideos import write_h264

    rng = np.random.default_rng(1)
    path = write_h264(
        tmp_path / "tiny.mp4", [rng.integers(0, 256, (2, 2, 3), np.uint8) for _ in range(6)]
    )
    with av.open(str(path)) as container:
        want = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with FrameReader(path) as reader:
        got = np.concatenate([f for _, f in reader])
    assert got.shape == (6, 2, 2, 3)
    assert np.array_equal(got, want)
    assert np.array_equal(read_frames(path, [5, 0]), want[[5, 0]])

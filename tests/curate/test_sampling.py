"""Frame sampling against synthetic videos whose every frame is known."""

from __future__ import annotations

import numpy as np
import pytest

from curate.sampling import FrameSampler, interior, pick_keyframes, plan_indices


class FakeVideo:
    """A reader over a synthetic video: frame i is filled with the value i % 256."""

    def __init__(self, num_frames: int, height: int = 24, width: int = 32) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self.calls: list[tuple[str, list[int], int | None, int | None]] = []

    def __call__(self, uri, indices, *, width=None, height=None):
        self.calls.append((uri, list(indices), width, height))
        h, w = height or self.height, width or self.width
        out = np.empty((len(indices), h, w, 3), np.uint8)
        for j, i in enumerate(indices):
            assert 0 <= i < self.num_frames, i
            out[j] = i % 256
        return out


def clip(i, start, end, uri="v.mp4", **kw):
    return {
        "clip_id": f"v-{i}",
        "video_id": "v",
        "uri": uri,
        "start_frame": start,
        "end_frame": end,
        "width": 32,
        "height": 24,
        **kw,
    }


@pytest.mark.parametrize(
    ("start", "end", "k", "margin"),
    [(0, 100, 4, 3), (10, 50, 8, 3), (0, 9, 4, 3), (5, 9, 4, 3), (0, 3, 4, 3), (20, 21, 4, 0)],
)
def test_plan_indices_stay_inside_and_avoid_edges(start, end, k, margin):
    for strategy in ("uniform", "middle"):
        idx = plan_indices(start, end, k, strategy=strategy, margin=margin)
        n = end - start
        assert idx == sorted(set(idx))
        assert len(idx) == min(k, n)
        assert all(start <= i < end for i in idx)
        if n >= k + 2 * margin:  # long enough: the margins are kept free
            assert min(idx) >= start + margin and max(idx) < end - margin


def test_uniform_spreads_and_middle_clusters():
    u = plan_indices(0, 100, 4, strategy="uniform", margin=0)
    assert u == [12, 37, 62, 87]
    m = plan_indices(0, 100, 4, strategy="middle", margin=0)
    assert m == [48, 49, 50, 51]


def test_interior_shrinks_margin_for_short_scenes():
    assert interior(0, 100, 4, 3) == (3, 97)
    assert interior(0, 8, 4, 3) == (2, 6)
    assert interior(0, 3, 4, 3) == (0, 3)


def test_one_decode_per_video_for_all_scenes():
    video = FakeVideo(120)
    sampler = FrameSampler(k=4, reader=video, size=(16, 16))
    clips = [clip(0, 0, 40), clip(1, 40, 90), clip(2, 90, 120)]
    out = list(sampler.process(clips))
    assert len(video.calls) == 1
    uri, wanted, w, h = video.calls[0]
    assert (uri, w, h) == ("v.mp4", 16, 16) and wanted == sorted(set(wanted))
    for rec, c in zip(out, clips):
        assert rec["frames"].shape == (4, 16, 16, 3) and rec["frames"].dtype == np.uint8
        # each sampled frame is the frame it claims to be, from inside its own scene
        assert [int(f[0, 0, 0]) for f in rec["frames"]] == rec["frame_indices"]
        assert all(c["start_frame"] + 3 <= i < c["end_frame"] - 3 for i in rec["frame_indices"])
        assert rec["status"] == "kept"


def test_process_all_groups_by_video():
    video = FakeVideo(200)
    sampler = FrameSampler(k=2, reader=video)
    rows = [
        clip(0, 0, 50),
        clip(1, 50, 100),
        clip(0, 0, 60, uri="w.mp4"),
        clip(1, 60, 200, uri="w.mp4"),
    ]
    out = list(sampler.process_all(rows))
    assert [c[0] for c in video.calls] == ["v.mp4", "w.mp4"]
    assert [r["clip_id"] for r in out] == ["v-0", "v-1", "v-0", "v-1"]


def test_scene_shorter_than_k_gets_all_frames_and_too_short():
    video = FakeVideo(100)
    sampler = FrameSampler(k=8, min_frames=6, reader=video)
    out = list(sampler.process([clip(0, 0, 3), clip(1, 3, 10), clip(2, 10, 100)]))
    assert out[0]["frame_indices"] == [0, 1, 2]
    assert (out[0]["status"], out[0]["reason"]) == ("dropped", "too_short")
    assert len(out[1]["frame_indices"]) == 7 and out[1]["status"] == "kept"
    assert len(out[2]["frame_indices"]) == 8


def test_too_short_keeps_an_earlier_reason():
    sampler = FrameSampler(k=4, min_frames=6, reader=FakeVideo(10))
    rec = next(iter(sampler.process(clip(0, 0, 3, status="dropped", reason="empty_caption"))))
    assert rec["reason"] == "empty_caption"


def test_shortest_edge_size_keeps_aspect():
    video = FakeVideo(50, height=240, width=320)
    sampler = FrameSampler(k=2, size=64, reader=video)
    rec = next(iter(sampler.process({**clip(0, 0, 50), "width": 320, "height": 240})))
    assert rec["frames"].shape == (2, 64, 85, 3)


@pytest.mark.parametrize(
    ("height", "width", "want"), [(90, 120, (32, 42)), (120, 90, (42, 32)), (480, 640, (32, 42))]
)
def test_shortest_edge_size_truncates_the_long_side_as_hf_does(height, width, want):
    """As the HF image processors size a frame (the long side truncated, not rounded), so that
    the scorer gets frames it does not resize again."""
    video = FakeVideo(50, height=height, width=width)
    sampler = FrameSampler(k=2, size=32, reader=video)
    rec = next(iter(sampler.process({**clip(0, 0, 50), "width": width, "height": height})))
    assert rec["frames"].shape == (2, *want, 3)


def test_keyframes_pick_the_largest_changes():
    # a static scene with two bursts of change at frames 30 and 70
    frames = np.zeros((100, 16, 16, 3), np.uint8)
    frames[30:] = 80
    frames[70:] = 200
    picked = pick_keyframes(frames, 2)
    assert picked[0] in (29, 30) and picked[1] in (69, 70)

    class Reader(FakeVideo):
        def __call__(self, uri, indices, *, width=None, height=None):
            self.calls.append((uri, list(indices), width, height))
            return frames[list(indices)]

    reader = Reader(100)
    sampler = FrameSampler(k=2, strategy="keyframes", margin=2, max_candidates=100, reader=reader)
    rec = next(iter(sampler.process(clip(0, 0, 100))))
    assert len(reader.calls) == 1
    assert rec["frame_indices"][0] in (29, 30) and rec["frame_indices"][1] in (69, 70)


def test_keyframes_are_spread_when_change_is_flat():
    frames = np.random.default_rng(0).integers(0, 5, (40, 8, 8, 3), dtype=np.uint8)
    picked = pick_keyframes(frames, 4)
    assert len(set(picked)) == 4 and np.all(np.diff(picked) >= 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 0},
        {"strategy": "random"},
        {"margin": -1},
        {"min_frames": 0},
        {"size": (0, 4)},
        {"size": (1, 2, 3)},
        {"k": 8, "max_candidates": 4},
    ],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError, match="got"):
        FrameSampler(**kwargs)


def test_bad_spans_and_mixed_videos_are_errors():
    sampler = FrameSampler(reader=FakeVideo(10))
    with pytest.raises(ValueError, match="v-0"):
        list(sampler.process(clip(0, 5, 5)))
    with pytest.raises(ValueError, match="one video"):
        sampler.sample_video([clip(0, 0, 5), clip(1, 0, 5, uri="other.mp4")])


def test_a_truncated_file_kept_by_option_is_sampled_too(tmp_path):
    """The splitter keeps the scenes of a file that ends early (``allow_truncated``); sampling
    with the same setting reads their frames instead of refusing the file."""
    from curate.decode import VideoDecoder
    from curate.errors import TruncatedVideo
    from tests.badvideos import _noise_frames, write_h264

    src = write_h264(tmp_path / "src.mp4", _noise_frames(80, 96, 64), faststart=True)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    row = {"video_id": "v", "uri": str(cut), "caption": "noise"}
    decoder = VideoDecoder(
        samples_per_scene=3,
        sample_size=32,
        min_scene_frames=5,
        splitter_settings={"allow_truncated": True},
    )
    clips = decoder(row)
    assert clips and clips[-1]["end_frame"] < 80
    for c in clips:
        assert c["frames"].shape == (3, 32, 48, 3)  # the short side at sample_size
        assert all(c["start_frame"] <= i < c["end_frame"] for i in c["frame_indices"])
    # without the setting the file is refused where it is first read
    with pytest.raises(TruncatedVideo):
        VideoDecoder(sample_size=32)(row)


def test_allow_truncated_reaches_the_reader_only_when_set():
    seen = []

    def reader(uri, indices, *, width=None, height=None, **options):
        seen.append(options)
        return np.zeros((len(indices), 4, 4, 3), np.uint8)

    FrameSampler(k=2, reader=reader).sample_video([clip(0, 0, 20)])
    FrameSampler(k=2, reader=reader, allow_truncated=True).sample_video([clip(0, 0, 20)])
    assert seen == [{}, {"allow_truncated": True}]

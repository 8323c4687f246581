"""Scene splitting against shapes-world ground truth, the SceneSplitter step and the CLI."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from curate.errors import CurateError
from curate.scenes import (
    CLIP_COLUMNS,
    Boundary,
    Detector,
    SceneSplitter,
    build_scenes,
    detect_boundaries,
    detect_scenes,
    make_detector,
    split_scenes,
)
from curate.scenes.metrics import score_boundaries, score_cuts, score_gradual
from curate.video import VideoInfo, probe
from tests.badvideos import EXPECTED_ERRORS, MIN_FRAMES, encode_into, make_bad_videos


def truth_transitions(v) -> list[tuple[str, int, int]]:
    return [(t.kind, t.start_frame, t.end_frame) for t in v.transitions]


@pytest.fixture(scope="module")
def corpus_results(shapes_corpus):
    """Every detector on every corpus video, from one decode per video."""
    names = ("fast", "content", "adaptive", "histogram")
    out = {}
    for v in shapes_corpus:
        dets = [make_detector(n) for n in names]
        info, found = detect_boundaries(v.path, dets)
        out[v.video_id] = (v, info, dict(zip(names, found, strict=True)))
    return out


def test_corpus_has_what_these_tests_rely_on(shapes_corpus):
    kinds = {t.kind for v in shapes_corpus for t in v.transitions}
    assert {"fade", "dissolve"} <= kinds
    assert any(v.cuts for v in shapes_corpus)
    assert any(Fraction(v.fps_fraction) == Fraction(30000, 1001) for v in shapes_corpus)


def test_fast_detector_finds_every_cut_exactly(corpus_results):
    for video_id, (v, _, found) in corpus_results.items():
        cuts = sorted(b.frame for b in found["fast"] if b.kind == "cut")
        assert len(cuts) == len(v.cuts), (video_id, cuts, v.cuts)
        for got, want in zip(cuts, sorted(v.cuts), strict=True):
            assert abs(got - want) <= 1, (video_id, cuts, v.cuts)


def test_fast_detector_finds_gradual_transitions_with_their_kind(corpus_results):
    for video_id, (v, _, found) in corpus_results.items():
        gradual = [b for b in found["fast"] if b.kind in ("fade", "dissolve")]
        assert len(gradual) == len(v.transitions), (video_id, gradual, v.transitions)
        for b, t in zip(sorted(gradual, key=lambda b: b.frame), v.transitions, strict=True):
            assert b.kind == t.kind, (video_id, b, t)
            # the new scene starts inside the true transition, near its boundary frame
            assert t.start_frame <= b.frame < t.end_frame, (video_id, b, t)
            assert abs(b.frame - t.boundary_frame) <= 2, (video_id, b, t)


def test_fast_scenes_match_ground_truth_scenes(corpus_results):
    for video_id, (v, info, found) in corpus_results.items():
        scenes = build_scenes(found["fast"], info)
        assert len(scenes) == len(v.scenes), video_id
        for s, t in zip(scenes, v.scenes, strict=True):
            assert s.transition == t.transition_in
            assert abs(s.start_frame - t.start_frame) <= 2
        assert scenes[-1].end_frame == v.num_frames


@pytest.mark.parametrize("name", ["content", "adaptive"])
def test_pyscenedetect_detectors_find_the_hard_cuts(corpus_results, name):
    for video_id, (v, _, found) in corpus_results.items():
        prf = score_cuts(found[name], v.cuts, truth_transitions(v), tolerance=1)
        assert prf.fn == 0 and prf.fp == 0, (video_id, prf.as_dict(), found[name], v.cuts)


def test_histogram_detector_finds_the_hard_cuts(corpus_results):
    recall = [
        score_cuts(found["histogram"], v.cuts, truth_transitions(v)).recall
        for v, _, found in corpus_results.values()
        if v.cuts
    ]
    assert min(recall) == 1.0


def test_metrics_score_a_known_case():
    truth_cuts = [50, 120]
    truth_grad = [("dissolve", 200, 212)]
    detected = [
        Boundary(51, "cut", 1.0),  # right, 1 frame late
        Boundary(90, "cut", 1.0),  # wrong
        Boundary(205, "cut", 1.0),  # inside a gradual transition: not scored as a cut
        Boundary(206, "dissolve", 1.0, 201, 211),
    ]
    cuts = score_cuts(detected, truth_cuts, truth_grad)
    assert (cuts.tp, cuts.fp, cuts.fn) == (1, 1, 1)
    grad = score_gradual(detected, truth_grad)
    assert (grad.tp, grad.fp, grad.fn) == (1, 0, 0)
    allb = score_boundaries(detected, truth_cuts, truth_grad)
    assert (allb.tp, allb.fp, allb.fn) == (2, 2, 1)


def test_scene_times_are_frame_exact_at_2997(corpus_results):
    ntsc = [
        (v, info, found)
        for v, info, found in corpus_results.values()
        if Fraction(v.fps_fraction) == Fraction(30000, 1001)
    ]
    assert ntsc
    for _v, info, found in ntsc:
        assert info.frame_rate == Fraction(30000, 1001)
        for s in build_scenes(found["fast"], info):
            assert s.start_s == float(Fraction(s.start_frame * 1001, 30000))
            assert s.end_s == float(Fraction(s.end_frame * 1001, 30000))


def test_one_decode_feeds_every_detector_the_same_frames(shapes_corpus):
    v = next(v for v in shapes_corpus if v.cuts or v.transitions)
    info, (together_fast, together_content) = detect_boundaries(
        v.path, [make_detector("fast"), make_detector("content")]
    )
    _, (alone_fast,) = detect_boundaries(v.path, [make_detector("fast")], info=info)
    _, (alone_content,) = detect_boundaries(v.path, [make_detector("content")], info=info)
    assert together_fast == alone_fast
    assert together_content == alone_content


def test_detector_interface_is_one_abstract_method():
    assert Detector.__abstractmethods__ == frozenset({"process"})


def test_max_scene_len_recuts_long_scenes(shapes_corpus):
    v = max(shapes_corpus, key=lambda v: max(s.num_frames for s in v.scenes))
    scenes = split_scenes(v.path, "fast", max_scene_len_s=1.0)
    assert any(s.transition == "recut" for s in scenes)
    for s in scenes:
        assert s.duration_s <= 1.0 + 1e-9
        assert s.num_frames >= 15
    starts = [s.start_frame for s in scenes]
    for t in v.scenes[1:]:  # the detected boundaries survive the recut
        assert min(abs(t.start_frame - x) for x in starts) <= 2


def test_min_scene_len_merges_close_boundaries(shapes_corpus):
    v = next(v for v in shapes_corpus if len(v.scenes) >= 3)
    info = probe(v.path)
    fake = [Boundary(30, "cut", 9.0), Boundary(35, "cut", 9.0), Boundary(60, "cut", 9.0)]
    scenes = build_scenes(fake, info, min_scene_len=15)
    assert [s.start_frame for s in scenes] == [0, 30, 60]
    with pytest.raises(ValueError, match="0"):
        build_scenes(fake, info, min_scene_len=0)


def test_moving_shapes_alone_make_one_scene(tmp_path):
    """A single scene with fast motion: no cut, no gradual transition."""
    from curate.shapes import SceneFacts, render_scene, write_video

    frames = list(
        render_scene(
            SceneFacts("red", "square", "moving right", "gray"), num_frames=90, width=160, height=96
        )
    )
    path = tmp_path / "motion.mp4"
    write_video(path, frames, fps=25)
    for name in ("fast", "adaptive"):
        scenes = split_scenes(path, name)
        assert len(scenes) == 1, (name, scenes)


def _smooth_texture(seed: int, w: int, h: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (5, 9, 3)).astype(np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def test_smooth_camera_pan_is_not_a_dissolve(tmp_path):
    """Panning over smooth content is linear in time, like a dissolve, but it changes at the
    same rate all along; no boundary may come of it."""
    from curate.shapes import write_video

    tex = _smooth_texture(1, 640, 96)
    frames = [tex[:, 2 * i : 2 * i + 160] for i in range(200)]
    path = tmp_path / "pan.mp4"
    write_video(path, frames, fps=25)
    info, (found,) = detect_boundaries(path, [make_detector("fast")])
    assert found == []


def test_dissolve_between_textured_scenes(tmp_path):
    from curate.shapes import write_video

    a, b = _smooth_texture(2, 160, 96), _smooth_texture(3, 160, 96)
    length, start = 12, 60
    frames = [a] * start
    for i in range(length):
        w = (i + 1) / (length + 1)
        frames.append(np.clip(a * (1 - w) + b * w + 0.5, 0, 255).astype(np.uint8))
    frames += [b] * 60
    path = tmp_path / "dissolve.mp4"
    write_video(path, frames, fps=25)
    _, (found,) = detect_boundaries(path, [make_detector("fast")])
    assert [x.kind for x in found] == ["dissolve"]
    lo, hi = found[0].span
    assert lo < start + length and start < hi
    assert abs(found[0].frame - (start + length // 2)) <= 2


def test_variable_frame_rate_scene_times_use_frame_timestamps(tmp_path):
    import av

    pts_ms = [round(1000 * t) for t in np.cumsum([0] + [40, 20, 60] * 30)][:80]
    path = tmp_path / "vfr_cut.mp4"
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = tb
        for i, p in enumerate(pts_ms):
            img = np.full((64, 96, 3), (200, 40, 40) if i < 50 else (30, 60, 200), np.uint8)
            img[10:30, i // 2 + 5 : i // 2 + 25] = 250  # a block moving right
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = p, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    info = probe(path)
    assert info.variable_frame_rate
    scenes = split_scenes(path, "fast", info=info)
    assert [s.start_frame for s in scenes] == [0, 50]
    assert scenes[1].start_s == pytest.approx(pts_ms[50] / 1000, abs=1e-9)
    assert scenes[0].end_s == scenes[1].start_s


# --- the step -------------------------------------------------------------------------------


def test_scene_splitter_rows(shapes_corpus):
    import pyarrow as pa

    from schemas.tables import CLIPS_SCHEMA

    v = max(shapes_corpus, key=lambda v: len(v.scenes))
    row = {"video_id": v.video_id, "uri": str(v.path), "caption": "a caption"}
    with SceneSplitter(detector="fast") as step:
        rows = list(step.process(row))
    assert len(rows) == len(v.scenes)
    assert all(set(r) == set(CLIP_COLUMNS) for r in rows)
    assert set(CLIP_COLUMNS) <= set(CLIPS_SCHEMA.names)
    assert [r["clip_id"] for r in rows] == [f"{v.video_id}:{i:04d}" for i in range(len(rows))]
    assert rows[0]["start_frame"] == 0 and rows[-1]["end_frame"] == v.num_frames
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["end_frame"] == b["start_frame"] and a["end_s"] == b["start_s"]
    assert {r["source_caption"] for r in rows} == {"a caption"}
    assert rows[0]["transition"] == "start" and rows[0]["detector_score"] is None
    assert (rows[0]["width"], rows[0]["height"]) == (v.width, v.height)
    # the rows fit the clips schema's types
    sub = pa.schema([CLIPS_SCHEMA.field(c) for c in CLIP_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=sub)
    assert table.num_rows == len(rows)


def test_timed_captions_give_each_scene_its_own_source_caption(tiny_video):
    a = "a red circle moving left on a navy background"
    b = "a blue square growing on a beige background"
    truth = tiny_video([a, b], scene_frames=40, fps=25)
    timed = [{"start_s": 0.0, "end_s": 1.6, "text": a}, {"start_s": 1.6, "end_s": 3.2, "text": b}]
    row = {"video_id": "t", "uri": str(truth.path), "caption": None, "captions": timed}
    with SceneSplitter(detector="fast") as step:
        rows = list(step.process(row))
        assert [r["source_caption"] for r in rows] == [a, b]
        # with a caption as well, the timed ones win where they are; the caption covers the rest
        row = {**row, "caption": "two shapes", "captions": timed[:1]}
        assert [r["source_caption"] for r in step.process(row)] == [a, "two shapes"]


def test_scene_caption_takes_the_timed_captions_of_the_span():
    from curate.scenes.splitter import scene_caption

    timed = [
        {"start_s": 0.0, "end_s": 2.0, "text": "a red circle."},
        {"start_s": 2.0, "end_s": 4.0, "text": "a blue square"},
        {"start_s": 4.0, "end_s": 10.0, "text": "a green star"},
        {"start_s": 10.0, "end_s": 11.0, "text": "  "},
    ]
    # a scene the detector did not cut holds two captions whole: both, in order
    assert scene_caption(timed, 0.0, 4.0) == "a red circle; a blue square"
    # boundaries a few frames off: the caption lying inside the scene, not its neighbours
    assert scene_caption(timed, 1.96, 4.04) == "a blue square"
    # a scene inside a longer caption: that caption
    assert scene_caption(timed, 5.0, 7.0) == "a green star"
    assert scene_caption(timed, 10.0, 11.0) is None  # a blank text says nothing
    assert scene_caption(timed, 20.0, 21.0) is None
    assert scene_caption([], 0.0, 1.0) is None


def test_scene_splitter_settings_are_validated():
    with pytest.raises(ValueError, match="'nope'"):
        SceneSplitter(detector="nope")
    with pytest.raises(ValueError, match="-1"):
        SceneSplitter(min_scene_len=-1)
    with pytest.raises(ValueError, match="0"):
        SceneSplitter(max_scene_len_s=0)
    with pytest.raises(ValueError, match="8"):
        SceneSplitter(detection_width=8)
    with pytest.raises(ValueError, match="-2"):
        SceneSplitter(detector_settings={"cut_threshold": -2})


def test_scene_splitter_raises_domain_errors_with_video_id(tmp_path):
    bad = make_bad_videos(tmp_path / "bad")
    with SceneSplitter() as step:
        assert step.min_frames == MIN_FRAMES
        for name, path in bad.items():
            with pytest.raises(CurateError) as err:
                list(step.process({"video_id": f"v_{name}", "uri": str(path), "caption": "x"}))
            assert type(err.value) is EXPECTED_ERRORS[name], name
            assert err.value.video_id == f"v_{name}"
            assert err.value.uri == str(path)


# --- the CLI ----------------------------------------------------------------------------------


def test_detect_scenes_accepts_names_and_instances(shapes_corpus):
    v = shapes_corpus.videos[0]
    info, (a, b) = detect_scenes(v.path, ["fast", make_detector("fast")])
    assert a == b
    assert a[-1].end_frame == info.num_frames


def test_scene_splitter_keeps_a_truncated_file_by_option(tmp_path):
    bad = make_bad_videos(tmp_path / "bad")
    row = {"video_id": "cut", "uri": str(bad["truncated"]), "caption": None}
    with SceneSplitter(allow_truncated=True) as step:
        rows = list(step.process(row))
    info = probe(bad["truncated"], allow_truncated=True)
    assert rows and rows[0]["start_frame"] == 0
    # the scenes end where decoding stopped, at or before the frames present
    assert 0 < rows[-1]["end_frame"] <= info.num_frames < info.declared_frames
    assert rows[-1]["end_s"] == pytest.approx(rows[-1]["end_frame"] / info.fps)


def test_scene_splitter_needs_ids(shapes_corpus):
    v = shapes_corpus.videos[0]
    with SceneSplitter() as step:
        with pytest.raises(CurateError, match="video_id") as err:
            step.process({"uri": str(v.path)})
        assert err.value.uri == str(v.path)
        with pytest.raises(CurateError, match="uri") as err:
            step.process({"video_id": "x"})
        assert err.value.video_id == "x"


@pytest.mark.slow
def test_long_video_memory_is_bounded(tmp_path):
    """10k frames at 160p: the fast path's traced memory stays at chunk scale and it finds
    every cut."""
    import tracemalloc

    from curate.shapes import write_video

    w, h, n, every = 284, 160, 10_000, 500
    colors = [(40, 40, 160), (200, 120, 40), (30, 150, 60), (180, 180, 180)]

    def frames():
        for i in range(n):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = colors[(i // every) % len(colors)]
            x = (i * 2) % (2 * (w - 40))
            x = x if x < w - 40 else 2 * (w - 40) - x
            img[50:90, x : x + 40] = (250, 250, 20)
            yield img

    path = tmp_path / "long.mp4"
    write_video(path, frames(), fps=25, preset="ultrafast")
    split_scenes(path, "fast")  # warm-up: numba compile, imports
    tracemalloc.start()
    scenes = split_scenes(path, "fast")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [s.start_frame for s in scenes[1:]] == list(range(every, n, every))
    # 64-frame chunks of 128x72 RGB are 1.8 MB; per-frame scalars for 10k frames ~0.3 MB
    assert peak < 12 * 2**20, peak


# --- fades at the video's own ends ------------------------------------------------------------

_EDGE_SCENES = [
    "a red circle moving left on a navy background",
    "a yellow star growing on a brown background",
    "a white square moving up on a black background",
    "a blue triangle standing still on a beige background",
]


@pytest.mark.parametrize("detector", ["fast", "content", "adaptive"])
@pytest.mark.parametrize(
    ("fade_in", "fade_out", "transitions"),
    [
        (20, 20, ["cut", "fade", "cut"]),  # as the real clip: fade-through-black inside too
        (30, 30, ["fade", "fade", "fade"]),
        (12, 36, ["dissolve", "cut", "fade"]),
        (40, 0, ["cut", "cut", "cut"]),
        (0, 40, ["cut", "cut", "cut"]),
    ],
    ids=["20-20", "30-30", "12-36", "in-only", "out-only"],
)
def test_fades_at_the_video_ends_are_not_scene_boundaries(
    tiny_video, detector, fade_in, fade_out, transitions
):
    truth = tiny_video(
        _EDGE_SCENES,
        scene_frames=60,
        transitions=transitions,
        transition_frames=16,
        fade_in=fade_in,
        fade_out=fade_out,
    )
    scenes = split_scenes(truth.path, detector)
    assert len(scenes) == len(truth.scenes), [(s.start_frame, s.transition) for s in scenes]
    for found, true in zip(scenes, truth.scenes, strict=True):
        assert abs(found.start_frame - true.start_frame) <= 2, (found, true)


def test_a_cut_right_after_an_opening_fade_is_kept(tiny_video):
    truth = tiny_video(
        ["a red circle still on a navy background", "a blue square growing on a beige background"],
        scene_frames=[30, 60],
        fade_in=24,
        fade_out=24,
    )
    assert [s.start_frame for s in split_scenes(truth.path, "fast")] == [0, 30]


def test_a_black_opening_cut_to_a_scene_is_still_a_cut(tmp_path):
    from curate.shapes import SceneFacts, render_scene, write_video

    black = [np.zeros((96, 160, 3), np.uint8)] * 30
    scene = list(
        render_scene(
            SceneFacts("red", "circle", "still", "gray"), num_frames=60, width=160, height=96
        )
    )
    write_video(tmp_path / "black.mp4", black + scene, fps=25)
    assert [s.start_frame for s in split_scenes(tmp_path / "black.mp4", "fast")] == [0, 30]


@pytest.mark.parametrize("detector", ["fast", "content"])
def test_a_hard_cut_to_black_that_ends_the_video_is_still_a_cut(tmp_path, detector):
    """The mirror of the black opening: the black tail is not a fade out, so its cut stays."""
    from curate.shapes import SceneFacts, render_scene, write_video

    black = [np.zeros((96, 160, 3), np.uint8)] * 30
    scene = list(
        render_scene(
            SceneFacts("red", "circle", "still", "gray"), num_frames=60, width=160, height=96
        )
    )
    write_video(tmp_path / "black.mp4", scene + black, fps=25)
    assert [s.start_frame for s in split_scenes(tmp_path / "black.mp4", detector)] == [0, 60]


@pytest.mark.parametrize("detector", ["fast", "content", "adaptive", "histogram"])
@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((4, 8, 8, 3), np.float32),  # floats in [0, 1]: the numba path read zeros
        np.zeros((4, 8, 8), np.uint8),  # grayscale
        np.zeros((4, 8, 8, 4), np.uint8),  # RGBA
    ],
    ids=["float", "gray", "rgba"],
)
def test_detectors_refuse_frames_they_cannot_read_by_shape_and_dtype(detector, frames):
    from curate.scenes.base import StreamInfo
    from curate.scenes.detect import make_detector

    info = VideoInfo("x", 4, 30.0, Fraction(30), 4 / 30, 8, 8, "h264", "mp4")
    det = make_detector(detector)
    det.reset(StreamInfo(info, (8, 8), 4))
    with pytest.raises(ValueError, match=r"\(n, height, width, 3\) of uint8 RGB, got shape"):
        det.process(np.arange(4), frames)


def test_a_boundary_too_close_to_the_end_makes_no_short_last_scene(shapes_corpus):
    v = next(iter(shapes_corpus))
    info = probe(v.path)
    n = info.num_frames
    scenes = build_scenes([Boundary(n - 5, "cut", 9.0)], info, min_scene_len=15)
    assert [(s.start_frame, s.end_frame) for s in scenes] == [(0, n)]


def _two_colour_video(path, *, fmt: str, codec: str = "libx264", cut: int = 45, n: int = 90):
    """Red frames, then blue from frame ``cut`` on, a block moving right across both."""
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=25, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        frames = []
        for i in range(n):
            img = np.full((64, 96, 3), (200, 40, 40) if i < cut else (30, 60, 200), np.uint8)
            img[10:30, i // 2 + 5 : i // 2 + 25] = 250
            frames.append(av.VideoFrame.from_ndarray(img, format="rgb24"))
            frames[-1].pts = i
        encode_into(container, stream, frames)
    return path


@pytest.mark.parametrize("codec", ["libx264", "mpeg2video"])
def test_a_cut_in_an_mpeg_transport_stream_is_found_at_its_frame(tmp_path, codec):
    path = _two_colour_video(tmp_path / "cut.ts", fmt="mpegts", codec=codec)
    scenes = split_scenes(path, "fast", min_scene_len=5)
    assert [(s.start_frame, s.end_frame) for s in scenes] == [(0, 45), (45, 90)]


def _corrupt_middle(tmp_path):
    """An mp4 (index last) with 4 KiB of its frame data zeroed halfway: decord's batch read
    fails part-way through a chunk. The undamaged file is ``src.mp4`` beside it."""
    from tests.badvideos import _noise_frames, write_h264

    src = write_h264(tmp_path / "src.mp4", _noise_frames(80, 96, 64))
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    return path


def _first_damaged_frame(path, src) -> int:
    """The first frame (in presentation order) decoded from a packet that differs from the
    undamaged file's or from one after it: every frame before it decodes from intact data."""
    import av

    damaged, clean = path.read_bytes(), src.read_bytes()
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size, p.pts) for p in container.demux(video=0) if p.size]
    rank = {pts: i for i, pts in enumerate(sorted(pts for _, _, pts in packets))}
    first = next(
        j
        for j, (pos, size, _) in enumerate(packets)
        if damaged[pos : pos + size] != clean[pos : pos + size]
    )
    return min(rank[pts] for _, _, pts in packets[first:])


def test_a_failed_batch_yields_the_indices_of_the_frames_it_kept(tmp_path):
    from curate.video import FrameReader

    path = _corrupt_middle(tmp_path)
    with FrameReader(path, allow_truncated=True, chunk=16) as reader:
        chunks = [(idx, frames) for idx, frames in reader]
    assert reader.truncated_at is not None and 0 < reader.truncated_at < 80
    assert reader.truncated_at % 16  # decoding stopped inside a chunk
    assert all(len(idx) == len(frames) for idx, frames in chunks)
    assert np.concatenate([i for i, _ in chunks]).tolist() == list(range(reader.truncated_at))
    # the PySceneDetect detectors zip indices and frames strictly; the scenes end where the
    # reader stopped, though the splitter reads 64 frames at a time and the reader 16
    for detector in ("content", "histogram", "fast"):
        with SceneSplitter(detector=detector, allow_truncated=True, min_scene_len=5) as step:
            rows = step.process({"video_id": "v", "uri": str(path)})
        assert rows[0]["start_frame"] == 0
        assert rows[-1]["end_frame"] == reader.truncated_at


@pytest.mark.parametrize("width", [None, 64])
def test_a_damaged_stream_keeps_every_frame_before_the_damage_whatever_the_chunk(tmp_path, width):
    """Where decoding of a damaged stream stops depends on its bytes alone, not on the chunk
    size, the decoder's threads or the machine's load: every frame decoded before the first
    damaged packet is kept, with the pixels the undamaged file gives at that size."""
    from curate.errors import TruncatedVideo
    from curate.video import FrameReader

    path = _corrupt_middle(tmp_path)
    damaged = _first_damaged_frame(path, tmp_path / "src.mp4")
    assert 16 < damaged < 64
    with FrameReader(tmp_path / "src.mp4", width=width, end=damaged) as reader:
        clean = np.concatenate([frames for _, frames in reader])
    for chunk in (8, 16, 32, 64):
        for threads in (0, 1):
            with FrameReader(
                path, allow_truncated=True, chunk=chunk, num_threads=threads, width=width
            ) as reader:
                chunks = list(reader)
            where = f"chunk {chunk}, {threads} threads"
            assert reader.truncated_at == damaged, where
            assert np.concatenate([i for i, _ in chunks]).tolist() == list(range(damaged)), where
            assert np.array_equal(np.concatenate([f for _, f in chunks]), clean), where
    reader = FrameReader(path, chunk=16, width=width)
    with pytest.raises(TruncatedVideo, match=f"stopped at frame {damaged} of 80"), reader:
        list(reader)


def test_frames_of_a_damaged_stream_decord_cannot_decode_again_come_from_pyav(
    tmp_path, monkeypatch
):
    import curate.video
    from curate.video import FrameReader

    path = _corrupt_middle(tmp_path)
    with FrameReader(path, allow_truncated=True, chunk=16) as reader:
        expected = np.concatenate([f for _, f in reader])
    monkeypatch.setattr(curate.video, "_decode_copy", lambda *args: None)
    with FrameReader(path, allow_truncated=True, chunk=16) as reader:
        got = np.concatenate([f for _, f in reader])
    # at the stream's own size PyAV's colour conversion gives decord's pixels
    assert reader.truncated_at == len(expected) and np.array_equal(got, expected)


def test_a_truncated_file_kept_by_option_still_needs_frames_that_decode(tmp_path):
    """A file cut inside its first frame's data has a packet but no frame: no scene (0, 0)
    comes of it; one that decodes fewer than ``min_frames`` frames is too short."""
    import av

    from curate.errors import TooFewFrames, ZeroFrames
    from tests.badvideos import _noise_frames, write_h264

    src = write_h264(tmp_path / "src.mp4", _noise_frames(12, 160, 96), faststart=True)
    data = src.read_bytes()
    with av.open(str(src)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    inside_first = tmp_path / "inside_first.mp4"
    inside_first.write_bytes(data[: packets[0][0] + packets[0][1] // 2])
    row = {"video_id": "v", "uri": str(inside_first)}
    with pytest.raises(ZeroFrames) as err:
        SceneSplitter(allow_truncated=True, min_frames=1).process(row)
    assert err.value.video_id == "v" and err.value.uri == str(inside_first)

    later = tmp_path / "later.mp4"
    later.write_bytes(data[: packets[6][0] + packets[6][1] // 2])
    present = probe(later, allow_truncated=True).num_frames  # packets, not decoded frames
    row = {"video_id": "w", "uri": str(later)}
    with pytest.raises(TooFewFrames, match=f"at least {present} needed"):
        SceneSplitter(allow_truncated=True, min_frames=present).process(row)

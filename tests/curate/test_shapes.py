"""Shapes world: grammar, rendering, pixel reading, corpus ground truth, manifests, CLI."""

from __future__ import annotations

import itertools
import json
import logging
from fractions import Fraction
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest

from curate import shapes
from curate.shapes import (
    BACKGROUNDS,
    BOILERPLATE,
    COLORS,
    MOTIONS,
    NON_ASCII,
    SHAPES,
    GroundTruth,
    SceneFacts,
    caption_for,
    generate_corpus,
    parse_caption,
    parse_captions,
    read_frame,
    read_motion,
    render_scene,
)


def _decode(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _frame_diffs(frames: np.ndarray) -> np.ndarray:
    """d[i] = mean |frame[i] - frame[i - 1]|; d[0] = 0."""
    f = frames.astype(np.float32)
    d = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    return np.concatenate([[0.0], d])


# --- grammar --------------------------------------------------------------------------------


def test_every_caption_parses_back_to_its_facts():
    for color, shape, motion, bg in itertools.product(COLORS, SHAPES, MOTIONS, BACKGROUNDS):
        cap = caption_for(color, shape, motion, bg)
        assert parse_caption(cap) == SceneFacts(color, shape, motion, bg), cap


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "A  RED Circle\tmoving   right on a NAVY background",
            ("red", "circle", "moving right", "navy"),
        ),
        (
            "Stock clip: an orange star standing still on a gray background, 4k",
            ("orange", "star", "still", "gray"),
        ),
        ("a white ring still on a black background", ("white", "ring", "still", "black")),
        (
            "a blue square moving up on a beige background.",
            ("blue", "square", "moving up", "beige"),
        ),
    ],
    ids=["case-space", "inside-longer-text", "bare-still", "trailing-dot"],
)
def test_parse_caption_is_tolerant(text, expected):
    assert parse_caption(text) == SceneFacts(*expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        None,
        "HD video clip",
        "a red circle",
        "a pink circle moving left on a black background",
    ],
)
def test_parse_caption_rejects_non_descriptions(text):
    assert parse_caption(text) is None


def test_caption_uses_the_right_article():
    assert caption_for("orange", "ring", "growing", "beige").startswith("an orange ring growing")


def test_unknown_vocabulary_is_a_clear_value_error():
    with pytest.raises(ValueError, match="'pink'"):
        caption_for("pink", "circle", "still", "black")
    with pytest.raises(ValueError, match="'hexagon'"):
        SceneFacts("red", "hexagon", "still", "black")


def test_shape_colours_never_match_their_backgrounds():
    # every background must still offer several colours, and the contrast rule is symmetric
    for bg in BACKGROUNDS:
        assert sum(shapes.compatible(c, bg) for c in COLORS) >= 4
    assert not shapes.compatible("white", "beige")


# --- rendering and reading pixels -----------------------------------------------------------


def test_render_scene_shape_and_determinism():
    facts = SceneFacts("red", "circle", "moving right", "navy")
    a = render_scene(facts, num_frames=10, width=96, height=64, seed=5)
    b = render_scene(facts, num_frames=10, width=96, height=64, seed=5)
    c = render_scene(facts, num_frames=10, width=96, height=64, seed=6)
    assert a.shape == (10, 64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # not flat: background texture and noise
    assert a[0].std() > 0.5


def test_render_keeps_the_shape_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(60):
        facts = shapes.random_facts(rng)
        frames = render_scene(facts, num_frames=6, width=160, height=90, rng=rng, noise=0)
        for f in frames:
            fact = read_frame(f)
            assert fact.shape is not None
            edge = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]]).astype(np.float32)
            assert np.abs(edge - np.asarray(BACKGROUNDS[facts.background])).max() < 25


@pytest.mark.parametrize(
    "size", [(160, 120), (284, 160), (640, 360)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_read_frame_and_motion_accuracy(size):
    """>= 98 % of colour, shape, background and motion read back right on random scenes."""
    rng = np.random.default_rng(sum(size))
    w, h = size
    n, frame_hits, frame_total, motion_hits = 24000 // w, 0, 0, 0
    for _ in range(n):
        facts = shapes.random_facts(rng)
        frames = render_scene(facts, num_frames=12, width=w, height=h, rng=rng)
        for f in frames[::3]:
            got = read_frame(f)
            frame_hits += (got.color, got.shape, got.background) == (
                facts.color,
                facts.shape,
                facts.background,
            )
            frame_total += 1
        motion_hits += read_motion(frames) == facts.motion
    assert frame_hits / frame_total >= 0.98
    assert motion_hits / n >= 0.98


def test_read_frame_centroid_and_area_follow_the_track():
    facts = SceneFacts("yellow", "square", "moving down", "navy")
    frames = render_scene(facts, num_frames=20, width=200, height=150, seed=3, noise=0)
    r = shapes.SceneRenderer(facts, num_frames=20, width=200, height=150, seed=3, noise=0)
    for t in (0, 10, 19):
        cx, cy, rad = r.track.at(t, 20)
        got = read_frame(frames[t])
        assert got.centroid == pytest.approx((cx / 200, cy / 150), abs=0.01)
        drawn = np.zeros((150, 200), np.uint8)
        shapes.draw_shape_mask(drawn, "square", cx, cy, rad)
        assert got.area == pytest.approx(drawn.sum() / 255 / (200 * 150), rel=0.03)
        assert got.area == pytest.approx((1.6 * rad) ** 2 / (200 * 150), rel=0.15)


def test_read_frame_on_an_empty_frame():
    frame = np.full((60, 80, 3), BACKGROUNDS["gray"], np.uint8)
    got = read_frame(frame)
    assert got.background == "gray" and got.shape is None and got.area == 0.0


# --- corpus ground truth --------------------------------------------------------------------


def test_corpus_has_what_the_fixture_promises(shapes_corpus):
    vids = shapes_corpus.videos
    assert len(vids) == 8
    kinds = {t.kind for v in vids for t in v.transitions}
    assert kinds == {"fade", "dissolve"}
    assert any(v.fps_fraction == "30000/1001" for v in vids)
    assert set(shapes.NOISE_KINDS) <= {v.caption_noise for v in vids}
    assert any(v.duplicate_of for v in vids)


def test_scenes_are_contiguous_and_consistent(shapes_corpus):
    for v in shapes_corpus:
        assert v.scenes[0].start_frame == 0 and v.scenes[-1].end_frame == v.num_frames
        for a, b in itertools.pairwise(v.scenes):
            assert a.end_frame == b.start_frame
            assert b.transition_in in ("cut", "fade", "dissolve")
            # a cut changes background and colour, so it is visible everywhere in the frame
            assert (a.background, a.color) != (b.background, b.color)
        assert v.cuts == [s.start_frame for s in v.scenes if s.transition_in == "cut"]
        gradual = [s for s in v.scenes if s.transition_in in ("fade", "dissolve")]
        assert [t.boundary_frame for t in v.transitions] == [s.start_frame for s in gradual]
        for t in v.transitions:
            assert 8 <= t.end_frame - t.start_frame <= 16
            assert t.boundary_frame == t.start_frame + (t.end_frame - t.start_frame) // 2
        for s in v.scenes:
            assert s.caption == caption_for(s.color, s.shape, s.motion, s.background)
            assert shapes.compatible(s.color, s.background)
        assert v.duration == pytest.approx(v.num_frames / float(Fraction(v.fps_fraction)))


def test_decoded_videos_show_the_cuts_exactly(shapes_corpus):
    """decord sees every recorded cut as a jump at exactly that frame, and no other jump."""
    for v in shapes_corpus:
        vr = decord.VideoReader(str(v.path))
        assert len(vr) == v.num_frames
        assert vr.get_avg_fps() == pytest.approx(v.fps, rel=1e-6)
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        assert frames.shape[1:3] == (v.height, v.width)
        _check_cuts(v, frames)


def test_gradual_transitions_fade_through_black_and_dissolve(shapes_corpus):
    for v in shapes_corpus:
        if not v.transitions:
            continue
        frames = _decode(v.path).astype(np.float32)
        for t in v.transitions:
            mid = frames[t.boundary_frame - 1 : t.boundary_frame + 1].mean()
            before = frames[t.start_frame - 1].mean()
            after = frames[t.end_frame].mean()
            if t.kind == "fade":
                assert mid < 8, (v.video_id, t)
            else:
                # a cross-fade: the boundary frames lie between both scenes' looks
                lo, hi = sorted((before, after))
                assert lo - 3 <= mid <= hi + 3, (v.video_id, t)
            # the frames on each side of the transition are the scenes' own
            out_scene = v.scene_at(t.start_frame - 1)
            in_scene = v.scene_at(t.end_frame)
            assert (
                read_frame(frames[t.start_frame - 1].astype(np.uint8)).background
                == out_scene.background
            )
            assert (
                read_frame(frames[t.end_frame].astype(np.uint8)).background == in_scene.background
            )


def test_ntsc_timestamps_are_exact(shapes_corpus):
    ntsc = [v for v in shapes_corpus if v.fps_fraction == "30000/1001"]
    assert ntsc
    for v in ntsc:
        vr = decord.VideoReader(str(v.path))
        ts = vr.get_frame_timestamp(list(range(len(vr))))[:, 0]
        expected = np.arange(len(vr)) * 1001 / 30000
        assert np.abs(ts - expected).max() < 1e-5
        assert v.frame_time(v.num_frames - 1) == pytest.approx(expected[-1], abs=1e-9)


def test_scene_content_reads_back_from_decoded_pixels(shapes_corpus):
    total = hits = 0
    for v in shapes_corpus:
        frames = _decode(v.path)
        for s in v.scenes:
            a, b = s.start_frame + 8, s.end_frame - 8  # clear of any transition
            got = read_frame(frames[(a + b) // 2])
            hits += (got.color, got.shape, got.background) == (s.color, s.shape, s.background)
            hits += read_motion(frames[a:b]) == s.motion
            total += 2
    assert hits / total >= 0.95


def test_captions_carry_their_noise_labels(shapes_corpus):
    for v in shapes_corpus:
        facts = [s.facts for s in v.scenes]
        src, clean = v.source_caption, v.clean_caption
        assert parse_captions(clean) == facts
        kind = v.caption_noise
        if kind == "clean":
            assert src == clean and not v.caption_is_noise
        elif kind == "mismatched":
            other = parse_captions(src)
            assert other and v.caption_is_noise
            assert not {(f.color, f.shape) for f in other} & {(f.color, f.shape) for f in facts}
        elif kind == "boilerplate":
            assert src in BOILERPLATE and parse_caption(src) is None and v.caption_is_noise
        elif kind == "truncated":
            assert clean.startswith(src) and len(src) < len(clean)
            assert src[-1].isalpha() and clean[len(src)].isalpha()  # cut mid-word
            names_first = f"{facts[0].color} {facts[0].shape}" in src
            assert v.caption_is_noise == (not names_first)
        elif kind == "empty":
            assert src.strip() == "" and v.caption_is_noise
        elif kind == "non_ascii":
            assert src in NON_ASCII and any(ord(ch) > 127 for ch in src)
            assert parse_caption(src) is None and v.caption_is_noise
        else:
            pytest.fail(f"unknown noise kind {kind!r}")
        assert (Path(shapes_corpus.root) / v.caption_file).read_text(encoding="utf-8") == src


def test_duplicates_decode_to_similar_content(shapes_corpus):
    _check_duplicates(shapes_corpus)


def test_every_duplicate_kind_keeps_its_truth(tmp_path):
    gt = generate_corpus(
        tmp_path,
        videos=6,
        seed=5,
        duplicate_rate=1.0,
        transition_rate=0.5,
        resolutions=["160x120"],
        max_scenes=3,
        scene_seconds=(1.6, 2.4),
        workers=1,
        progress=False,
    )
    assert {v.duplicate_kind for v in gt if v.duplicate_of} == set(shapes.DUPLICATE_KINDS)
    _check_duplicates(gt)
    for v in gt:
        _check_cuts(v, _decode(v.path))


def _check_cuts(v, frames: np.ndarray) -> None:
    """Every recorded cut is a jump at exactly that frame; nothing else inside scenes jumps."""
    d = _frame_diffs(frames)
    in_transition = set()
    for t in v.transitions:
        in_transition |= set(range(t.start_frame, t.end_frame + 1))
    quiet = [d[i] for i in range(1, v.num_frames) if i not in v.cuts and i not in in_transition]
    for c in v.cuts:
        assert d[c] > 15, (v.video_id, c, d[c])
        assert d[c] > 5 * max(quiet), (v.video_id, c)
    assert max(quiet) < 4, v.video_id


def _check_duplicates(gt) -> None:
    dups = [v for v in gt if v.duplicate_of]
    assert dups
    for dup in dups:
        orig = gt.by_id[dup.duplicate_of]
        assert [dup.duplicate_of, dup.video_id] in [
            g[:1] + [x] for g in gt.duplicate_groups for x in g[1:]
        ]
        assert [s.facts for s in dup.scenes] == [s.facts for s in orig.scenes]
        off = dup.duplicate_offset
        if dup.duplicate_kind == "trim":
            assert off > 0 and dup.num_frames < orig.num_frames - off + 1
            for d, o in zip(dup.scenes, orig.scenes, strict=True):
                assert d.start_frame == max(0, o.start_frame - off)
                assert d.end_frame == min(dup.num_frames, o.end_frame - off)
            assert dup.cuts == [c - off for c in orig.cuts]
            assert [(t.kind, t.start_frame, t.end_frame) for t in dup.transitions] == [
                (t.kind, t.start_frame - off, t.end_frame - off) for t in orig.transitions
            ]
        else:
            assert off == 0 and dup.num_frames == orig.num_frames
            if dup.duplicate_kind == "resize":
                assert (dup.width, dup.height) != (orig.width, orig.height)
            else:
                assert dup.crf != orig.crf
        a, b = _decode(orig.path), _decode(dup.path)
        for i in (0, dup.num_frames // 2, dup.num_frames - 1):
            fa = a[i + off]
            fb = cv2.resize(b[i], (orig.width, orig.height), interpolation=cv2.INTER_AREA)
            assert np.abs(fa.astype(np.float32) - fb).mean() < 6, (dup.video_id, i)


def test_ground_truth_round_trips(shapes_corpus, shapes_corpus_path):
    loaded = GroundTruth.load(shapes_corpus_path)
    assert loaded.to_json() == shapes_corpus.to_json()
    assert loaded.by_id("shapes_1234_0000").path.exists()
    assert loaded.root == shapes_corpus_path.resolve()


# --- manifests ------------------------------------------------------------------------------


def test_manifests_have_one_row_per_video(shapes_corpus, shapes_corpus_path):
    from schemas.inputs import read_folder, read_jsonl, read_webvid_csv

    by_id = shapes_corpus.by_id
    for read in (
        read_webvid_csv(shapes_corpus_path / "webvid.csv"),
        read_jsonl(shapes_corpus_path / "manifest.jsonl"),
        read_folder(shapes_corpus_path / "videos"),
    ):
        assert not read.failures, read.failures
        assert sorted(r["video_id"] for r in read.videos) == sorted(by_id)
        for row in read.videos:
            v = by_id[row["video_id"]]
            assert Path(row["uri"]) == v.path
            if read.format == "folder" and v.caption_noise == "empty":
                assert (row["caption"] or "").strip() == ""
            else:
                assert row["caption"] == v.source_caption
            if read.format == "webvid":
                assert row["duration_s"] == int(v.duration)
            if read.format != "webvid" and v.timed_captions_file:
                assert [c["text"] for c in row["captions"]] == [s.caption for s in v.scenes]
                assert row["captions"][-1]["end_s"] == pytest.approx(v.duration, abs=1e-5)
    assert any(v.timed_captions_file for v in shapes_corpus)
    sidecar = next(v for v in shapes_corpus if v.timed_captions_file)
    obj = json.loads((shapes_corpus_path / sidecar.timed_captions_file).read_text("utf-8"))
    assert obj["caption"] == sidecar.source_caption
    assert obj["captions"] == sidecar.timed_captions()


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_same_corpus_other_seed_differs(tmp_path):
    kw = dict(
        videos=3,
        resolutions=["96x64"],
        scene_seconds=(1.6, 2.0),
        max_scenes=3,
        duplicate_rate=0.5,
        transition_rate=0.5,
        progress=False,
    )
    a = generate_corpus(tmp_path / "a", seed=7, workers=1, **kw)
    b = generate_corpus(tmp_path / "b", seed=7, workers=2, **kw)  # parallel: same bytes
    c = generate_corpus(tmp_path / "c", seed=8, workers=1, **kw)
    assert (tmp_path / "a/ground_truth.json").read_bytes() == (
        tmp_path / "b/ground_truth.json"
    ).read_bytes()
    assert a.to_json() != c.to_json()
    for va, vb in zip(a, b, strict=True):
        assert va.path.read_bytes() == vb.path.read_bytes()
        assert np.array_equal(_decode(va.path), _decode(vb.path))
    for name in ("webvid.csv", "manifest.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(videos=0), "videos must be >= 1, got 0"),
        (dict(noise_rate=1.5), "noise_rate must be in \\[0, 1\\], got 1.5"),
        (dict(min_scenes=3, max_scenes=2), "min_scenes"),
        (dict(resolutions=["62x40"]), "62x40"),
        (dict(resolutions=["big"]), "'big'"),
        (dict(scene_seconds=(0, 1)), "scene_seconds"),
    ],
)
def test_bad_settings_raise_value_errors_quoting_the_value(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_corpus(tmp_path, progress=False, **kwargs)


# --- tiny videos, CLI, log fixture ----------------------------------------------------------


def test_tiny_video_factory_writes_the_requested_scenes(tiny_video):
    truth = tiny_video(
        [
            "a red circle moving left on a navy background",
            "a yellow star growing on a black background",
            "a white square standing still on a brown background",
        ],
        fps="30000/1001",
        scene_frames=[40, 30, 50],
        transitions=["cut", "dissolve"],
    )
    assert truth.num_frames == 120 and truth.cuts == [40]
    assert [t.kind for t in truth.transitions] == ["dissolve"]
    assert truth.transitions[0].boundary_frame == 70
    d = _frame_diffs(_decode(truth.path))
    assert d[40] > 15 and d[40] > 5 * np.delete(d[1:], [39] + list(range(63, 77))).max()
    with pytest.raises(ValueError, match="cannot parse"):
        tiny_video(["a pink blob"])


def test_tiny_video_fades_in_from_black_and_out_to_black(tiny_video):
    scenes = [
        "a red circle still on a gray background",
        "a blue square growing on a beige background",
    ]
    plain = tiny_video(scenes, scene_frames=40, name="plain")
    faded = tiny_video(scenes, scene_frames=40, fade_in=16, fade_out=8, name="faded")
    assert [(s.start_frame, s.end_frame) for s in faded.scenes] == [(0, 40), (40, 80)]
    assert faded.cuts == plain.cuts == [40]  # the fades are part of the first and last scenes
    levels = _decode(faded.path).reshape(80, -1).mean(axis=1)
    plain_levels = _decode(plain.path).reshape(80, -1).mean(axis=1)
    assert levels[0] < 8 and levels[-1] < 8
    assert np.all(np.diff(levels[:16]) > 0) and np.all(np.diff(levels[-8:]) < 0)
    assert np.allclose(levels[16:72], plain_levels[16:72], atol=2)
    with pytest.raises(ValueError, match="fade_in and fade_out must fit"):
        tiny_video(scenes, scene_frames=40, fade_in=41)


@pytest.mark.allow_error_logs
def test_error_logs_are_allowed_when_marked():
    logging.getLogger("curate.shapes").error("expected in this test")


def test_error_log_fixture_fails_unmarked_tests(tmp_path):
    """The autouse fixture fails a test that logs at ERROR, unless it opts out."""
    import shutil
    import subprocess
    import sys

    shutil.copy(Path(__file__).parents[1] / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_logs.py").write_text(
        "import logging\n"
        "import pytest\n"
        "log = logging.getLogger('x')\n"
        "def test_logs_error():\n    log.error('boom %s', 1)\n"
        "def test_logs_warning():\n    log.warning('only a warning')\n"
        "@pytest.mark.allow_error_logs\n"
        "def test_marked():\n    log.error('expected')\n"
        "def test_fixture(allow_error_logs):\n    log.error('expected')\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    # the check runs at teardown, so pytest reports the offending test as an error
    assert "4 passed, 1 error" in proc.stdout, proc.stdout + proc.stderr
    assert "ERROR test_logs.py::test_logs_error" in proc.stdout
    assert "x: boom 1" in proc.stdout


@pytest.mark.slow
def test_default_corpus_is_reproducible(tmp_path):
    """The default settings (all resolutions, 720p included) give byte-identical corpora."""
    a = generate_corpus(tmp_path / "a", videos=20, seed=0, progress=False)
    b = generate_corpus(tmp_path / "b", videos=20, seed=0, progress=False)
    assert a.to_json() == b.to_json()
    for va, vb in zip(a, b, strict=True):
        assert va.path.read_bytes() == vb.path.read_bytes(), va.video_id


def test_existing_corpus_is_refused_or_replaced_whole(tmp_path):
    kw = dict(
        resolutions=["96x64"], scene_seconds=(1.6, 2.0), max_scenes=2, workers=1, progress=False
    )
    first = generate_corpus(tmp_path, videos=3, seed=1, **kw)
    with pytest.raises(ValueError, match="overwrite"):
        generate_corpus(tmp_path, videos=2, seed=2, **kw)
    second = generate_corpus(tmp_path, videos=2, seed=2, overwrite=True, **kw)
    stems = {p.stem for p in (tmp_path / "videos").iterdir()}
    assert stems == {v.video_id for v in second}
    assert not stems & {v.video_id for v in first}
    (tmp_path / "videos" / "holiday.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="holiday.mp4"):
        generate_corpus(tmp_path, videos=2, seed=2, overwrite=True, **kw)


def test_scene_times_match_frames(shapes_corpus):
    for v in shapes_corpus:
        for s in v.scenes:
            assert s.start_s == pytest.approx(s.start_frame / float(v.fps_exact), abs=1e-6)
            assert s.end_s == pytest.approx(s.end_frame / float(v.fps_exact), abs=1e-6)

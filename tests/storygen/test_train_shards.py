"""Training storygen from ``curate export`` shards: windows in the renderer's batch format,
prompts aligned with frames, and ``storygen train --shards`` running a few steps on a CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curate.export import ExportSettings, export_run
from curate.shapes import parse_caption, read_frame
from storygen.training.shards import (
    ShardWindows,
    draw_window,
    export_fps,
    frame_progress,
    frame_prompts,
)
from tests.curate.export_helpers import run_from_truth


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A 32 px export of a small 64x64 shapes corpus, samples of 12 frames at 6 fps (not the
    shapes renderer's 8, so a model trained on it shows whose frame rate it records)."""
    from curate.shapes import generate_corpus

    root = tmp_path_factory.mktemp("train_shards")
    gt = generate_corpus(
        root / "corpus",
        videos=6,
        seed=11,
        noise_rate=0.0,
        duplicate_rate=0.0,
        resolutions=["64x64"],
        max_scenes=3,
        scene_seconds=(2.0, 3.0),
        workers=1,
        progress=False,
    )
    run = run_from_truth(gt, root / "run")
    settings = ExportSettings(
        width=32, height=32, fps=6, frames=12, crf=18, pix_fmt="yuv444p", samples_per_shard=3
    )
    export_run(run, root / "shards", settings)
    return root / "shards"


def test_batches_have_the_renderer_format_and_aligned_prompts(shards):
    data = ShardWindows(shards, batch_size=3, frames=8, size=32, seed=0, uncond=0.0)
    spacings = []
    for step, (frames, prompts, mask, spacing, progress) in zip(range(12), data):
        b, f = frames.shape[:2]
        assert frames.dtype == torch.uint8 and frames.shape[2:] == (32, 32, 3)
        assert b == 3 and 3 <= f <= 8
        assert len(prompts) == b and all(len(p) == f for p in prompts)
        assert mask.shape == (b, f) and spacing.shape == (b,) and progress.shape == (b, f)
        assert float(progress.min()) >= 0.0 and float(progress.max()) <= 1.0
        for row, window_prompts in zip(progress.numpy(), prompts):  # rises through a prompt
            for k in range(1, f):
                if window_prompts[k] == window_prompts[k - 1]:
                    assert row[k] > row[k - 1]
        for window, window_prompts, window_mask in zip(frames.numpy(), prompts, mask.numpy()):
            known = np.flatnonzero(window_mask).tolist()
            assert known in ([], [0, f - 1]) or known == list(range(len(known)))
            for frame, prompt in zip(window, window_prompts):
                facts = parse_caption(prompt)
                assert facts is not None
                assert read_frame(frame).color == facts.color, (step, prompt)
        spacings += spacing.tolist()
    assert min(spacings) == 1.0 and max(spacings) > 1.0  # samples of 12 frames, calls of 8


def test_windows_follow_the_sample_and_sizes_are_checked(shards):
    rng = np.random.default_rng(0)
    frames = np.arange(12)[:, None, None, None] * np.ones((12, 2, 2, 3), np.uint8)
    prompts = [f"p{i}" for i in range(12)]
    for _ in range(50):
        progress = np.linspace(0, 1, 12, dtype=np.float32)
        window, window_prompts, _, spacing, got = draw_window(rng, frames, prompts, 5, progress)
        picked = window[:, 0, 0, 0].tolist()
        assert window_prompts == [f"p{i}" for i in picked]
        np.testing.assert_allclose(got, progress[picked])
        assert picked == sorted(picked) and 1.0 <= spacing <= 11 / 4
    meta = json.loads(next(iter(sorted(shards.glob("_parts/part-*.json")))).read_text())
    sample = meta["samples"][0]
    assert frame_prompts({"frames": sample["frames"], "segments": sample["segments"]})[0]
    with pytest.raises(ValueError, match="32x32"):
        ShardWindows(shards, batch_size=2, frames=8, size=64, seed=0)
    with pytest.raises(ValueError, match="fewer than"):
        ShardWindows(shards, batch_size=2, frames=16, size=32, seed=0)
    with pytest.raises(ValueError, match="_export.json"):
        ShardWindows(shards / "_parts", batch_size=2, frames=8, size=32, seed=0)


def test_storygen_train_runs_from_shards_on_cpu(shards, tmp_path, capsys):
    from storygen.train import main

    out = tmp_path / "model"
    argv = ["--out", str(out), "--shards", str(shards), "--preset", "micro", "--size", "32"]
    argv += ["--frames", "8", "--batch-size", "2", "--steps", "3", "--vae-steps", "2"]
    argv += ["--workers", "1", "--eval-stories", "0", "--device", "cpu", "--log-every", "1"]
    assert main(argv) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["config"]["shards"] == str(shards)
    assert report["steps_done"] == 3
    assert (out / "unet" / "config.json").is_file()
    # the model renders at the rate its windows were exported at, not the shapes renderer's
    assert report["fps"] == export_fps(shards) != 8.0
    assert json.loads((out / "sampling.json").read_text())["fps"] == report["fps"]
    assert json.loads(capsys.readouterr().out)["steps_done"] == 3


def test_progress_counts_from_the_whole_clip_span():
    """A clip the sample cuts: its frames' progress runs over the clip's whole span, as a
    render's frames run over their whole segment; without spans, over the sample's part."""
    segments = [
        {"start_frame": 0, "end_frame": 4, "prompt": "a"},
        {"start_frame": 4, "end_frame": 12, "prompt": "b"},
    ]
    spans = [[-4.0, 4.0], [4.0, 20.0]]  # "a" began 4 frames before, "b" runs on 8 after
    got = frame_progress({"frames": 12, "segments": segments, "segment_spans": spans})
    np.testing.assert_allclose(got[:4], [4 / 7, 5 / 7, 6 / 7, 1.0], atol=1e-6)
    np.testing.assert_allclose(got[4:], np.arange(8) / 15, atol=1e-6)
    plain = frame_progress({"frames": 12, "segments": segments})
    np.testing.assert_allclose(plain[:4], np.arange(4) / 3, atol=1e-6)
    np.testing.assert_allclose(plain[4:], np.arange(8) / 7, atol=1e-6)


def test_exported_spans_hold_their_segments(shards):
    for part in sorted(shards.glob("_parts/part-*.json")):
        for sample in json.loads(part.read_text())["samples"]:
            assert "segment_spans" not in sample  # index rows: the stories' segment shape
    from curate.export import iter_samples

    info = json.loads((shards / "_export.json").read_text())
    paths = [str(shards / s["path"]) for s in info["shards"] if s["samples"]]
    seen = 0
    for sample in iter_samples(paths):
        meta = sample["json"]
        assert len(meta["segment_spans"]) == len(meta["segments"])
        for seg, (a, b) in zip(meta["segments"], meta["segment_spans"]):
            assert a <= seg["start_frame"] + 1e-6 and seg["end_frame"] <= b + 1e-6
        seen += 1
    assert seen > 0


def _write_export(folder, samples, *, frames=10):
    """An export folder of one shard holding ``samples``: (key, json or None, mp4 or None)."""
    import io
    import tarfile

    folder.mkdir()
    with tarfile.open(folder / "s0.tar", "w") as tar:
        for key, meta, mp4 in samples:
            members = (("json", None if meta is None else json.dumps(meta).encode()), ("mp4", mp4))
            for ext, data in members:
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "_export.json").write_text(
        json.dumps(
            {
                "settings": {"width": 32, "height": 32, "frames": frames},
                "shards": [{"path": "s0.tar", "samples": len(samples)}],
                "counts": {"samples": len(samples)},
            }
        )
    )
    return folder


def _sample(key, *, n=10, value=200, meta_frames=None, corrupt=False, size=32):
    from curate.export.codec import encode_mp4

    mp4 = encode_mp4(np.full((n, size, size, 3), value, np.uint8), fps=8)
    if corrupt:
        mp4 = mp4[: len(mp4) // 3]
    frames = n if meta_frames is None else meta_frames
    meta = {"frames": frames, "segments": [{"start_frame": 0, "end_frame": frames, "prompt": key}]}
    return key, meta, mp4


def test_bad_samples_are_skipped_with_a_warning(tmp_path, caplog):
    """A broken mp4, frames that disagree with the json, a sample without its mp4 or json:
    each skipped (one warning each), the windows drawn from the good samples only."""
    good = [_sample(f"good{i}") for i in range(7)]
    bad = [
        _sample("corrupt", value=40, corrupt=True),
        _sample("short", n=5, value=40, meta_frames=10),  # fewer decoded than the json says
        _sample("long", value=40, meta_frames=8),  # more decoded than the json says
        _sample("big", value=40, size=64),
        ("nomp4", _sample("nomp4")[1], None),
        ("nojson", None, _sample("nojson", value=40)[2]),
    ]
    folder = _write_export(tmp_path / "export", [*good[:2], *bad, *good[2:]])
    data = ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0, shuffle_buffer=1)
    with caplog.at_level("WARNING", logger="storygen.training.shards"):
        for _, (frames, prompts, *_) in zip(range(12), data):
            assert float(frames.float().mean(dim=(1, 2, 3, 4)).min()) > 150  # good ones only
            assert {p for clip in prompts for p in clip} <= {"", *(s[0] for s in good)}
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == len(bad)  # each once, though read again every pass
    for key, why in [
        ("corrupt", "its mp4 does not decode"),
        ("short", "5 frames decoded, its json says 10"),
        ("long", "10 frames decoded, its json says 8"),
        ("big", "the export's are 32 px"),
        ("nomp4", "no mp4"),
        ("nojson", "no json"),
    ]:
        assert any(f"skipping sample {key}: " in m and why in m for m in skipped), key


def test_an_export_of_mostly_bad_samples_is_refused(tmp_path):
    samples = [_sample("good0"), *(_sample(f"bad{i}", corrupt=True) for i in range(2))]
    folder = _write_export(tmp_path / "export", samples)
    data = ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0, shuffle_buffer=1)
    with pytest.raises(ValueError, match="2 of the 3 distinct samples read cannot serve"):
        for _ in zip(range(20), data):
            pass
    nothing = _write_export(tmp_path / "none", [_sample("bad", corrupt=True)])
    data = ShardWindows(nothing, batch_size=2, frames=8, size=32, seed=0, shuffle_buffer=4)
    with pytest.raises(ValueError, match="1 of the 1 distinct samples"):
        next(iter(data))


def _cut_after(path, samples: int) -> None:
    """Cut a tar shard at the end of its first ``samples`` samples (a sample boundary)."""
    import tarfile

    with tarfile.open(path) as tar:
        members = tar.getmembers()
    path.write_bytes(path.read_bytes()[: members[2 * samples].offset])


def test_a_missing_or_changed_shard_is_refused_when_training_starts(shards, tmp_path):
    import shutil

    folder = shutil.copytree(shards, tmp_path / "shards")
    shard = folder / "shard-000001.tar"
    size = shard.stat().st_size
    _cut_after(shard, 1)
    with pytest.raises(ValueError, match=f"shard-000001.tar holds .* _export.json says {size}"):
        ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0)
    shard.unlink()
    with pytest.raises(ValueError, match="shard shard-000001.tar is missing"):
        ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0)


@pytest.mark.timeout(60)
def test_shards_that_give_no_sample_end_in_an_error_not_an_endless_loop(shards, tmp_path, caplog):
    """Shards overwritten with zeros, sizes kept (the size check passes): training stops
    with the reason, each shard warned about once, instead of looping over nothing."""
    import shutil

    folder = shutil.copytree(shards, tmp_path / "shards")
    paths = sorted(folder.glob("shard-*.tar"))
    for path in paths:
        path.write_bytes(bytes(path.stat().st_size))
    data = ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0, shuffle_buffer=1)
    with caplog.at_level("WARNING"), pytest.raises(ValueError) as caught:
        next(iter(data))
    assert str(caught.value) == (
        f"{folder}: no sample could be read from its {len(paths)} shards (damaged, or not "
        "the files the export wrote); export again"
    )
    warned = sorted(r.getMessage() for r in caplog.records if r.name == "curate.export.readers")
    listed = json.loads((folder / "_export.json").read_text())["shards"]
    assert warned == [
        f"{folder / s['path']}: 0 samples read, _export.json lists {s['samples']}: the shard "
        "was cut short or changed after the export"
        for s in sorted(listed, key=lambda s: str(folder / s["path"]))
    ]


def test_a_shard_cut_at_a_sample_boundary_is_named_once(tmp_path, caplog):
    """Without sizes in _export.json (nothing to check when built), a shard that gives 3 of
    the 6 samples listed is warned about in the first pass, not every pass."""
    folder = _write_export(tmp_path / "export", [_sample(f"s{i}") for i in range(6)])
    _cut_after(folder / "s0.tar", 3)
    data = ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0, shuffle_buffer=1)
    with caplog.at_level("WARNING"):
        for _, (_, prompts, *_) in zip(range(10), data):  # 20 reads: 6 passes
            assert {p for clip in prompts for p in clip} <= {"", "s0", "s1", "s2"}
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"{folder / 's0.tar'}: 3 samples read, _export.json lists 6: the shard was cut short "
        "or changed after the export"
    ]


@pytest.mark.timeout(60)
def test_a_worker_whose_share_gives_nothing_reads_every_shard(tmp_path):
    """One shard listing 4 samples gives 2: shared among 4 workers, the last two would get
    none in every pass and loop forever; they read every sample instead."""
    import itertools

    folder = _write_export(tmp_path / "export", [_sample(f"s{i}") for i in range(4)])
    _cut_after(folder / "s0.tar", 2)
    data = ShardWindows(folder, batch_size=2, frames=8, size=32, seed=0)
    rng = np.random.default_rng(0)
    for worker in range(4):
        got = [s["__key__"] for s in itertools.islice(data._stream(rng, worker, 4), 4)]
        assert set(got) <= {"s0", "s1"} and len(got) == 4


def test_a_model_trained_on_shards_records_the_export_fps(shards, tmp_path, monkeypatch):
    """export_fps reads the export's frame rate, and save_folder writes the one it is given
    into sampling.json (the shapes renderer's 8 fps by default)."""
    import shutil

    import storygen.pipeline
    from storygen.training.folder import save_folder
    from storygen.training.shards import export_fps

    assert export_fps(shards) == 6.0
    folder = shutil.copytree(shards, tmp_path / "shards")
    info = json.loads((folder / "_export.json").read_text())
    info["settings"]["fps"] = 12.5
    (folder / "_export.json").write_text(json.dumps(info))
    assert export_fps(folder) == 12.5
    info["settings"]["fps"] = None
    (folder / "_export.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="gives no frame rate"):
        export_fps(folder)

    written: list[dict] = []

    class Pipeline:  # what save_folder builds, minus the weights
        def __init__(self, **parts):
            self.sampling: dict = {}

        def save_pretrained(self, out, **kwargs):
            written.append(self.sampling)

    monkeypatch.setattr(storygen.pipeline, "StoryVideoPipeline", Pipeline)
    part = torch.nn.Linear(1, 1)
    parts = {"unet": part, "vae": part, "text_encoder": part, "tokenizer": None, "size": 32}
    save_folder(tmp_path / "model", **parts, fps=12.5)
    save_folder(tmp_path / "model", **parts)
    assert [w["fps"] for w in written] == [12.5, 8.0]

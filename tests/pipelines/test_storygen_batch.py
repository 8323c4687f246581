"""Batch rendering of a stories table with a tiny random storygen model."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines.storygen import run, video_name
from schemas import read_parquet, rows_to_table, write_parquet

PROMPTS = ["a red circle moving left", "a blue square on a gray background"]


def _story(story_id: str, segments: list[tuple[float, float, str]], fps: float = 8.0) -> dict:
    return {
        "story_id": story_id,
        "video_id": story_id,
        "uri": f"/videos/{story_id}.mp4",
        "fps": fps,
        "duration_s": segments[-1][1] if segments else 1.0,
        "num_frames": int((segments[-1][1] if segments else 1.0) * fps),
        "segments": [
            {
                "start_s": a,
                "end_s": b,
                "start_frame": int(a * fps),
                "end_frame": int(b * fps),
                "prompt": text,
                "clip_id": None,
                "score": None,
            }
            for a, b, text in segments
        ],
    }


def _flags(tmp_path, model_dir, stories: list[dict]) -> list[str]:
    """A stories table of ``stories`` in ``tmp_path`` and the flags that render it quickly."""
    table = tmp_path / "stories.parquet"
    write_parquet(rows_to_table(stories, "stories", validate=False), table, "stories")
    return [
        f"--stories={table}",
        f"--render_output={tmp_path / 'out'}",
        f"--render_model={model_dir}",
        "--render_frames_per_call=5",
        "--render_steps=1",
        "--render_guidance=1.0",
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from storygen.presets import new_model

    return new_model(
        tmp_path_factory.mktemp("storygen") / "micro", preset="micro", mode="masked", texts=PROMPTS
    )


@pytest.mark.slow  # builds and runs a diffusion model: ~20 s on 2 cores
def test_every_story_rendered_or_failed(tmp_path, model_dir):
    import av

    stories = [
        _story("a/one", [(0.0, 1.0, PROMPTS[0]), (1.0, 2.0, PROMPTS[1])]),
        _story("two", [(0.0, 1.5, PROMPTS[1])]),
        # overlapping segments: the script check rejects it, the others go on
        _story("broken", [(0.0, 1.0, PROMPTS[0]), (0.5, 1.5, PROMPTS[1])]),
    ]
    flags = [*_flags(tmp_path, model_dir, stories), "--render_micro_batch=4"]
    summary = run(flags)
    results = {r["story_id"]: r for r in summary.results}
    assert results["broken"]["status"] == "failed"
    assert "overlaps" in results["broken"]["error"]
    for sid, seconds in (("a/one", 2.0), ("two", 1.5)):
        r = results[sid]
        assert r["status"] == "ok", r
        assert r["frames"] == int(seconds * 8) and r["seconds"] == pytest.approx(seconds)
        assert r["model_calls"] >= 1 and r["wall_time_s"] > 0
        assert r["device"] == "cpu" and r["compile_s"] == 0.0  # auto: eager on a CPU
        assert r["path"].endswith(video_name(sid, "mp4"))
        with av.open(r["path"]) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == r["frames"]
    failures = read_parquet(tmp_path / "out" / "failures", "failures").to_pylist()
    assert [(f["input_id"], f["stage"]) for f in failures] == [("broken", "render")]

    # a rerun skips what is rendered and retries what failed
    again = run(flags)
    assert {r["story_id"]: r["status"] for r in again.results} == {
        "a/one": "skipped",
        "two": "skipped",
        "broken": "failed",
    }
    assert pq.read_table(tmp_path / "out" / "results").num_rows == 3


def test_help_documents_the_renderers_flags(capsys):
    from pipelines.storygen import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--stories", "--render_max_stories", "--render_fps", "--render_guidance"):
        assert flag in text
    assert "7.5" not in text  # the guidance default is the model folder's, not a constant


def test_settings_not_given_are_left_to_the_model_folder():
    from pipelines.storygen import RenderSettings

    assert RenderSettings(model="m", output="o").pipeline_kwargs() == {}
    given = RenderSettings(model="m", output="o", steps=4, guidance=3.0, fps=8.0)
    assert given.pipeline_kwargs() == {"num_inference_steps": 4, "guidance_scale": 3.0, "fps": 8.0}


def test_render_progress_counts_finished_videos_only(tmp_path):
    from pipelines.progress import RenderProgress

    videos = tmp_path / "videos"
    progress = RenderProgress(videos, total=3, enabled=False)
    assert progress.snapshot() == (0, 0, 0)
    videos.mkdir()
    (videos / "a-1.mp4").write_bytes(b"x")
    (videos / ".b-2.tmp-1.mp4").write_bytes(b"x")  # being written
    assert progress.snapshot() == (1, 0, 0)


def test_device_dtype_compile_and_speedups_reach_each_render(tmp_path, model_dir, monkeypatch):
    import torch

    from pipelines import storygen as batch
    from storygen.pipeline import StoryVideoPipeline

    seen = []
    call = StoryVideoPipeline.__call__

    def record(self, *args, **kwargs):
        seen.append((self.unet.dtype, kwargs["compile"], kwargs["speedups"]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StoryVideoPipeline, "__call__", record)
    summary = batch.run(
        [
            *_flags(tmp_path, model_dir, [_story("s", [(0.0, 1.0, PROMPTS[0])])]),
            "--render_device=cpu",
            "--render_dtype=bfloat16",
            "--render_compile=off",
            "--render_speedups=none",
        ],
        progress=False,
    )
    assert [r["status"] for r in summary.results] == ["ok"]
    assert seen == [(torch.bfloat16, "off", "none")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--render_device=tpu"], "expected cpu or cuda"),
        (["--render_device=meta"], "--render_device 'meta': expected cpu or cuda"),
        (["--render_speedups=warp"], "unknown speed-ups"),
        (["--render_compile=aot", "--render_speedups=cgraph"], "do not replay CUDA graphs"),
    ],
)
def test_a_bad_device_or_speedup_is_refused_before_any_story(
    tmp_path, model_dir, flags, message, capsys
):
    from pipelines.storygen import main

    argv = _flags(tmp_path, model_dir, [_story("s", [(0.0, 1.0, PROMPTS[0])])])
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "videos").exists()


def test_cuda_is_refused_where_there_is_none(monkeypatch):
    import torch

    from pipelines.storygen import render_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert render_device(None) == "cpu"
    with pytest.raises(ValueError, match="no CUDA device here"):
        render_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert render_device(None) == "cuda" and render_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="there are 1 CUDA devices"):
        render_device("cuda:3")

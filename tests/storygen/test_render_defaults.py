"""Render defaults: flag > the model folder's sampling.json > built-in default, each reported.

Also: a curated story renders at the model's fps (not its source video's), and the help of
``storygen render`` / ``plan`` / ``train`` reads cleanly and points at real files.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

import pytest

from schemas import rows_to_table, write_parquet
from storygen.cli import DEFAULT_MODEL, main
from storygen.settings import (
    BUILTIN_DEFAULTS,
    Choice,
    read_sampling_json,
    resolve_sampling,
)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """\
fps: 4
segments:
  - {start: 0, end: 2.5, prompt: "a red circle moving left"}
  - {start: 2.5, end: 4.25, prompt: "a blue square on a striped background"}
"""
#: what the test model folder recommends: small and fast
SAMPLING = {
    "scheduler": "euler",
    "num_inference_steps": 2,
    "guidance_scale": 1.0,
    "fps": 2.0,
    "frames_per_call": 5,
}


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    """A micro model folder without sampling.json."""
    path = tmp_path_factory.mktemp("defaults") / "bare"
    assert main(["new-model", str(path), "--preset", "micro"]) == 0
    return path


@pytest.fixture(scope="module")
def model(bare_model, tmp_path_factory):
    """The same folder with a sampling.json."""
    import shutil

    path = tmp_path_factory.mktemp("defaults") / "with-sampling"
    shutil.copytree(bare_model, path)
    (path / "sampling.json").write_text(json.dumps(SAMPLING))
    return path


def _write(folder: Path, settings: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sampling.json").write_text(json.dumps(settings))
    return folder


# --------------------------------------------------------------------------- sampling.json
def test_read_sampling_json_checks_values(tmp_path, caplog):
    assert read_sampling_json(tmp_path) == {}
    folder = _write(tmp_path / "ok", {**SAMPLING, "height": 32, "width": 32.0, "overlap": 2})
    with caplog.at_level(logging.WARNING):
        got = read_sampling_json(folder)
    assert got == {**SAMPLING, "height": 32, "width": 32}
    assert "ignoring unknown key(s) ['overlap']" in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"scheduler": "plms"}, "scheduler must be one of ['ddim', 'dpm', 'euler'], got 'plms'"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer, got 0"),
        ({"guidance_scale": "high"}, "guidance_scale must be a finite number >= 0"),
        ({"fps": 1e6}, "fps must be a number from 0.1 to 240, got 1000000.0"),
        ({"frames_per_call": 2}, "frames_per_call must be an integer from 3 to 256, got 2"),
        ({"height": True}, "height must be a positive integer, got True"),
        ([1, 2], "expected a JSON object of settings, got list"),
    ],
)
def test_bad_sampling_json_is_named(tmp_path, settings, message):
    folder = _write(tmp_path / "bad", settings)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'sampling.json'}: {message}")):
        read_sampling_json(folder)


def test_unreadable_sampling_json_is_named(tmp_path):
    (tmp_path / "sampling.json").write_text("{fps: 4")
    with pytest.raises(ValueError, match=r"sampling.json: not valid JSON \(.*line 1\)"):
        read_sampling_json(tmp_path)


def test_shipped_model_recommends_its_measured_settings():
    # the settings the model card's numbers were measured with (its guidance sweep picked 2.0)
    settings = read_sampling_json(DEFAULT_MODEL)
    assert settings == {
        "scheduler": "dpm",
        "num_inference_steps": 12,
        "guidance_scale": 2.0,
        "fps": 8.0,
        "height": 64,
        "width": 64,
        "frames_per_call": 16,
    }
    card = (DEFAULT_MODEL / "README.md").read_text()
    assert "12 DPM steps, guidance 2" in card and "**2.0 → " in card


# --------------------------------------------------------------------------- resolution
NO_FLAGS = dict.fromkeys(BUILTIN_DEFAULTS)


def test_flags_beat_sampling_json_beats_built_in_defaults(tmp_path):
    folder = _write(tmp_path / "m", {"num_inference_steps": 12, "guidance_scale": 2.0})
    where = "the model's sampling.json"
    got = resolve_sampling({**NO_FLAGS, "guidance_scale": 5.0}, folder)
    assert got["guidance_scale"] == Choice(5.0, "--guidance")
    assert got["num_inference_steps"] == Choice(12, where)
    assert got["frames_per_call"] == Choice(16, "built-in default")
    assert got["scheduler"].value is None  # the scheduler saved in the folder, when it loads


def test_without_sampling_json_guidance_defaults_to_3_not_7_5(tmp_path):
    got = resolve_sampling(NO_FLAGS, tmp_path)
    assert got["guidance_scale"] == Choice(3.0, "built-in default")
    assert got["num_inference_steps"] == Choice(25, "built-in default")


@pytest.mark.parametrize(
    ("curated", "flag", "file", "script", "expected"),
    [
        (False, None, 4.0, 8.0, Choice(8.0, "the script")),  # the author chose it
        (False, None, 4.0, None, Choice(4.0, "sampling.json")),  # an SRT file sets none
        (True, None, 4.0, 30.0, Choice(4.0, "sampling.json")),  # the model's native fps
        (True, None, None, 30.0, Choice(30.0, "the story's source video")),
        (True, 12.0, 4.0, 30.0, Choice(12.0, "--fps")),
        (False, None, None, None, Choice(None, "unset")),
    ],
)
def test_fps_precedence(tmp_path, curated, flag, file, script, expected):
    folder = _write(tmp_path / "m", {} if file is None else {"fps": file})
    got = resolve_sampling({**NO_FLAGS, "fps": flag}, folder, script_fps=script, curated=curated)
    assert got["fps"].value == expected.value
    assert got["fps"].source.endswith(expected.source)


# --------------------------------------------------------------------------- storygen render
def _render(tmp_path: Path, script: Path, model: Path, *args: str) -> list[str]:
    out = tmp_path / "out.mp4"
    argv = ["render", str(script), "--model", str(model), "--out", str(out), "--no-progress"]
    assert main([*argv, *args]) == 0
    assert out.stat().st_size > 0
    return []


def _summary(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_render_takes_the_model_folders_settings_and_says_so(model, tmp_path, capsys):
    script = tmp_path / "story.srt"  # no fps in the file: the model's 2 fps
    script.write_text(
        "1\n00:00:00,000 --> 00:00:02,500\na red circle moving left\n\n"
        "2\n00:00:02,500 --> 00:00:04,500\na blue square\n"
    )
    _render(tmp_path, script, model)
    text = _summary(capsys)
    assert "rendered 9 frames (4.50 s at 2 fps)" in text
    assert "EulerDiscreteScheduler" in text
    where = "(the model's sampling.json)"
    assert f"scheduler euler, steps 2, guidance 1, fps 2, frames per call 5 {where}" in text
    assert "height 16, width 16 (the model's config)" in text


def test_flags_override_the_model_folder(model, tmp_path, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    _render(tmp_path, script, model, "--steps", "1", "--scheduler", "ddim")
    text = _summary(capsys)
    assert "rendered 17 frames (4.25 s at 4 fps)" in text  # the script's fps beats the file's
    assert "DDIMScheduler" in text
    assert "scheduler ddim, steps 1 (--steps" not in text  # grouped by source, each named
    assert re.search(r"scheduler ddim \(--scheduler\)", text)
    assert re.search(r"steps 1 \(--steps\)", text)
    assert re.search(r"fps 4 \(the script\)", text)


def test_without_sampling_json_the_built_in_defaults_hold(bare_model, tmp_path, capsys):
    script = tmp_path / "story.yaml"
    script.write_text(SCRIPT)
    _render(tmp_path, script, bare_model, "--steps", "1", "--frames-per-call", "5")
    text = _summary(capsys)
    assert "guidance 3 (built-in default)" in text
    assert "scheduler DDIMScheduler (saved in the model folder)" in text


def _stories_table(tmp_path: Path) -> Path:
    row = {
        "story_id": "v1",
        "video_id": "v1",
        "uri": "v1.mp4",
        "fps": 30.0,
        "duration_s": 2.0,
        "num_frames": 60,
        "segments": [
            {
                "start_s": 0.0,
                "end_s": 1.0,
                "start_frame": 0,
                "end_frame": 30,
                "prompt": "a red circle moving left",
                "clip_id": "v1-0",
                "score": 0.3,
            },
            {
                "start_s": 1.0,
                "end_s": 2.0,
                "start_frame": 30,
                "end_frame": 60,
                "prompt": "a blue square",
                "clip_id": "v1-1",
                "score": 0.3,
            },
        ],
    }
    return write_parquet(rows_to_table([row], "stories"), tmp_path / "stories.parquet", "stories")


def test_curated_story_renders_at_the_models_fps(model, tmp_path, capsys):
    table = _stories_table(tmp_path)
    _render(tmp_path, table, model)
    text = _summary(capsys)
    # 2 s at the model's 2 fps, not 60 frames at the source video's 30 fps
    assert "rendered 4 frames (2.00 s at 2 fps)" in text
    _render(tmp_path, table, model, "--fps", "4")
    assert "rendered 8 frames (2.00 s at 4 fps)" in _summary(capsys)


def test_curated_story_without_model_fps_keeps_the_source_fps(bare_model, tmp_path, capsys):
    table = _stories_table(tmp_path)
    argv = ["plan", str(table), "--model", str(bare_model), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["fps"] == 30.0
    argv = ["plan", str(table), "--model", str(_write(tmp_path / "m", {"fps": 4}))]
    assert main(argv) == 0
    assert "8 frames (2.00 s at 4 fps)" in capsys.readouterr().out


# --------------------------------------------------------------------------- help
def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["render", "plan", "new-model"])
def test_help_has_no_none_defaults(capsys, command):
    text = _help(capsys, command)
    assert "(default: None)" not in text and "default: None" not in text
    assert "python -m" not in text


def test_render_help_states_where_defaults_come_from(capsys):
    text = " ".join(_help(capsys, "render").split())
    assert "(default: the model's sampling.json, else 25)" in text
    assert "(default: the model's sampling.json, else 3)" in text
    assert "(default: the model's sampling.json, else 16)" in text


OUTPUT_FLAGS = {"--out", "--preview", "--stats-json", "--cache-dir"}


@pytest.mark.parametrize("command", ["render", "plan"])
def test_help_examples_use_real_inputs_and_ignored_outputs(capsys, command):
    text = _help(capsys, command).split("examples:", 1)[1]
    examples = re.findall(rf"storygen {command} (.+?)(?:\s+#.*)?$", text.replace("\\\n", " "), re.M)
    assert examples
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "demo-out/" in ignored
    for example in examples:
        words = shlex.split(example.split(">")[0])
        script = words[0]
        # an input of the repository, or one `make demo` writes under demo-out/
        assert (ROOT / script).exists() or script.startswith("demo-out/"), script
        for flag, value in zip(words, words[1:]):
            if flag in OUTPUT_FLAGS:
                assert value.startswith("demo-out/"), example
        if ">" in example:
            assert example.split(">")[1].strip().startswith("demo-out/")


def test_train_help_names_the_storygen_command(capsys):
    text = _help(capsys, "train")
    assert text.startswith("usage: storygen train")
    assert "python -m storygen.train" not in text

"""``storygen train`` on the command line: a refused input is one line on stderr and exit code 2,
before anything trains; the model folder is written whole or not at all, and a folder that is
not empty is replaced only when asked; Ctrl-C saves the steps done; the folder has a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: one step of the micro network at 32 px on calls of 6 frames (with --vae: a run of a second)
QUICK = [
    "--preset",
    "micro",
    "--size",
    "32",
    "--frames",
    "6",
    "--workers",
    "0",
    "--eval-stories",
    "0",
    "--batch-size",
    "1",
    "--heldout-windows",
    "0",
    "--steps",
    "1",
    "--device",
    "cpu",
]


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    from storygen.train import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refused(err: str) -> str:
    """The one line of a refusal, checked to be one line without a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("storygen train: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def nothing_trains(monkeypatch):
    """A refusal must come before the autoencoder trains and before the UNet's first step."""
    from storygen.training import unet

    def trained(*args, **kwargs):
        raise AssertionError("training began before the input was refused")

    monkeypatch.setattr(unet, "train_vae", trained)
    monkeypatch.setattr(unet, "_loop", trained)


@pytest.fixture(scope="module")
def base(tmp_path_factory, vae_dir):
    from storygen.train import main

    out = tmp_path_factory.mktemp("runs") / "base"
    argv = ["--out", str(out), "--vae", str(vae_dir), *QUICK, "--heldout-windows", "2"]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--size", "20"], "--size must be a multiple of 8, >= 32, got 20"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--preset", "bogus"], "--preset must be one of ['micro', 'shapes'], got 'bogus'"),
        (["--device", "bogus"], "--device bogus: not a device name"),
        (["--lr", "0"], "--lr must be a positive, finite rate, got 0.0"),
        (["--lr", "-1"], "--lr must be a positive, finite rate, got -1.0"),
        (["--text-lr", "0"], "--text-lr must be a positive, finite rate, got 0.0"),
        (["--frame-lr", "0"], "--frame-lr must be a positive, finite rate"),
        (["--max-minutes", "-1"], "--max-minutes must be a positive, finite number of minutes"),
        (["--max-minutes", "0"], "--max-minutes must be a positive, finite number of minutes"),
        (["--vae-minutes", "0"], "--vae-minutes must be a positive, finite number of minutes"),
        (["--vae-steps", "0"], "--vae-steps must be a positive integer, got 0"),
        (["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
        (["--eval-stories", "-1"], "--eval-stories must be an integer >= 0, got -1"),
        (["--train-text", "2"], "--train-text must be 0 or 1, got 2"),
        (["--text-encoder", "{tmp}/clip"], "--text-encoder {tmp}/clip: no such folder"),
        (["--init", "{tmp}/model"], "--init {tmp}/model: no such folder"),
        (["--shards", "{tmp}/shards"], "--shards {tmp}/shards: no _export.json"),
    ],
)
def test_a_refused_input_is_one_line_and_exit_code_2_before_anything_trains(
    flags, message, tmp_path, capsys, nothing_trains
):
    flags = [f.format(tmp=tmp_path) for f in flags]
    code, _, err = _run(capsys, "--out", tmp_path / "out", *QUICK, *flags)
    assert code == 2
    assert _refused(err).startswith(f"storygen train: {message.format(tmp=tmp_path)}")
    assert list(tmp_path.iterdir()) == []  # no folder, and no temporary one left


def test_the_init_folder_is_checked_before_anything_loads(base, tmp_path, capsys, nothing_trains):
    from storygen.presets import new_model

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    pixel = new_model(tmp_path / "pixel", preset="micro")  # pixel space: no VAE
    t2v = new_model(tmp_path / "t2v", preset="micro-latent", mode="t2v")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(base, corrupt)
    for weights in (corrupt / "unet").glob("*.safetensors"):
        weights.write_bytes(b"garbage!")
    cases = {
        notes / "a.txt": "is not a folder",
        notes: "not a storygen model folder (no model_index.json, unet/config.json, "
        "text_encoder/config.json, tokenizer)",
        pixel: "no autoencoder (vae/)",
        t2v: "its UNet is a UNet3DConditionModel",
        corrupt: "cannot load its unet/",
    }
    for init, why in cases.items():
        out = tmp_path / "out"
        code, _, err = _run(capsys, "--out", out, "--init", init, *QUICK)
        assert code == 2
        assert _refused(err).startswith(f"storygen train: --init {init}: {why}")
        assert not out.exists()


def test_init_continues_a_folder_storygen_new_model_wrote(tmp_path, capsys):
    """The README's other start: a randomly initialised folder (with a VAE) has no
    training.json; its record starts with the run."""
    from storygen.presets import new_model

    fresh = new_model(tmp_path / "fresh", preset="micro-latent")
    code, _, _ = _run(capsys, "--out", tmp_path / "trained", "--init", fresh, *QUICK)
    assert code == 0
    report = json.loads((tmp_path / "trained" / "training.json").read_text())
    assert report["steps_done"] == 1 and [r["part"] for r in report["runs"]] == ["unet"]


def test_an_out_folder_that_is_not_empty_is_replaced_only_with_force(
    base, vae_dir, tmp_path, capsys
):
    old = tmp_path / "old"
    shutil.copytree(base, old)
    (old / "notes.txt").write_text("mine")
    # an index of weight shards the new model does not have would make the folder unloadable
    stale = old / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    stale.write_text('{"weight_map": {"x": "diffusion_pytorch_model-00001-of-00009.safetensors"}}')
    before = _files(old)
    code, _, err = _run(capsys, "--out", old, "--vae", vae_dir, *QUICK)
    assert code == 2
    assert f"--out {old}: the folder is not empty" in _refused(err)
    assert "--force" in err and _files(old) == before
    code, _, _ = _run(capsys, "--out", old, "--vae", vae_dir, *QUICK, "--force")
    assert code == 0
    assert not (old / "notes.txt").exists() and not stale.exists()
    assert json.loads((old / "training.json").read_text())["steps_done"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temporary folder left

    from storygen.loading import load_pipeline

    load_pipeline(old)  # loads: no stale shard index

    # a file where the folder should go is refused before training, not when the run saves
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, why in ((afile, "exists and is not a folder"), (afile / "m", "is a file")):
        code, _, err = _run(capsys, "--out", out, "--vae", vae_dir, *QUICK)
        assert code == 2 and why in _refused(err)


def test_a_run_in_place_keeps_what_it_does_not_write(base, tmp_path, capsys):
    """--out X --init X (make train-storygen's flow): the folder is rewritten whole, keeping a
    model card written by hand and the logs beside the model."""
    model = tmp_path / "model"
    shutil.copytree(base, model)
    (model / "README.md").write_text("# my card\n")
    (model / "logs").mkdir()
    (model / "logs" / "run1.log").write_text("step 1\n")
    code, _, _ = _run(capsys, "--out", model, "--init", model, *QUICK)
    assert code == 0
    assert json.loads((model / "training.json").read_text())["steps_done"] == 2
    assert (model / "README.md").read_text() == "# my card\n"
    assert (model / "logs" / "run1.log").read_text() == "step 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_run_stopped_while_it_saves_leaves_the_folder_as_it_was(
    failure, base, tmp_path, capsys, monkeypatch
):
    """Ctrl-C (or a full disk) once the UNet is written and the autoencoder is not: the folder
    the run continues in place keeps its old weights and record, whole."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    model = tmp_path / "model"
    shutil.copytree(base, model)
    before = _files(model)

    def stopped(self, *args, **kwargs):
        raise failure(28, "No space left on device") if failure is OSError else failure()

    monkeypatch.setattr(AutoencoderKL, "save_pretrained", stopped)
    code, _, err = _run(capsys, "--out", model, "--init", model, *QUICK)
    if failure is KeyboardInterrupt:
        assert code == 130
        assert _refused(err) == (
            f"storygen train: interrupted before the model was saved: {model} is as it was"
        )
    else:
        assert code == 1
        assert _refused(err) == "storygen train: the run failed: No space left on device"
    assert _files(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_ctrl_c_during_the_steps_saves_the_steps_done(vae_dir, tmp_path, capsys, monkeypatch):
    from storygen.training.unet import CARD_MARK, _Trainer

    step = _Trainer.step

    def third_step_interrupted(self, n, batch):
        if n == 2:
            raise KeyboardInterrupt
        return step(self, n, batch)

    monkeypatch.setattr(_Trainer, "step", third_step_interrupted)
    out = tmp_path / "m"
    code, stdout, err = _run(
        capsys, "--out", out, "--vae", vae_dir, *QUICK, "--steps", "50", "--eval-stories", "1"
    )
    assert code == 130
    assert _refused(err) == (
        f"storygen train: interrupted after 2 steps: saved their moving average to {out} "
        f"(training.json records the run as interrupted; --init {out} trains it on)"
    )
    assert "a render's video" not in err
    report = json.loads((out / "training.json").read_text())
    assert report["steps_done"] == 2 and report["runs"][-1]["interrupted"] is True
    assert "eval" not in report  # the probe is skipped: the run was asked to stop
    assert json.loads(stdout)["steps_done"] == 2
    card = (out / "README.md").read_text()
    assert card.startswith(CARD_MARK) and "2 steps (stopped by Ctrl-C)" in card

    # stopped before its first step ends, a run has nothing to save
    def first_step_interrupted(self, n, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(_Trainer, "step", first_step_interrupted)
    code, _, err = _run(capsys, "--out", tmp_path / "none", "--vae", vae_dir, *QUICK)
    assert code == 130 and "interrupted before the model was saved" in _refused(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_the_probe_is_recorded_whole_and_ctrl_c_during_it_keeps_the_model(
    vae_dir, tmp_path, capsys, monkeypatch
):
    """--eval-stories: the probe runs on the saved folder; its numbers go into training.json and
    the card by a rename (no half-written file); Ctrl-C during it keeps the model saved."""
    from storygen.training import probe

    numbers = {"all": 0.5, "color": 0.75, "shape": 1.0, "background": 1.0, "motion": None}
    monkeypatch.setattr(probe, "evaluate_folder", lambda folder, **kw: {"global": numbers})
    out = tmp_path / "m"
    code, _, _ = _run(capsys, "--out", out, "--vae", vae_dir, *QUICK, "--eval-stories", "1")
    assert code == 0
    assert json.loads((out / "training.json").read_text())["eval"] == {"global": numbers}
    assert "| global | 0.500 | 0.750 | 1.000 | 1.000 | – |" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    def interrupted(folder, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "evaluate_folder", interrupted)
    out = tmp_path / "n"
    code, _, err = _run(capsys, "--out", out, "--vae", vae_dir, *QUICK, "--eval-stories", "1")
    assert code == 130
    assert "interrupted during the probe (--eval-stories): the model is saved" in _refused(err)
    assert json.loads((out / "training.json").read_text())["steps_done"] == 1


def test_the_model_card_says_what_the_model_is_and_how_to_use_it(base):
    from storygen.train import build_parser
    from storygen.training.unet import CARD_MARK

    assert "OUT/README.md is the model card" in build_parser().epilog
    card = (base / "README.md").read_text()
    assert card.splitlines()[0] == CARD_MARK
    report = json.loads((base / "training.json").read_text())
    heldout = report["runs"][-1]["heldout_loss"]
    assert "preset `micro`" in card and "32×32 px frames, 6 per model call" in card
    assert "| UNet steps | 1 in 1 run(s)" in card
    assert f"{heldout['start']:.4f} → {heldout['end']:.4f}" in card
    assert f"storygen render story.yaml --model {base} --out story.mp4" in card


def test_a_ctrl_c_the_command_does_not_catch_names_what_it_leaves(monkeypatch, capsys):
    """storygen's own handler: a line for the command that was stopped, not a render's."""
    import storygen.train
    from storygen.cli import main

    def stopped(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(storygen.train, "main", stopped)
    assert main(["train", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert err == (
        "storygen: interrupted (a model folder appears only once complete: --out is as it was)\n"
    )

"""What a training run writes and leaves behind: the sampling it recommends (the call length
and frame size it trained at), what ``--init`` keeps, a time budget that counts the steps
only, and torch's global settings as they were."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
#: one step of the micro network at 32 px on calls of 6 frames, from a frozen autoencoder
QUICK = {
    "preset": "micro",
    "size": 32,
    "frames": 6,
    "workers": 0,
    "eval_stories": 0,
    "steps": 1,
    "batch_size": 1,
    "heldout_windows": 0,
    "text_encoder": str(ROOT / "models" / "shapes-clip"),
}
#: QUICK without its text encoder
QUICK_NO_TEXT = {k: v for k, v in QUICK.items() if k != "text_encoder"}


@pytest.fixture(scope="module")
def base(tmp_path_factory, vae_dir):
    from storygen.training.unet import TrainConfig, train

    out = tmp_path_factory.mktemp("base")
    train(TrainConfig(out=str(out), vae=str(vae_dir), **QUICK))
    return out


def test_sampling_json_recommends_what_the_run_trained(base):
    from storygen.training.unet import TrainConfig

    sampling = json.loads((base / "sampling.json").read_text())
    assert sampling["frames_per_call"] == 6
    assert sampling["height"] == sampling["width"] == 32
    # calls longer than a render takes are refused before the run, not when it saves
    with pytest.raises(ValueError, match="frames must be from 3 to 256, got 257"):
        TrainConfig(out="x", frames=257)


def test_init_keeps_its_autoencoder_and_refuses_what_contradicts_it(base, tmp_path, caplog):
    from storygen.training.unet import TrainConfig, train

    with pytest.raises(ValueError, match=r"--init .*for 32 px frames, the run is for 64 px"):
        train(TrainConfig(out=str(tmp_path / "big"), init=str(base), **{**QUICK, "size": 64}))
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match="with --init .*leave --vae out"):
        train(TrainConfig(out=str(tmp_path / "vae"), init=str(base), vae=str(base), **QUICK))
    more = tmp_path / "more"
    with caplog.at_level("WARNING", logger="storygen.training.unet"):
        report = train(
            TrainConfig(out=str(more), init=str(base), vae_steps=5, **{**QUICK, "frames": 5})
        )
    assert "--vae-steps / --vae-minutes unused: --init keeps its autoencoder" in caplog.text
    assert report["steps_done"] == 2
    sampling = json.loads((more / "sampling.json").read_text())
    assert (sampling["frames_per_call"], sampling["height"], sampling["width"]) == (5, 32, 32)
    unet = json.loads((more / "unet" / "config.json").read_text())
    vae = json.loads((more / "vae" / "config.json").read_text())
    assert (vae["sample_size"], unet["sample_size"]) == (32, 8)


def test_the_time_budget_counts_from_the_first_step(vae_dir, tmp_path, monkeypatch):
    """The held-out loss of the run's start is not training time: the schedule and the budget
    start after it."""
    from storygen.training import unet as trainer_module

    def slow_heldout(self, **_):
        time.sleep(0.6)
        return 1.0

    at_first_step = []
    loop = trainer_module._loop

    def loop_from(config, trainer, loader):
        at_first_step.append(trainer.clock.fraction(0))
        return loop(config, trainer, loader)

    monkeypatch.setattr(trainer_module._Trainer, "heldout_loss", slow_heldout)
    monkeypatch.setattr(trainer_module, "_loop", loop_from)
    config = {**QUICK, "heldout_windows": 1, "max_minutes": 0.1}  # a 6 s budget
    trainer_module.train(
        trainer_module.TrainConfig(out=str(tmp_path / "m"), vae=str(vae_dir), **config)
    )
    # counting the 0.6 s of held-out loss, a tenth of the budget would be gone
    assert at_first_step and at_first_step[0] < 0.05


def test_a_run_leaves_torch_global_settings_as_it_found_them(vae_dir, tmp_path):
    from storygen.training.unet import TrainConfig, train

    before = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.manual_seed(1234)
        state = torch.random.get_rng_state()
        train(TrainConfig(out=str(tmp_path / "m"), vae=str(vae_dir), **{**QUICK, "seed": 7}))
        assert torch.equal(torch.random.get_rng_state(), state)
        assert not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = before


class _Bar:
    """A stand-in for the run's progress bars ("unet", "autoencoder") that keeps the totals
    they were given; other bars (a library's) are tqdm's."""

    made: list[_Bar] = []

    def __new__(cls, *args, **kwargs):
        if kwargs.get("desc") not in ("unet", "autoencoder"):
            from tqdm.std import tqdm

            return tqdm(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args, total=None, **kwargs):
        self.total, self.n = total, 0
        _Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def test_the_progress_bar_follows_the_time_budget_when_it_ends_first(
    vae_dir, tmp_path, monkeypatch
):
    """A --max-minutes run of at most 20,000 steps: its bar counts to the steps the budget
    leaves, not to 20,000 (whose percentage and ETA would mean nothing); the autoencoder's too."""
    import tqdm.auto

    from storygen.training.unet import TrainConfig, train
    from storygen.training.vae import build_vae, train_vae

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    config = {**QUICK, "steps": 20_000, "max_minutes": 0.01}  # 0.6 s
    report = train(TrainConfig(out=str(tmp_path / "m"), vae=str(vae_dir), **config))
    (bar,) = _Bar.made
    steps = report["runs"][-1]["steps"]
    assert steps < 20_000 and bar.n == bar.total == steps

    _Bar.made.clear()
    vae = build_vae(32, seed=0, preset="micro")
    run = train_vae(
        vae,
        size=32,
        device=torch.device("cpu"),
        max_steps=20_000,
        max_minutes=0.005,
        batch_size=2,
        workers=0,
    )
    (bar,) = _Bar.made
    assert run.steps < 20_000 and bar.n == bar.total == run.steps


def test_the_default_text_encoder_is_the_shipped_one_wherever_the_run_starts(
    tmp_path, monkeypatch, caplog
):
    """Unset, the text encoder is the shipped models/shapes-clip, found beside the packages
    (not under the working directory); a new one is trained along only when that folder is
    missing, with a warning that says where it looked. A folder given and missing is refused:
    a mistyped path does not become a new random text encoder."""
    from storygen.training import unet
    from storygen.training.unet import RunRefused, TrainConfig, text_encoder_folder

    monkeypatch.chdir(tmp_path)  # no models/ here
    assert text_encoder_folder(TrainConfig(out="m")) == ROOT / "models" / "shapes-clip"
    assert text_encoder_folder(TrainConfig(out="m", text_encoder="")) is None  # asked: a new one
    gone = tmp_path / "gone"
    monkeypatch.setattr(unet, "SHIPPED_TEXT_ENCODER", gone)
    with caplog.at_level("WARNING", logger="storygen.training.unet"):
        assert text_encoder_folder(TrainConfig(out="m")) is None
    assert f"no CLIP folder at {gone}" in caplog.text
    with pytest.raises(RunRefused, match=r"--text-encoder models/shapes-clp: no such folder"):
        text_encoder_folder(TrainConfig(out="m", text_encoder="models/shapes-clp"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunRefused, match=r"--text-encoder empty: no config.json there"):
        text_encoder_folder(TrainConfig(out="m", text_encoder="empty"))
    # refused before the run trains anything
    with pytest.raises(RunRefused, match="no such folder"):
        unet.train(TrainConfig(out=str(tmp_path / "x"), text_encoder="gone", **QUICK_NO_TEXT))
    assert not (tmp_path / "x").exists()

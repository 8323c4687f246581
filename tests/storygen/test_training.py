"""Training the shapes-world storygen model: windows as the plan draws them, and tiny runs
that learn (autoencoder and UNet), write a folder that renders, and export the same network
as a plain text-to-video model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.shapes import read_frame
from storygen.training.windows import ROLES, sample_window

ROOT = Path(__file__).resolve().parents[2]
#: the tiny runs' shared settings: the micro network at 32 px, calls of 8 frames, in-process data
MICRO = {"preset": "micro", "size": 32, "frames": 8, "workers": 0, "eval_stories": 0}


@pytest.mark.parametrize("role", ROLES)
def test_windows_carry_the_prompt_of_every_frame(role):
    rng = np.random.default_rng(3)
    for spacing in (1.0, 12.0, 200.0):
        w = sample_window(rng, frames=16, size=64, role=role, spacing=spacing)
        assert w.frames.shape == (16, 64, 64, 3) and w.frames.dtype == np.uint8
        assert w.spacing == pytest.approx(round(15 * spacing) / 15)
        for frame, prompt, facts in zip(w.frames, w.prompts, w.facts):
            seen = read_frame(frame)
            assert prompt == facts.caption
            assert (seen.color, seen.background) == (facts.color, facts.background)
        assert w.progress.shape == (16,) and 0 <= w.progress.min() <= w.progress.max() <= 1
        for k in range(1, 16):  # through a scene the progress rises with the spacing
            if w.facts[k] == w.facts[k - 1]:
                assert w.progress[k] > w.progress[k - 1]
        known = np.flatnonzero(w.mask)
        if role == "global":  # the window is the story: it opens and closes a scene
            assert w.progress[0] == 0.0 and w.progress[-1] == 1.0
            assert known.size == 0
        elif role == "local":
            assert known.tolist() == [0, 15]
        else:
            assert known.tolist() == list(range(known.size)) and 1 <= known.size <= 4


def test_wide_windows_hold_more_scenes_than_narrow_ones():
    rng = np.random.default_rng(0)

    def scenes(spacing):
        return np.mean(
            [
                len(set(sample_window(rng, frames=16, size=32, spacing=spacing).prompts))
                for _ in range(30)
            ]
        )

    assert scenes(1.0) < 2.0 < 6.0 < scenes(250.0)


def test_tiny_autoencoder_learns_shapes_frames():
    from storygen.training.vae import build_vae, reconstruction_psnr, train_vae

    vae = build_vae(32, seed=0, preset="micro")
    cpu = torch.device("cpu")
    before = reconstruction_psnr(vae, size=32, device=cpu, seed=5, count=32)
    run = train_vae(
        vae, size=32, device=cpu, max_steps=100, max_minutes=None, batch_size=16, lr=3e-3, workers=0
    )
    assert run.steps == 100
    assert run.psnr_db > before + 5
    assert vae.config.scaling_factor == pytest.approx(run.scaling_factor)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from storygen.training.unet import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-storygen")
    config = TrainConfig(
        out=str(out),
        batch_size=4,
        steps=60,
        vae_steps=30,
        lr=1e-3,
        log_every=10,
        text_encoder=str(ROOT / "models" / "shapes-clip"),
        **MICRO,
    )
    return out, train(config)


def test_tiny_training_lowers_the_loss_and_writes_a_folder(tiny_folder):
    out, report = tiny_folder
    history = report["runs"][-1]["history"]
    assert len(history) == 6
    # the training loss of a tiny run is too noisy to read (a few windows at random times each
    # step); the held-out loss (fixed windows, times and noise) falls clearly
    heldout = report["runs"][-1]["heldout_loss"]
    assert heldout["end"] < 0.75 * heldout["start"]
    assert report["steps_done"] == 60
    saved = json.loads((out / "training.json").read_text())
    assert [r["part"] for r in saved["runs"]] == ["autoencoder", "unet"]
    sampling = json.loads((out / "sampling.json").read_text())
    assert sampling["height"] == sampling["width"] == 32


def test_the_folder_renders_and_continues(tiny_folder, tmp_path):
    from storygen.loading import load_pipeline
    from storygen.training.unet import TrainConfig, train

    out, _ = tiny_folder
    pipe = load_pipeline(out)
    frames = pipe(
        ["a red circle moving right on a navy background"] * 9,
        9,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=0,
        progress=False,
    ).frames
    assert frames.shape == (9, 32, 32, 3)
    more = train(
        TrainConfig(out=str(tmp_path / "more"), init=str(out), batch_size=2, steps=3, **MICRO)
    )
    assert more["steps_done"] == 63
    assert [r["part"] for r in more["runs"]] == ["autoencoder", "unet", "unet"]


def test_plain_text_to_video_export_is_the_same_network_less_its_prompt_path(tiny_folder, tmp_path):
    from diffusers import UNet3DConditionModel

    from storygen.loading import load_pipeline
    from storygen.models import unet3d_forward
    from storygen.training.folder import to_t2v_folder
    from storygen.training_free import is_t2v_layout

    out, _ = tiny_folder
    t2v = to_t2v_folder(out, tmp_path / "t2v", spacing=1.0)
    assert is_t2v_layout(t2v)
    masked = load_pipeline(out).unet.float()
    plain = UNet3DConditionModel.from_pretrained(t2v / "unet").float()
    x, ctx = torch.randn(1, 4, 5, 8, 8), torch.randn(1, 5, 77, masked.config.cross_attention_dim)
    with torch.no_grad():
        # the prompt-and-progress path reads the prompt: the plain layout leaves it out
        assert masked.config.prompt_progress_embedding
        masked.prompt_progress.linear_2.weight.zero_()
        masked.prompt_progress.linear_2.bias.zero_()
        # and a stock UNet's temporal attention has no frame positions
        assert masked.config.frame_position_embedding
        for name, param in masked.named_parameters():
            if ".pos_embed.proj." in name:
                param.zero_()
        # nor input channels for the pixels' coordinates (conv_in keeps the sample's)
        assert masked.config.coordinate_channels
        masked.conv_in.weight[:, -2:].zero_()
        mid = torch.full((1, 5), 0.5)  # the export folds the progress at mid-segment
        a = masked(x, torch.tensor(300), ctx, spacing=torch.tensor([1.0]), progress=mid)
        b = unet3d_forward(plain, x, torch.tensor(300), ctx)
    assert torch.allclose(a, b, atol=1e-3)


def test_a_run_can_share_another_runs_autoencoder(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    from storygen.training.unet import TrainConfig, train

    out, _ = tiny_folder
    base = dict(
        MICRO, batch_size=2, steps=2, log_every=1, text_encoder=str(ROOT / "models" / "shapes-clip")
    )
    report = train(TrainConfig(out=str(tmp_path / "shared"), vae=str(out), **base))
    assert [r["part"] for r in report["runs"]] == ["unet"]  # no autoencoder run
    for name in ("diffusion_pytorch_model.safetensors",):
        want = load_file(str(out / "vae" / name))
        got = load_file(str(tmp_path / "shared" / "vae" / name))
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ValueError, match="for 32 px frames, the run is for 64 px"):
        train(TrainConfig(out=str(tmp_path / "x"), vae=str(out), **{**base, "size": 64}))
    with pytest.raises(ValueError, match="no autoencoder there"):
        train(TrainConfig(out=str(tmp_path / "y"), vae=str(tmp_path), **base))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two CPU compiles of the network's forward and backward
def test_compiled_training_steps_match_eager_ones(tiny_folder, tmp_path, monkeypatch):
    """``--compile 1`` trains the same network: from the same folder and seed, three steps
    give the losses of eager steps (the diffusion draws come from the trainer's own generator,
    which compiling does not touch) and a folder that loads. Dropout is switched off for the
    comparison: compiled code draws its dropout masks from its own generator, so with it on the
    two runs see different masks (a loss apart by about 5e-4 at the first step)."""
    import torch

    from storygen.loading import load_pipeline
    from storygen.training.unet import TrainConfig, train

    monkeypatch.setenv("STORYLOOM_COMPILE_CACHE", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    out, _ = tiny_folder
    runs = {}
    for flag in (0, 1):
        report = train(
            TrainConfig(
                out=str(tmp_path / f"c{flag}"),
                init=str(out),
                batch_size=2,
                steps=3,
                log_every=1,
                compile=flag,
                heldout_windows=0,
                **MICRO,
            )
        )
        runs[flag] = [h["loss"] for h in report["runs"][-1]["history"]]
    # the first step reads the same weights: the same loss up to the kernels' float order;
    # later ones follow updates that Adam normalises per weight (about lr * sign(grad) at
    # first), where float noise in a near-zero gradient can flip a step: close, not equal
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-4)
    assert runs[1][1:] == pytest.approx(runs[0][1:], rel=2e-3)
    assert load_pipeline(tmp_path / "c1").unet.has_progress


def test_prompt_sensitivity_reads_how_far_the_prompt_moves_the_prediction(tiny_folder):
    """The probe's numbers are prompt dependence: a trained tiny model moves with its prompt;
    the same model with every cross-attention output (and the prompt-and-progress
    embedding) zeroed reads no prompt, and the probe then measures exactly nothing."""
    import torch

    from storygen.loading import load_pipeline
    from storygen.training.probe import prompt_sensitivity

    out, _ = tiny_folder
    pipe = load_pipeline(out)
    got = prompt_sensitivity(pipe, windows=2, times=(700, 300))
    assert set(got["by_time"]) == {"700", "300"}
    assert got["mean"]["empty"] > 1e-3 and got["mean"]["colour"] > 0
    with_ref = prompt_sensitivity(pipe, windows=2, times=(700, 300), reference_draws=4)
    # t = 999 is read beside the reference, not folded into the mean of the times asked for
    assert with_ref["mean"] == pytest.approx(got["mean"]) and set(with_ref["by_time"]) == {
        "700",
        "300",
    }
    last = with_ref["last_time"]
    assert last["time"] == 999 and min(last["model"].values()) > 0
    assert set(last["reference"]) == {"noise", "motion", "colour"}
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
        if pipe.unet.config.get("prompt_progress_embedding", False):
            pipe.unet.prompt_progress.linear_2.weight.zero_()
            pipe.unet.prompt_progress.linear_2.bias.zero_()
    deaf = prompt_sensitivity(pipe, windows=2, times=(700, 300))
    assert deaf["mean"] == {"motion": 0.0, "colour": 0.0, "empty": 0.0}


def test_loss_weights_put_the_noisiest_times_where_they_say():
    """In x0 terms, Min-SNR-5 weighs a time by min(snr, 5) (almost nothing at the noisiest
    times); the plain v loss by 1 + snr (never less than a clean-image error)."""
    import torch

    from storygen.training.unet import TrainConfig, time_weight

    snr = torch.tensor([0.02, 0.5, 1.0, 4.0, 50.0])
    assert torch.allclose(time_weight(snr, "min-snr") * (1 + snr), snr.clamp(max=5.0))
    assert torch.allclose(time_weight(snr, "v") * (1 + snr), 1 + snr)
    floor = time_weight(snr, "min-snr-floor") * (1 + snr)
    assert torch.allclose(floor, snr.clamp(min=1.0, max=5.0))
    # the floor lifts only the noisy end: where snr >= 1 it is Min-SNR-5
    clean = snr >= 1
    assert torch.allclose(floor[clean], snr.clamp(max=5.0)[clean])
    assert (floor[~clean] > snr[~clean]).all()
    with pytest.raises(ValueError, match="loss weight"):
        time_weight(snr, "p2")
    with pytest.raises(ValueError, match="loss_weight"):
        TrainConfig(out="x", loss_weight="p2")


def test_a_run_records_its_loss_weight_and_the_heldout_loss_ignores_it(tiny_folder, tmp_path):
    """A continued run with the plain v loss says so in training.json; the held-out loss at its
    start reads the same weights as a Min-SNR run's from the same folder: one number, comparable
    across runs whatever each trains with."""
    from storygen.training.unet import TrainConfig, train

    out, _ = tiny_folder
    starts = {}
    for kind in ("min-snr", "v"):
        report = train(
            TrainConfig(
                out=str(tmp_path / kind),
                init=str(out),
                batch_size=2,
                steps=1,
                heldout_windows=4,
                loss_weight=kind,
                high_noise=0.5 if kind == "v" else 0.0,
                **MICRO,
            )
        )
        run = report["runs"][-1]
        assert run["loss_weight"] == kind
        assert run["high_noise"] == (0.5 if kind == "v" else 0.0)
        assert run["frame_positions"] is True  # new models are built with them
        assert run["coordinates"] is True
        starts[kind] = run["heldout_loss"]["start"]
    assert starts["v"] == pytest.approx(starts["min-snr"], rel=1e-6)


def test_high_noise_draws_that_share_of_windows_at_the_noisiest_times():
    """--high-noise 0.5: half the windows drawn at t >= 800, the rest uniformly (a fifth of
    those there too: 0.5 + 0.5 x 0.2 = 0.6 in all); 0 leaves the uniform draws as they were."""
    import types

    import torch

    from storygen.training.unet import HIGH_NOISE_FROM, TrainConfig, _Trainer

    def fake(seed: int) -> object:
        return types.SimpleNamespace(
            device=torch.device("cpu"),
            alphas=torch.ones(1000),
            draws=torch.Generator().manual_seed(seed),
        )

    t = _Trainer.draw_times(fake(0), 20_000, 0.5)
    assert t.min() >= 0 and t.max() < 1000
    assert float((t >= HIGH_NOISE_FROM).float().mean()) == pytest.approx(0.6, abs=0.02)
    uniform = _Trainer.draw_times(fake(1), 20_000, 0.0)
    assert float((uniform >= HIGH_NOISE_FROM).float().mean()) == pytest.approx(0.2, abs=0.02)
    assert torch.equal(uniform, torch.randint(0, 1000, (20_000,), generator=fake(1).draws))
    with pytest.raises(ValueError, match="high_noise"):
        TrainConfig(out="x", high_noise=1.5)
    # --high-noise-from 990: the share lands in the last ten times, where the input is noise
    last = _Trainer.draw_times(fake(2), 20_000, 0.25, 990)
    assert float((last >= 990).float().mean()) == pytest.approx(0.25 + 0.75 * 0.01, abs=0.015)
    assert int(last.max()) == 999
    with pytest.raises(ValueError, match="high_noise_from"):
        TrainConfig(out="x", high_noise_from=1000)


class _PixelVae:
    """An 'autoencoder' whose latents are the frames themselves (in [-1, 1])."""

    device = "cpu"

    def __init__(self) -> None:
        import torch

        self.dtype = torch.float32
        self.config = type("Config", (), {"scaling_factor": 1.0})()

    def encode(self, x):  # noqa: ANN001, ANN201
        mode = type("Dist", (), {"mode": lambda self: x})()
        return type("Out", (), {"latent_dist": mode})()


def test_the_mean_video_reference_sees_the_motion_word_and_nothing_in_a_non_edit():
    """What a model that has learnt its prompts shows at t = 999, from real renders: flipping
    the motion moves the mean video (where the shape stands early and late), as a colour
    change does; an 'edit' to the same facts moves it by no more than the estimate's noise."""
    import dataclasses

    from curate.shapes import SceneFacts
    from storygen.training.probe import mean_video_edits

    facts = [
        SceneFacts("red", "circle", "moving left", "black"),
        SceneFacts("blue", "square", "growing", "gray"),
    ]
    edits = {
        "motion": [
            dataclasses.replace(facts[0], motion="moving right"),
            dataclasses.replace(facts[1], motion="shrinking"),
        ],
        "colour": [dataclasses.replace(f, color="yellow") for f in facts],
        "same": list(facts),
    }
    got = mean_video_edits(_PixelVae(), facts, edits, size=32, draws=24, seed=3)
    assert got["same"] < 0.5 * got["motion"]
    assert got["motion"] > got["noise"] and got["colour"] > got["noise"]


def test_frame_lr_moves_the_per_frame_conditioning_at_its_own_rate(tiny_folder, tmp_path):
    """--frame-lr: the segment-progress, prompt-and-progress and frame-position weights take
    steps that many times larger than the rest of the UNet's, which steps as it did without."""
    import torch

    from storygen.training.unet import TrainConfig, _start, _Trainer, is_framewise
    from storygen.training.windows import collate

    out, _ = tiny_folder
    rng = np.random.default_rng(11)
    batch = collate([sample_window(rng, frames=8, size=32) for _ in range(2)])
    moved = {}
    for frame_lr in (None, 1e-2):
        config = TrainConfig(
            out=str(tmp_path / "x"), init=str(out), lr=1e-3, frame_lr=frame_lr, **MICRO
        )
        device = torch.device("cpu")
        torch.manual_seed(0)
        trainer = _Trainer(config, _start(config, device), device)
        before = {n: p.detach().clone() for n, p in trainer.unet.named_parameters()}
        trainer.clock.warmup = 0  # the peak rate at once
        trainer.step(0, batch)
        change = {
            n: float((p.detach() - before[n]).abs().max())
            for n, p in trainer.unet.named_parameters()
        }
        moved[frame_lr] = (
            max(v for n, v in change.items() if is_framewise(n)),
            max(v for n, v in change.items() if not is_framewise(n)),
        )
    assert any(is_framewise(n) for n in before)
    # Adam's first step moves a weight by about its rate: 10x for the per-frame part only
    assert moved[1e-2][0] == pytest.approx(10 * moved[None][0], rel=0.05)
    assert moved[1e-2][1] == pytest.approx(moved[None][1], rel=1e-4)


def test_global_role_windows_give_nothing_for_a_text_to_video_run():
    from storygen.training.windows import StoryWindows

    batches = iter(StoryWindows(batch_size=6, frames=8, size=32, seed=1, role="global"))
    for _ in range(3):
        frames, prompts, mask, spacing, progress = next(batches)
        assert frames.shape[0] == 6 and not mask.any()
        # a global window is its whole story: it opens and closes a scene
        assert (progress[:, 0] == 0).all() and (progress[:, -1] == 1).all()
    with pytest.raises(ValueError, match="role"):
        StoryWindows(batch_size=2, frames=8, size=32, seed=1, role="keyframes")


def test_text_to_video_run_exports_exactly_what_it_trained(tiny_folder, tmp_path):
    """A --text-to-video run trains the network a stock UNet3DConditionModel holds: the export
    to the ModelScope layout computes what the run's model computed on its training inputs
    (nothing known, spacing 1), and it refuses to continue a model with per-frame inputs."""
    from diffusers import UNet3DConditionModel

    from storygen.loading import load_pipeline
    from storygen.models import MaskedUNet3D, unet3d_forward
    from storygen.pipeline import StoryVideoPipeline, TrainingFreeStoryPipeline, loading_as_saved
    from storygen.training.folder import to_t2v_folder
    from storygen.training.unet import TrainConfig, train
    from storygen.training_free import is_t2v_layout

    grown, _ = tiny_folder  # trained with progress, frame positions and coordinates
    with pytest.raises(ValueError, match="per-frame inputs"):
        train(
            TrainConfig(
                out=str(tmp_path / "no"), init=str(grown), text_to_video=1, steps=1, **MICRO
            )
        )
    out = tmp_path / "t2v-run"
    report = train(
        TrainConfig(
            out=str(out),
            vae=str(grown),
            text_to_video=1,
            batch_size=2,
            steps=3,
            heldout_windows=4,
            text_encoder=str(ROOT / "models" / "shapes-clip"),
            **MICRO,
        )
    )
    assert report["runs"][-1]["text_to_video"] is True
    # it renders training-free: the network never learnt to read known frames
    assert isinstance(load_pipeline(out), TrainingFreeStoryPipeline)
    assert isinstance(load_pipeline(grown), StoryVideoPipeline)
    assert not isinstance(load_pipeline(grown), TrainingFreeStoryPipeline)
    # from_pretrained gives the export too; the network as saved is the masked one
    assert isinstance(StoryVideoPipeline.from_pretrained(out), TrainingFreeStoryPipeline)
    with loading_as_saved():
        masked = StoryVideoPipeline.from_pretrained(out).unet.float()
    assert isinstance(masked, MaskedUNet3D)
    for flag in ("progress_embedding", "frame_position_embedding", "coordinate_channels"):
        assert not masked.config.get(flag, False)
    more = train(
        TrainConfig(
            out=str(tmp_path / "more"),
            init=str(out),
            text_to_video=1,
            batch_size=2,
            steps=2,
            heldout_windows=0,
            **MICRO,
        )
    )
    assert more["steps_done"] == 5
    t2v = to_t2v_folder(out, tmp_path / "t2v")
    assert is_t2v_layout(t2v)
    plain = UNet3DConditionModel.from_pretrained(t2v / "unet").float()
    x, ctx = torch.randn(2, 4, 5, 8, 8), torch.randn(2, 5, 77, masked.config.cross_attention_dim)
    with torch.no_grad():
        a = masked(x, torch.tensor(500), ctx, spacing=torch.ones(2))
        b = unet3d_forward(plain, x, torch.tensor(500), ctx)
        c = masked(x, torch.tensor(500), ctx, spacing=torch.full((2,), 9.0))
    assert torch.allclose(a, b, atol=2e-3)
    assert not torch.allclose(b, c, atol=2e-3)  # the export holds the spacing it trained at


def test_boundary_weight_weighs_the_frames_beside_given_ones(tiny_folder, tmp_path):
    """--boundary-weight W: in a local window (first and last frame given) an error on the
    frame next to a given one counts W times an error inside the window, the loss normalised by
    the weights; the held-out loss reads every frame alike."""
    import torch

    from storygen.training.unet import TrainConfig, _start, _Trainer
    from storygen.training.windows import collate

    out, _ = tiny_folder
    window = sample_window(np.random.default_rng(5), frames=8, size=32, role="local")
    batch = collate([window])
    device = torch.device("cpu")

    def loss_with_error_on(trainer, frame: int, **kw) -> float:
        alphas = trainer.alphas

        def exact_but_one(noisy, t, context, *, known, mask, spacing, progress):
            a = alphas[t].view(-1, 1, 1, 1, 1)
            noise = (noisy - a.sqrt() * known) / (1 - a).sqrt()
            pred = a.sqrt() * noise - (1 - a).sqrt() * known  # the v target itself
            pred[:, :, frame] += 0.5
            return pred

        trainer.unet = exact_but_one
        trainer.draws = torch.Generator().manual_seed(0)  # the same time and noise each call
        return float(trainer.loss(*batch, **kw))

    losses = {}
    for w in (1.0, 4.0):
        config = TrainConfig(out=str(tmp_path / "x"), init=str(out), boundary_weight=w, **MICRO)
        trainer = _Trainer(config, _start(config, device), device)
        losses[w] = {k: loss_with_error_on(trainer, k) for k in (1, 3)} | {
            "heldout": loss_with_error_on(trainer, 1, boundary_weight=1.0)
        }
    inside = 8 - 2  # frames not given
    norm = inside + 2 * (4.0 - 1)  # two frames beside the given ones, at weight 4
    assert losses[4.0][1] == pytest.approx(losses[1.0][1] * 4.0 * inside / norm, rel=1e-4)
    assert losses[4.0][3] == pytest.approx(losses[1.0][3] * inside / norm, rel=1e-4)
    assert losses[4.0]["heldout"] == pytest.approx(losses[1.0][1], rel=1e-4)
    with pytest.raises(ValueError, match="boundary_weight"):
        TrainConfig(out="x", boundary_weight=0.5)

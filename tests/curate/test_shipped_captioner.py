"""The shipped shapes-world captioner against ground truth: held-out rendered scenes and the
session corpus' decoded videos, sampled as the pipeline samples them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from curate.captioner import Captioner
from curate.models import DEFAULT_CAPTIONER, read_captioning

pytestmark = pytest.mark.skipif(
    not (DEFAULT_CAPTIONER / "model.safetensors").exists(),
    reason="models/shapes-captioner not built (make train-captioner)",
)


@pytest.fixture(scope="module")
def captioner():
    cap = Captioner(DEFAULT_CAPTIONER)
    cap.setup()
    return cap


def csm(text: str | None):
    from curate.shapes import parse_caption

    f = parse_caption(text)
    return None if f is None else (f.color, f.shape, f.motion)


def test_shipped_folder_is_complete_small_and_documented():
    Captioner(DEFAULT_CAPTIONER).check_folder()
    assert read_captioning(DEFAULT_CAPTIONER) == (2, 2)
    size = sum(p.stat().st_size for p in DEFAULT_CAPTIONER.iterdir())
    assert size < 12e6
    card = (DEFAULT_CAPTIONER / "README.md").read_text()
    for needle in ("Training", "Held-out accuracy", "seed", "make train-captioner"):
        assert needle in card
    report = json.loads((DEFAULT_CAPTIONER / "training_report.json").read_text())
    assert report["settings"]["eval_seed"] != report["settings"]["seed"]
    assert report["heldout"]["color_shape_motion"] >= 0.95


def test_captions_unseen_rendered_scenes(captioner):
    from curate.training.data import caption_of_codes, render_training_data

    # a seed neither the training runs (0, 1) nor the card's evaluation (1000003) used
    data = render_training_data(
        120, seed=515151, frames_per_scene=1, image_size=128, keep_board_frames=True, progress=False
    )
    texts = captioner.caption_scenes(list(data.board_frames))
    truth = caption_of_codes(data.board_codes)
    right = [csm(t) == csm(w) for t, w in zip(texts, truth)]
    assert np.mean(right) >= 0.95
    assert np.mean([t == w for t, w in zip(texts, truth)]) >= 0.9  # the background too


def test_captions_decoded_corpus_scenes(captioner, shapes_corpus):
    """Frames decoded from the mp4s at the pipeline's sample size (224 px shortest edge)."""
    from curate.sampling import FrameSampler

    scenes, truth = [], []
    with FrameSampler(k=4, size=224) as sampler:
        for v in shapes_corpus:
            clips = [
                {
                    "clip_id": f"{v.video_id}:{i}",
                    "video_id": v.video_id,
                    "uri": str(v.path),
                    "start_frame": s.start_frame,
                    "end_frame": s.end_frame,
                    "fps": v.fps,
                    "width": v.width,
                    "height": v.height,
                }
                for i, s in enumerate(v.scenes)
            ]
            for c, s in zip(sampler.sample_video(clips), v.scenes):
                scenes.append(np.asarray(c["frames"]))
                truth.append((s.color, s.shape, s.motion))
    texts = captioner.caption_scenes(scenes)
    assert len(texts) == len(truth) >= 20
    assert np.mean([csm(t) == w for t, w in zip(texts, truth)]) >= 0.9


def test_storyboard_input_comes_from_the_folder(tmp_path, captioner):
    from curate.storyboard import storyboard

    frames = np.random.default_rng(3).integers(0, 256, (4, 90, 120, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        captioner.scene_image(frames), storyboard(frames, (128, 128), (2, 2))
    )
    # the same weights without captioning.json: a plain image captioner, given the middle frame
    plain = tmp_path / "plain"
    shutil.copytree(DEFAULT_CAPTIONER, plain)
    (plain / "captioning.json").unlink()
    np.testing.assert_array_equal(Captioner(plain).scene_image(frames), frames[2])
    (plain / "captioning.json").write_text('{"storyboard": {"grid": [0, 2]}}')
    from curate.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="captioning.json|grid"):
        Captioner(plain).check_folder()


def test_device_side_preprocessing_matches_the_folder_processor(captioner):
    """Resize and normalisation run with torch where the model runs: against the folder's
    own image processor (PIL), within a fraction of an 8-bit level on average, a few at worst (shape edges, noise)."""
    import torch

    from curate.shapes import SceneRenderer, random_facts

    rng = np.random.default_rng(5)
    shapes = np.stack(
        [
            SceneRenderer(random_facts(rng), num_frames=9, width=298, height=224, seed=rng).frame(4)
            for _ in range(6)
        ]
    )
    noise = rng.integers(0, 256, (4, 224, 298, 3), dtype=np.uint8)
    std = torch.tensor(captioner._processor.image_processor.image_std).view(1, 3, 1, 1)
    for images, worst in ((shapes, 3.01), (noise, 8.0)):
        want = captioner._processor(images=list(images), return_tensors="pt")["pixel_values"]
        got = captioner.pixel_values(images)
        levels = (got - want).abs() * std * 255
        assert levels.max().item() <= worst
        assert levels.mean().item() < 0.5


def test_speed_settings_resolve_per_device():
    cap = Captioner(DEFAULT_CAPTIONER)
    assert (cap.dtype, cap.batch_size, cap.compile) == ("float32", 64, "off")
    cuda = Captioner(DEFAULT_CAPTIONER, device="cuda")
    assert (cuda.dtype, cuda.batch_size) == ("bfloat16", 256)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Captioner(DEFAULT_CAPTIONER, dtype="bfloat16")

"""benchmarks/storygen_motion_noise.py: the warped noise holds the prompted motion, and only
in segments whose prompt names a direction."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.storygen_motion_noise import main, warp_noise, warped_global_noise

LEFT = "a red circle moving left on a black background"
GROW = "a red circle growing on a black background"
DOWN = "a blue star moving down on a navy background"


def test_fully_warped_frames_are_the_first_frame_rolled_along_the_motion():
    noise = torch.randn(4, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = [LEFT, LEFT, LEFT, DOWN, DOWN, DOWN]
    progress = [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    out = warp_noise(noise, prompts, progress, alpha=1.0, travel=4)
    assert torch.equal(out[:, 0], noise[:, 0]) and torch.equal(out[:, 3], noise[:, 3])
    assert torch.equal(out[:, 1], torch.roll(noise[:, 0], shifts=-2, dims=2))  # 2 px left
    assert torch.equal(out[:, 2], torch.roll(noise[:, 0], shifts=-4, dims=2))
    assert torch.equal(out[:, 4], torch.roll(noise[:, 3], shifts=2, dims=1))  # 2 px down
    assert torch.equal(out[:, 5], torch.roll(noise[:, 3], shifts=4, dims=1))


def test_partly_warped_noise_stays_standard_normal_and_undirected_segments_are_kept():
    noise = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    prompts = [GROW, GROW, LEFT, LEFT]
    out = warp_noise(noise, prompts, [0.0, 1.0, 0.0, 1.0], alpha=0.9, travel=8)
    assert torch.equal(out[:, :3], noise[:, :3])  # growing: no direction; a segment's first
    mixed = 0.9 * torch.roll(noise[:, 2], -8, dims=2) + math.sqrt(1 - 0.81) * noise[:, 3]
    assert torch.allclose(out[:, 3], mixed)
    assert float(out[:, 3].std()) == pytest.approx(1.0, abs=0.03)
    assert torch.equal(warp_noise(noise, prompts, [0.0, 1.0, 0.0, 1.0], alpha=0.0, travel=8), noise)
    with pytest.raises(ValueError, match="alpha"):
        warp_noise(noise, prompts, [0.0] * 4, alpha=1.5, travel=1)


def test_the_patch_is_undone_and_bad_warps_are_refused():
    from storygen.pipeline import StoryVideoPipeline

    before = StoryVideoPipeline.prepare_latents
    with warped_global_noise(0.9, 5):
        assert StoryVideoPipeline.prepare_latents is not before
    assert StoryVideoPipeline.prepare_latents is before
    with pytest.raises(SystemExit, match="ALPHA:TRAVEL"):
        main(["--warp", "strong"])
    with pytest.raises(SystemExit, match="alpha"):
        main(["--warp", "2:5"])

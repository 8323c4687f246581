"""The sampler math: renoising and the clean-sample algebra behind reconstruction guidance."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from storygen.sampling import predict_x0, renoise, shift_x0


def test_renoise_variance_preserving_matches_the_forward_process():
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(10)
    t_from, t_to = sched.timesteps[5], sched.timesteps[4]  # t_to is the noisier one
    ratio = float(sched.alphas_cumprod[int(t_to)] / sched.alphas_cumprod[int(t_from)])
    x = torch.full((200_000,), 2.0)
    out = renoise(sched, x, t_from=t_from, t_to=t_to, noise=torch.randn(200_000))
    assert out.mean().item() == pytest.approx(2.0 * math.sqrt(ratio), abs=0.01)
    assert out.var().item() == pytest.approx(1.0 - ratio, rel=0.02)
    # from a clean sample (past the last step) the marginal is q(x_t | x_0)
    clean = renoise(sched, x, t_from=None, t_to=t_to, noise=torch.randn(200_000))
    a = float(sched.alphas_cumprod[int(t_to)])
    assert clean.var().item() == pytest.approx(1.0 - a, rel=0.02)


def test_renoise_variance_exploding_for_euler():
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(10)
    t_from, t_to = sched.timesteps[5], sched.timesteps[4]
    s_from, s_to = float(sched.sigmas[5]), float(sched.sigmas[4])
    x = torch.zeros(200_000)
    out = renoise(sched, x, t_from=t_from, t_to=t_to, noise=torch.randn(200_000))
    assert out.var().item() == pytest.approx(s_to**2 - s_from**2, rel=0.02)


@pytest.mark.parametrize(
    ("scheduler_cls", "prediction_type"),
    [
        (DDIMScheduler, "epsilon"),
        (DDIMScheduler, "v_prediction"),
        (EulerDiscreteScheduler, "epsilon"),
        (EulerDiscreteScheduler, "v_prediction"),
    ],
)
def test_predict_x0_inverts_the_forward_process(scheduler_cls, prediction_type):
    sched = scheduler_cls(
        num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type
    )
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    x = sched.add_noise(x0, eps, t.reshape(1))
    if prediction_type == "epsilon":
        out = eps
    elif scheduler_cls is DDIMScheduler:
        out = sched.get_velocity(x0, eps, t.reshape(1))
    else:  # Euler's v: x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)
        s = float(sched.sigmas[3])
        out = (x / (s**2 + 1) - x0) * (s**2 + 1) ** 0.5 / s
    torch.testing.assert_close(predict_x0(sched, x, out, t), x0, rtol=1e-4, atol=1e-4)
    # shifting the output moves the implied clean sample by exactly delta
    delta = torch.randn(2, 8, generator=g)
    moved = predict_x0(sched, x, shift_x0(sched, out, delta, t), t)
    torch.testing.assert_close(moved, x0 + delta, rtol=1e-4, atol=1e-4)

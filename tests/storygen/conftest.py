"""Fixtures of the storygen tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread, and results do not depend on the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """An untrained micro autoencoder for 32 px frames: runs share it instead of training one."""
    from storygen.training.vae import build_vae

    out = tmp_path_factory.mktemp("vae")
    build_vae(32, seed=0, preset="micro").save_pretrained(str(out))
    return out

"""Third-party noise is hidden unless -v: Beam's import notices, faiss's CPU-build probing,
transformers' "Loading weights" bars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from schemas.cli import setup_logging
setup_logging(verbose=sys.argv[1] == "-v")
import apache_beam  # noqa: F401
import faiss  # noqa: F401
from transformers import CLIPModel
CLIPModel.from_pretrained("models/shapes-clip")
import logging
logging.getLogger("storyloom").info("our own line")
"""

NOISE = ("apitools not found", "AVX512", "Loading weights")


def _stderr(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_third_party_noise_is_hidden_and_our_lines_stay():
    err = _stderr("-")
    assert not [n for n in NOISE if n in err], err
    assert "INFO storyloom: our own line" in err


@pytest.mark.slow
def test_verbose_shows_it_all():
    err = _stderr("-v")
    assert all(n in err for n in NOISE), err

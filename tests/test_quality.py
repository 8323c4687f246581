"""benchmarks/quality.py: what it refuses, what its scoring rate times, and the embeddings its
CLIP variants are compared with."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks import quality


def test_real_size_only_and_skip_real_size_are_refused_together(capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--real-size-only", "--skip-real-size"])
    assert "leave nothing to measure" in capsys.readouterr().err


def test_the_scoring_rate_leaves_the_models_load_out(tmp_path, monkeypatch):
    """The scoring's seconds are those of sampling, embedding and scoring the corpus; loading
    the model (here half a second longer) is timed apart."""
    from curate import scoring
    from curate.clip_score import ClipScorer
    from curate.models import DEFAULT_MODEL
    from curate.shapes import generate_corpus

    gt = generate_corpus(
        tmp_path / "corpus",
        videos=2,
        seed=7,
        resolutions=["160x120"],
        max_scenes=2,
        workers=1,
        progress=False,
    )
    setup, score = ClipScorer.setup, scoring.score_videos
    spans = {}

    def slow_setup(self):
        setup(self)
        time.sleep(0.5)

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return score(*a, **kw)
        finally:
            spans["scoring"] = time.perf_counter() - t0

    monkeypatch.setattr(ClipScorer, "setup", slow_setup)
    monkeypatch.setattr(scoring, "score_videos", timed)
    args = quality.parse_args(["--corpus-dir", str(tmp_path / "corpus"), "--videos", "2"])
    _, clips, failures, result = quality.score_corpus(args, str(DEFAULT_MODEL), gt)
    assert clips and not failures
    assert result["frames"] == sum(len(c["frames"]) for c in clips)
    assert result["load_s"] >= 0.5
    assert result["seconds"] == pytest.approx(spans["scoring"], abs=0.05)


def test_clip_variants_are_compared_with_the_eager_embeddings(monkeypatch):
    """Each variant's cosine is against eager's embeddings, whichever variant comes first, and
    with eager not asked for too. Float8 (CUDA only) is stood in for by embeddings rounded
    coarsely."""
    from curate import clip_score
    from curate.models import DEFAULT_MODEL

    class Coarse(clip_score.ClipScorer):
        def __init__(self, *a, fp8="off", **kw):
            super().__init__(*a, fp8="off", **kw)
            self.coarse = fp8 != "off"

        def embed_images(self, frames):
            emb = super().embed_images(frames)
            if self.coarse:
                emb = np.round(emb * 4) / 4
                emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            return emb

    monkeypatch.setattr(clip_score, "ClipScorer", Coarse)
    model = str(DEFAULT_MODEL)
    out = quality.clip_speed(model, device="cpu", frames=4, variants=["fp8", "eager"], batch=2)
    assert out["eager"]["cosine_vs_eager_min"] == pytest.approx(1.0, abs=1e-5)
    coarse = out["fp8"]["cosine_vs_eager_mean"]
    assert coarse < 0.999
    alone = quality.clip_speed(model, device="cpu", frames=4, variants=["fp8"], batch=2)
    assert "eager" not in alone
    assert alone["fp8"]["cosine_vs_eager_mean"] == pytest.approx(coarse, abs=1e-5)

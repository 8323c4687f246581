"""Held-out evaluation of the shapes-world models, and the statistics it uses.

Each model is measured on scenes rendered from a seed its training never saw, seen as the curate
pipeline sees them (the four frames the sampler takes, and their storyboard). The numbers go
into the model cards; the CLIP's also give the caption threshold it recommends.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from curate import shapes
from curate.captioner import Captioner
from curate.clip_score import ClipScorer
from curate.storyboard import scene_similarity

from .data import SLOTS, TrainingData, caption_of_codes, render_training_data, vocabularies


def heldout_scenes(
    scenes: int, *, seed: int, image_size: int, workers: int = 1, progress: bool = False
) -> tuple[TrainingData, np.ndarray]:
    """``scenes`` scenes from ``seed`` as the pipeline sees them: their storyboards and, per
    scene, the four frames the sampler takes ``(n, 4, S, S, 3)``."""
    data = render_training_data(
        scenes,
        seed=seed,
        frames_per_scene=1,
        image_size=image_size,
        storyboards=True,
        keep_board_frames=True,
        workers=workers,
        progress=progress,
    )
    if data.board_frames is None:  # asked for above: always there
        raise RuntimeError("held-out scenes were rendered without their frames")
    return data, data.board_frames


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    values = np.concatenate([pos, neg])
    # average ranks (ties share the mean of their positions), 1-based
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_cut(positive: np.ndarray, negative: np.ndarray) -> float:
    """The score cut that best separates ``positive`` from ``negative`` (Youden's J: TPR - FPR
    of ``score >= cut``), in the middle of the range of equally good cuts, so that a score a
    little off the measured ones (another decoder, a re-encode) falls on the same side."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    cuts = np.unique(np.concatenate([pos, neg]))
    j = np.array([(pos >= c).mean() - (neg >= c).mean() for c in cuts])
    best = np.flatnonzero(j == j.max())
    # the first run of best cuts: every c in (cuts[i0 - 1], cuts[i1]] is as good
    i0 = int(best[0])
    i1 = i0
    while i1 + 1 < len(cuts) and j[i1 + 1] == j.max():
        i1 += 1
    lo = cuts[i0 - 1] if i0 > 0 else cuts[i0] - 1e-3
    return float((lo + cuts[i1]) / 2)


def evaluate_shapes_clip(
    model: str | os.PathLike[str],
    *,
    seed: int,
    scenes: int = 1000,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Held-out accuracy of a CLIP on shapes-world scenes rendered from ``seed``.

    Each scene is seen as the curate pipeline sees it: the four frames the sampler takes.

    - ``color_acc`` / ``shape_acc`` / ``background_acc`` / ``all_acc``: zero-shot
      classification of each frame against every caption of the grammar (the best caption
      over the seven motions of each colour, shape and background)
    - ``scene_*_acc``: the same per scene over all four slots, motion included, with the
      similarity re-captioning uses (:func:`curate.storyboard.scene_similarity`: the mean
      frame embedding, plus the storyboard where the model reads storyboards)
    - ``noise_auroc``: the true caption against a caption of other facts (another colour and
      shape, as a mismatched caption from another video is), per frame
    """
    rng = np.random.default_rng([seed, 0xE7A1])
    vocab = vocabularies()
    with ClipScorer(model=model, batch_size=256, device=device) as scorer:
        h, w = scorer.input_size
        data, bf = heldout_scenes(scenes, seed=seed, image_size=h, progress=progress)
        if (h, w) != bf.shape[2:4]:
            import cv2

            bf = np.stack(
                [[cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in fs] for fs in bf]
            )
        n = len(bf)
        frame_emb = scorer.embed_images(bf.reshape(-1, *bf.shape[2:])).reshape(n, 4, -1)
        scene = scorer.scene_embeddings(list(bf))
        combos = [
            (c, s, m, b)
            for c in range(len(vocab[0]))
            for s in range(len(vocab[1]))
            for m in range(len(vocab[2]))
            for b in range(len(vocab[3]))
        ]
        texts = [shapes.caption_for(*(v[i] for v, i in zip(vocab, cmb))) for cmb in combos]
        txt = scorer.embed_texts(texts)
        truth = data.board_codes.astype(int)
        # per frame: best caption, motion left out
        per_frame = frame_emb.reshape(n * 4, -1) @ txt.T
        pred_f = np.array(combos)[per_frame.argmax(1)]
        truth_f = np.repeat(truth, 4, axis=0)
        # per scene: all four slots
        mean = frame_emb.mean(1)
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        sims = scene_similarity(mean, scene, txt)
        pred_s = np.array(combos)[sims.argmax(1)]
        captions = [shapes.caption_for(*(v[i] for v, i in zip(vocab, t))) for t in truth]
        mismatched = []
        for t in truth:
            while True:
                g = shapes.random_facts(rng)
                if (vocab[0].index(g.color), vocab[1].index(g.shape)) != (t[0], t[1]):
                    break
            mismatched.append(g.caption)
        flat = frame_emb.reshape(n * 4, -1)
        true_cos = np.einsum("nd,nd->n", flat, np.repeat(scorer.embed_texts(captions), 4, 0))
        wrong_cos = np.einsum("nd,nd->n", flat, np.repeat(scorer.embed_texts(mismatched), 4, 0))
        reads_boards = scorer.storyboard_grid is not None
    acc: dict[str, Any] = {}
    for k, name in ((0, "color"), (1, "shape"), (3, "background")):
        acc[f"{name}_acc"] = float(np.mean(pred_f[:, k] == truth_f[:, k]))
    visible = [0, 1, 3]
    acc["all_acc"] = float(np.mean((pred_f[:, visible] == truth_f[:, visible]).all(1)))
    for k, name in enumerate(SLOTS):
        acc[f"scene_{name}_acc"] = float(np.mean(pred_s[:, k] == truth[:, k]))
    acc["scene_all_acc"] = float(np.mean((pred_s == truth).all(1)))
    acc["noise_auroc"] = auroc(true_cos, wrong_cos)
    acc["recommended_threshold"] = best_cut(true_cos, wrong_cos)
    acc["true_caption_cos_min"] = float(true_cos.min())
    acc["mismatched_caption_cos_max"] = float(wrong_cos.max())
    acc["true_caption_cos_mean"] = float(true_cos.mean())
    acc["mismatched_caption_cos_mean"] = float(wrong_cos.mean())
    acc["frames"] = int(len(flat))
    acc["scenes"] = int(n)
    acc["storyboards"] = bool(reads_boards)
    return acc


def evaluate_shapes_captioner(
    folder: str | os.PathLike[str],
    *,
    scenes: int = 1500,
    seed: int = 1_000_003,
    image_size: int = 128,
    workers: int = 1,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Caption the storyboards of ``scenes`` held-out scenes and compare each caption's facts
    (read back with the grammar's parser) with the scene's truth, slot by slot."""
    from tqdm import tqdm

    data, board_frames = heldout_scenes(
        scenes, seed=seed, image_size=image_size, workers=workers, progress=progress
    )
    cap = Captioner(folder, device=device)
    texts: list[str] = []
    for a in tqdm(range(0, scenes, batch_size), desc="caption", disable=not progress):
        texts += cap.caption_scenes(list(board_frames[a : a + batch_size]))
    truth = caption_of_codes(data.board_codes)
    got = [shapes.parse_caption(t) for t in texts]
    want = [shapes.parse_caption(t) for t in truth]
    out: dict[str, Any] = {"scenes": scenes, "seed": seed}
    for slot in ("color", "shape", "motion", "background"):
        out[slot] = float(
            np.mean(
                [g is not None and getattr(g, slot) == getattr(w, slot) for g, w in zip(got, want)]
            )
        )
    out["color_shape_motion"] = float(
        np.mean(
            [
                g is not None
                and w is not None
                and (g.color, g.shape, g.motion) == (w.color, w.shape, w.motion)
                for g, w in zip(got, want)
            ]
        )
    )
    out["exact"] = float(np.mean([t == w for t, w in zip(texts, truth)]))
    out["grammatical"] = float(np.mean([g is not None for g in got]))
    out["examples"] = [{"truth": w, "caption": t} for w, t in list(zip(truth, texts))[:6]]
    return out

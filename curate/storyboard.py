"""Scenes as images: storyboards, and how a scene's embeddings rank texts.

A single frame cannot show motion; a storyboard can: a scene's sampled frames tiled in time
order into one image (the image-grid trick that lets image-text models read short videos).
The scorer embeds storyboards, the captioner captions them, re-captioning ranks prompts with
:func:`scene_similarity`, and the shipped models were trained on them.
"""

from __future__ import annotations

import numpy as np

#: tiles of a scene storyboard (rows, columns): the sampled frames in time order, row by row
STORYBOARD_GRID = (2, 2)


def storyboard(
    frames: np.ndarray, size: tuple[int, int], grid: tuple[int, int] = STORYBOARD_GRID
) -> np.ndarray:
    """One ``size`` (height, width) image of a scene: its frames in time order, tiled row by row.

    A single frame cannot show motion; a storyboard can (the image-grid trick that lets
    image-text models read short videos). ``frames`` are ``(N, H, W, 3)`` uint8 in time
    order; ``rows * cols`` of them are picked evenly (repeating frames when there are fewer)
    and each is squashed to its tile with area interpolation.
    """
    import cv2  # only when a storyboard is drawn: OpenCV is slow to import

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"storyboard needs (N, H, W, 3) frames, got shape {frames.shape}")
    rows, cols = grid
    h, w = size
    if rows < 1 or cols < 1 or h < rows or w < cols:
        raise ValueError(f"cannot tile {size} into a {rows}x{cols} grid")
    pick = np.linspace(0, len(frames) - 1, rows * cols).round().astype(int)
    ys = np.linspace(0, h, rows + 1).round().astype(int)
    xs = np.linspace(0, w, cols + 1).round().astype(int)
    out = np.empty((h, w, 3), np.uint8)
    for k, i in enumerate(pick):
        r, c = divmod(k, cols)
        th, tw = ys[r + 1] - ys[r], xs[c + 1] - xs[c]
        out[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = cv2.resize(
            np.ascontiguousarray(frames[i]), (tw, th), interpolation=cv2.INTER_AREA
        )
    return out


def scene_similarity(
    embedding: np.ndarray, scene_embedding: np.ndarray | None, text_embeddings: np.ndarray
) -> np.ndarray:
    """Cosine of scenes with texts as re-captioning ranks them: ``(N, T)``.

    ``embedding`` is each scene's mean frame embedding (what the frames show);
    ``scene_embedding`` its storyboard embedding (what happens over time) or ``None`` for a
    model that does not read storyboards. With both, the two cosines are averaged.
    """
    sims = np.asarray(embedding, np.float32) @ np.asarray(text_embeddings, np.float32).T
    if scene_embedding is not None:
        sims = (sims + np.asarray(scene_embedding, np.float32) @ text_embeddings.T) / 2
    return sims

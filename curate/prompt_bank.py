"""The prompt bank: prompts a scene without a usable caption can be re-captioned from.

The corpus' own bank is the caption fragments that kept clips were scored with, split into the
events they narrate and cleaned of prompts that say less than another
(:func:`build_prompt_bank`); a user's bank is a text file, one prompt a line
(:func:`load_prompt_bank`). :class:`PromptBank` searches the prompts' CLIP text embeddings with
faiss.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.tables import KEPT

from .captions import clean_caption, normalize_caption, split_caption
from .errors import CaptionError

logger = logging.getLogger(__name__)


def load_prompt_bank(path: str | os.PathLike[str]) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped), cleaned, de-duplicated."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CaptionError(f"cannot read prompt bank: {exc.strerror or exc}", uri=str(p)) from None
    out: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        cleaned = clean_caption(line, where=f"{p}:{n}")
        if cleaned.ok and not cleaned.text.startswith("#"):
            out.append(cleaned.text)
        elif line.strip() and not line.strip().startswith(b"#"):
            logger.warning("%s line %d skipped: %s", p, n, cleaned.note)
    out = list(dict.fromkeys(out))
    if not out:
        raise CaptionError("prompt bank holds no usable prompt", uri=str(p))
    return out


def build_prompt_bank(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The corpus' own prompts: the caption fragment that scored each kept clip, split into
    the events it narrates (a bank prompt stands for one scene), cleaned with
    :func:`clean_prompt_bank`."""
    bank: dict[str, None] = {}
    for r in records:
        if r.get("status") != KEPT:
            continue
        text = r.get("fragment") or r.get("source_caption")
        if isinstance(text, str) and text.strip():
            for part in split_caption(text) or [text]:
                bank[normalize_caption(part)] = None
    return clean_prompt_bank(list(bank))


_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)


def clean_prompt_bank(prompts: Iterable[str]) -> list[str]:
    """Drop the prompts that say less than another: one cut off mid-word (a caption truncated
    at a length limit: "... on a brown backg", told by a last word that never occurs inside a
    prompt while a longer word of the bank begins with it) and one that is the start of a longer prompt.
    Order and first spelling are kept; duplicates go."""
    uniq = list(dict.fromkeys(normalize_caption(p) for p in prompts if p and p.strip()))
    words = [_WORDS.findall(p.lower()) for p in uniq]
    inner = {w for ws in words for w in ws[:-1]}
    vocab = sorted({w for ws in words for w in ws})

    def cut(text: str, ws: list[str]) -> bool:
        if not ws or ws[-1] in inner or not text.lower().endswith(ws[-1]):
            return False
        i = bisect.bisect_right(vocab, ws[-1])
        return i < len(vocab) and vocab[i].startswith(ws[-1])

    kept = [p for p, ws in zip(uniq, words) if not cut(p, ws)]
    # a prompt that another one extends is the prefix of its successor in sorted order
    low = sorted({p.lower() for p in kept})
    extended = {a for a, b in zip(low, low[1:]) if b.startswith(a)}
    return [p for p in kept if p.lower() not in extended]


class PromptBank:
    """Prompts with their CLIP text embeddings behind a faiss inner-product index."""

    def __init__(self, prompts: Sequence[str], embeddings: np.ndarray) -> None:
        import faiss

        if len(prompts) != len(embeddings):
            raise ValueError(f"{len(prompts)} prompts but {len(embeddings)} embeddings")
        self.prompts = list(prompts)
        self.index = faiss.IndexFlatIP(int(embeddings.shape[1]))
        if len(prompts):
            self.index.add(np.ascontiguousarray(embeddings, np.float32))

    def __len__(self) -> int:
        return len(self.prompts)

    def search(
        self, queries: np.ndarray, k: int = 1, scene: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(n, D)`` unit image embeddings → ``(scores, indices)``, each ``(n, k)``.

        With ``scene`` (storyboard embeddings, ``(n, D)``) the score is
        :func:`~curate.storyboard.scene_similarity`; being the mean of two cosines, it is the
        inner product with the mean of the two queries, so one index search gives it.
        """
        if not self.prompts:
            raise ValueError("the prompt bank is empty")
        q = np.asarray(queries, np.float32)
        if scene is not None:
            q = ((q + np.asarray(scene, np.float32)) / 2).astype(np.float32)
        return self.index.search(np.ascontiguousarray(q, np.float32), k)

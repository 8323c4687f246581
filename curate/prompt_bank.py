"""The prompt bank: prompts a scene without a usable caption can be re-captioned from.

The corpus' own bank is the caption fragments that kept clips were scored with, split into the
events they narrate and cleaned of prompts that say less than another
(:func:`build_prompt_bank`); a user's bank is a text file, one prompt a line
(:func:`load_prompt_bank`). :class:`PromptBank` searches the prompts' CLIP text embeddings with
faiss.
"""

from __future__ import annotations

import bisect
import html
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


_BOM = b"\xef\xbb\xbf"


def load_prompt_bank(path: str | os.PathLike[str]) -> list[str]:
    """One prompt per line (blank lines and ``#`` comments skipped), cleaned, de-duplicated; a
    UTF-8 byte order mark at the start of the file is not part of the first line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CaptionError(f"cannot read prompt bank: {exc.strerror or exc}", uri=str(p)) from None
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
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


def bank_prompts(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The caption fragment that scored each kept clip, split into the events it narrates (a
    bank prompt stands for one scene), cleaned and in first-seen order; not yet cleaned of
    prompts that say less than another (:func:`clean_prompt_bank` does that over a whole
    corpus)."""
    bank: dict[str, None] = {}
    for r in records:
        if r.get("status") != KEPT:
            continue
        text = r.get("fragment") or r.get("source_caption")
        if not isinstance(text, str) or not text.strip():
            continue
        cleaned = clean_caption(text)
        text = cleaned.text if cleaned.ok else normalize_caption(text)
        for part in split_caption(text) or [text]:
            bank[normalize_caption(part)] = None
    return list(bank)


def build_prompt_bank(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The corpus' own prompts: :func:`bank_prompts` of ``records``, cleaned with
    :func:`clean_prompt_bank`."""
    return clean_prompt_bank(bank_prompts(records))


_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
#: endings that make a word's plural: "circle" is not "circles" cut off
PLURAL_ENDINGS = ("s", "es")


def prompt_words(text: str) -> list[str]:
    """The words of ``text``, lower-cased: its runs of letters."""
    return _WORDS.findall(text.lower())


def whole_words(prompts: Iterable[str]) -> set[str]:
    """The words that stand whole in ``prompts``: every word but a prompt's last (which may
    be cut off: two captions cut at one length limit may end in the same "... backgr")."""
    return {w for p in prompts for w in prompt_words(p)[:-1]}


def _continues(longer: str, shorter: str) -> bool:
    """Whether ``longer`` is ``shorter`` continued after a word boundary."""
    return (
        len(longer) > len(shorter)
        and longer.startswith(shorter)
        and not longer[len(shorter)].isalnum()
    )


def clean_prompt_bank(prompts: Iterable[str]) -> list[str]:
    """Drop the prompts that say less than another, comparing whole words:

    * one cut off mid-word (a caption truncated at a length limit: "... on a brown backg"),
      told by a last word that stands whole nowhere in the bank (:func:`whole_words`) while
      a longer word of the bank begins with it (other than by a plural ending: "circle"
      beside "circles" is a word). Without a dictionary a rare whole word looks the same: in
      a bank where "a cat" is the only "cat" and "a caterpillar" is there too, "a cat" goes;
      a bank of real size holds its words whole somewhere.
    * one that another prompt continues word for word ("a red circle" beside "a red circle
      moving up"; "a red circles parade" goes on from no word of "a red circle").
    * one that is another with a tail holding no letter or digit ("... background &" beside
      "... background"): the shorter one says as much.

    HTML character references are decoded first. Order and first spelling are kept;
    duplicates go."""
    uniq = list(
        dict.fromkeys(
            normalize_caption(html.unescape(p) if "&" in p else p)
            for p in prompts
            if p and p.strip()
        )
    )
    words = [prompt_words(p) for p in uniq]
    whole = whole_words(uniq)
    vocab = sorted({w for ws in words for w in ws})

    def cut(text: str, ws: list[str]) -> bool:
        last = ws[-1] if ws else ""
        if not last or last in whole or not text.lower().endswith(last):
            return False
        i = bisect.bisect_right(vocab, last)
        while i < len(vocab) and vocab[i].startswith(last):
            if vocab[i][len(last) :] not in PLURAL_ENDINGS:
                return True
            i += 1
        return False

    kept = [p for p, ws in zip(uniq, words) if not cut(p, ws)]
    # the prompts that continue one are right after it in sorted order
    low = sorted({p.lower() for p in kept})
    says_less = set()
    for i, a in enumerate(low):
        j = i + 1
        while j < len(low) and low[j].startswith(a):
            b = low[j]
            if _continues(b, a):
                if any(ch.isalnum() for ch in b[len(a) :]):
                    says_less.add(a)
                else:
                    says_less.add(b)
            j += 1
    return [p for p in kept if p.lower() not in says_less]


class PromptBank:
    """Prompts with their CLIP text embeddings behind a faiss inner-product index."""

    def __init__(self, prompts: Sequence[str], embeddings: np.ndarray) -> None:
        import faiss

        if len(prompts) != len(embeddings):
            raise ValueError(f"{len(prompts)} prompts but {len(embeddings)} embeddings")
        self.prompts = list(prompts)
        self._words: frozenset[str] | None = None
        self.index = faiss.IndexFlatIP(int(embeddings.shape[1]))
        if len(prompts):
            self.index.add(np.ascontiguousarray(embeddings, np.float32))

    def __len__(self) -> int:
        return len(self.prompts)

    def whole_words(self) -> frozenset[str]:
        """The words that stand whole in the prompts (:func:`whole_words`)."""
        if self._words is None:
            self._words = frozenset(whole_words(self.prompts))
        return self._words

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

"""Text conditioning: per-frame prompt embeddings from a CLIP tokenizer and text encoder.

Checkpoints load from local folders. Freshly initialised text encoders and tokenizers (tests,
random models) are built by :mod:`storygen.presets`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_texts(
    tokenizer: Any,
    text_encoder: Any,
    texts: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Last hidden states of ``texts``: (n, S, D), padded to the tokenizer's max length."""
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    states = text_encoder(ids.to(text_encoder.device)).last_hidden_state
    return states.to(device=device, dtype=dtype or states.dtype)


class PromptCache:
    """Encodes each distinct prompt once and hands out per-frame embeddings.

    A 3,376-frame story usually has a few dozen distinct prompts, so per-frame embeddings are
    gathered from a small table rather than re-encoded frame by frame.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, *, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.index: dict[str, int] = {}
        self._rows: list[torch.Tensor] = []
        self._table: torch.Tensor | None = None

    def add(self, prompts: Iterable[str]) -> None:
        new = [p for p in dict.fromkeys(prompts) if p not in self.index]
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            states = encode_texts(self.tokenizer, self.text_encoder, chunk)
            for prompt, row in zip(chunk, states):
                self.index[prompt] = len(self._rows)
                self._rows.append(row.cpu())
        if new:
            logger.debug("encoded %s new prompts (%s distinct)", len(new), len(self.index))

    def __len__(self) -> int:
        return len(self.index)

    def get(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``prompts`` (encoding any not seen yet): (len(prompts), S, D); no
        prompts give (0, S, D)."""
        if not prompts:
            return self._empty()
        self.add(prompts)
        return torch.stack([self._rows[self.index[p]] for p in prompts])

    def table(self) -> torch.Tensor:
        """Every embedding encoded so far, row :attr:`index` ``[prompt]`` for each prompt:
        (len(self), S, D), stacked once until a prompt is added; (0, S, D) before any."""
        if not self._rows:
            return self._empty()
        if self._table is None or len(self._table) != len(self._rows):
            self._table = torch.stack(self._rows)
        return self._table

    def _empty(self) -> torch.Tensor:
        """(0, S, D): S and D from an embedding encoded, else from the tokenizer's max length
        and the text encoder's width; ``ValueError`` when neither says."""
        if self._rows:
            return self._rows[0].new_empty((0, *self._rows[0].shape))
        length = getattr(self.tokenizer, "model_max_length", None)
        config = getattr(self.text_encoder, "config", None)
        width = getattr(config, "hidden_size", None)
        if not isinstance(length, int) or not isinstance(width, int):
            raise ValueError(
                "no prompt encoded yet, and the tokenizer's model_max_length and the text "
                "encoder's config.hidden_size do not give the embedding shape (S, D)"
            )
        dtype = getattr(self.text_encoder, "dtype", None)
        return torch.empty(
            0, length, width, dtype=dtype if isinstance(dtype, torch.dtype) else None
        )

"""Text conditioning: CLIP tokenizers and text encoders, and per-frame prompt embeddings.

Checkpoints load from local folders. For tests and freshly initialised models, a tiny CLIP
tokenizer is trained offline with the ``tokenizers`` library (a byte-level BPE with CLIP's
``</w>`` end-of-word suffix) and handed to :class:`transformers.CLIPTokenizer`, so the saved
folder loads like any CLIP tokenizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

#: words every tiny vocabulary learns, so ordinary prompts tokenize into whole words
BASE_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "over",
    "under",
    "with",
    "and",
    "then",
    "moves",
    "moving",
    "slowly",
    "quickly",
    "left",
    "right",
    "up",
    "down",
    "across",
    "around",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "white",
    "black",
    "gray",
    "brown",
    "circle",
    "square",
    "triangle",
    "star",
    "ball",
    "shape",
    "on",
    "a",
    "background",
    "plain",
    "striped",
    "gradient",
    "small",
    "big",
    "large",
    "scene",
    "video",
    "of",
]


def build_tiny_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int = 512,
    model_max_length: int = MODEL_MAX_LENGTH,
):
    """Train a byte-level CLIP BPE tokenizer on ``texts``; save it to ``out_dir`` if given.

    Every byte is in the vocabulary, so any text encodes; words seen in ``texts`` (and a small
    base vocabulary) become single tokens.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials), got {vocab_size!r}")
    tok = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # the same normalizer and pre-tokenizer as CLIPTokenizer, so the learnt merges apply there
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator([*texts, " ".join(BASE_WORDS)], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # a word ending in a byte never seen word-finally would otherwise map to the unknown token
    for sym in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(sym + "</w>", len(vocab))
    clip_tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # tuples, as the tokenizers backend wants
        model_max_length=model_max_length,
    )
    if out_dir is not None:
        clip_tok.save_pretrained(str(out_dir))
    return clip_tok


def build_tiny_text_encoder(
    tokenizer: Any,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
):
    """A randomly initialised :class:`transformers.CLIPTextModel` sized for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


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
        """Embeddings of ``prompts`` (encoding any not seen yet): (len(prompts), S, D)."""
        self.add(prompts)
        return torch.stack([self._rows[self.index[p]] for p in prompts])

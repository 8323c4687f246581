"""The prompt cache: each distinct prompt encoded once, embeddings handed out per frame, and
empty requests answered with an empty table of the right shape."""

from __future__ import annotations

import pytest
import torch

from storygen.text import PromptCache, encode_texts

PROMPTS = ["a red circle moving right", "a blue square on a navy background"]


@pytest.fixture(scope="module")
def text():
    from curate.training.tokenizer import train_clip_tokenizer
    from storygen.presets import build_tiny_text_encoder

    tokenizer = train_clip_tokenizer(PROMPTS, vocab_size=300, base_words=[], model_max_length=16)
    return tokenizer, build_tiny_text_encoder(tokenizer, hidden_size=8, num_heads=2)


def test_each_prompt_is_encoded_once_and_rows_follow_the_index(text):
    cache = PromptCache(*text)
    got = cache.get([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert got.shape == (3, 16, 8) and len(cache) == 2
    torch.testing.assert_close(got[1:], encode_texts(*text, [PROMPTS[0], PROMPTS[1]]))
    table = cache.table()
    assert torch.equal(table[cache.index[PROMPTS[1]]], got[0])


def test_an_empty_request_gives_an_empty_table(text):
    cache = PromptCache(*text)
    assert cache.get([]).shape == (0, 16, 8)  # before any prompt: from the models' config
    assert cache.table().shape == (0, 16, 8)
    cache.add(PROMPTS)
    assert cache.get([]).shape == (0, 16, 8) and cache.get([]).dtype == cache.table().dtype
    assert cache.table().shape == (2, 16, 8)


def test_an_empty_request_of_unknown_shape_says_so(text):
    cache = PromptCache(text[0], object())
    with pytest.raises(ValueError, match="embedding shape"):
        cache.get([])
    with pytest.raises(ValueError, match="embedding shape"):
        cache.table()

"""The one CLIP tokenizer trainer: any text encodes, learnt words are whole tokens, the folder
loads like any CLIP tokenizer."""

from __future__ import annotations

import json

import pytest

from curate.training.tokenizer import GENERAL_WORDS, MODEL_MAX_LENGTH, train_clip_tokenizer

TEXTS = [
    "a red circle moving left on a navy background",
    "a blue square growing on a beige background, then a green star",
]


@pytest.fixture(scope="module")
def tok():
    return train_clip_tokenizer(TEXTS, vocab_size=1024)


def test_learnt_and_base_words_are_single_tokens(tok):
    for word in ("circle", "background", "navy", "footage"):  # footage: a base word
        assert len(tok.tokenize(word)) == 1, word
    assert "footage" in GENERAL_WORDS


def test_every_text_encodes_without_the_unknown_token(tok):
    for text in [*TEXTS, "赤い円が左に動く", "ein roter Kreis.", "🙂 ✓", "x" * 5]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        # the end-of-text token is also CLIP's unknown token: it must appear only at the end
        assert tok.eos_token_id not in ids[1:-1], text


def test_decoding_gives_the_normalised_text_back(tok):
    for text in ["A Red circle  moving LEFT", "zebra crossing at night", "赤い円"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True).strip() == " ".join(text.lower().split())


def test_truncates_at_the_model_length(tok):
    assert tok.model_max_length == MODEL_MAX_LENGTH == 77
    ids = tok(" ".join(["circle"] * 200), truncation=True)["input_ids"]
    assert len(ids) == 77
    short = train_clip_tokenizer(TEXTS, vocab_size=300, model_max_length=16)
    assert len(short(" ".join(["circle"] * 50), truncation=True)["input_ids"]) == 16


def test_base_words_can_be_replaced(tok):
    own = train_clip_tokenizer(TEXTS, vocab_size=1024, base_words=["zebra"])
    assert len(own.tokenize("zebra")) == 1
    assert len(own.tokenize("footage")) > 1


def _merges(tok):
    return json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]


def test_the_same_texts_give_the_same_tokenizer(tok):
    # the same vocabulary, ids and merges in the same order every time: a text encoder built
    # from a seed on top of it is then the same model
    for again in (train_clip_tokenizer(TEXTS, vocab_size=1024) for _ in range(3)):
        assert again.get_vocab() == tok.get_vocab()
        assert _merges(again) == _merges(tok)
        for text in [TEXTS[0], "stock footage of a dog", "赤い円"]:
            ids = again(text)["input_ids"]
            assert ids == tok(text)["input_ids"]
            assert again.decode(ids, skip_special_tokens=True).strip() == text


def test_numbering_puts_specials_and_bytes_first(tok):
    vocab = tok.get_vocab()
    assert (vocab[tok.bos_token], vocab[tok.eos_token]) == (0, 1)
    ordered = sorted(vocab, key=vocab.__getitem__)
    assert ordered[2:258] == sorted(ordered[2:258]) and all(len(s) == 1 for s in ordered[2:258])
    assert ordered[258:514] == [s + "</w>" for s in ordered[2:258]]
    merged = ["".join(m) for m in _merges(tok)]
    assert ordered[514 : 514 + len(merged)] == merged


def test_saved_folder_loads_as_a_clip_tokenizer(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer

    tok = train_clip_tokenizer(TEXTS, vocab_size=300, out_dir=tmp_path / "tok")
    for cls in (CLIPTokenizer, AutoTokenizer):
        loaded = cls.from_pretrained(tmp_path / "tok")
        assert loaded(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"vocab_size": 259}, "vocab_size"), ({"min_frequency": 0}, "min_frequency")],
)
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_clip_tokenizer(TEXTS, **kwargs)

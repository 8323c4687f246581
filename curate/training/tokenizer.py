"""Tokenizers trained offline: the one CLIP BPE trainer, and the captioner's WordPiece.

The shipped models need tokenizers, and no hub is reachable at build time, so they are trained
here with the ``tokenizers`` library:

- :func:`train_clip_tokenizer`: a byte-level BPE with exactly the normalizer, pre-tokenizer and
  ``</w>`` end-of-word suffix that :class:`transformers.CLIPTokenizer` applies. The learnt
  vocabulary and merges are handed to ``CLIPTokenizer`` itself, so a saved folder loads with
  ``CLIPTokenizer.from_pretrained`` like any CLIP checkpoint. The shapes-world CLIP, the tiny
  CLIPs of tests and storygen's text encoders all take their tokenizer from here.
- :func:`train_caption_tokenizer`: a lower-casing WordPiece (``BertTokenizer``) whose ``[DEC]``
  starts a caption, as BLIP's decoder expects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
#: CLIP's context length; tokenizers built here truncate to it
MODEL_MAX_LENGTH = 77

#: words beyond the shapes-world grammar, so that stock-footage boilerplate and everyday text
#: tokenize into whole words rather than single bytes
GENERAL_WORDS = [
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
    "without",
    "and",
    "then",
    "after",
    "that",
    "followed",
    "by",
    "while",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "this",
    "these",
    "those",
    "it",
    "its",
    "from",
    "to",
    "into",
    "onto",
    "for",
    "as",
    "near",
    "far",
    "stock",
    "footage",
    "video",
    "clip",
    "hd",
    "4k",
    "1080p",
    "slow",
    "motion",
    "timelapse",
    "time",
    "lapse",
    "aerial",
    "view",
    "shot",
    "close",
    "up",
    "closeup",
    "background",
    "foreground",
    "royalty",
    "free",
    "editorial",
    "loop",
    "seamless",
    "beautiful",
    "young",
    "old",
    "man",
    "woman",
    "people",
    "person",
    "child",
    "children",
    "dog",
    "cat",
    "bird",
    "car",
    "city",
    "street",
    "road",
    "sky",
    "sea",
    "ocean",
    "water",
    "beach",
    "forest",
    "tree",
    "trees",
    "mountain",
    "snow",
    "sun",
    "sunset",
    "sunrise",
    "night",
    "day",
    "light",
    "dark",
    "bright",
    "small",
    "big",
    "large",
    "little",
    "tiny",
    "huge",
    "fast",
    "slowly",
    "quickly",
    "moving",
    "moves",
    "running",
    "walking",
    "flying",
    "falling",
    "rising",
    "turning",
    "spinning",
    "rotating",
    "bouncing",
    "sliding",
    "left",
    "right",
    "up",
    "down",
    "top",
    "bottom",
    "center",
    "middle",
    "side",
    "corner",
    "across",
    "around",
    "through",
    "camera",
    "zoom",
    "pan",
    "tilt",
    "frame",
    "scene",
    "screen",
    "image",
    "picture",
    "graphic",
    "animation",
    "abstract",
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
    "grey",
    "brown",
    "cyan",
    "magenta",
    "circle",
    "square",
    "triangle",
    "star",
    "ball",
    "box",
    "cube",
    "shape",
    "shapes",
    "object",
    "objects",
    "one",
    "two",
    "three",
    "first",
    "second",
    "last",
    "next",
    "end",
    "start",
    "begins",
    "ends",
    "appears",
    "disappears",
    "stays",
    "remains",
    "still",
    "plain",
    "solid",
    "striped",
    "stripes",
    "gradient",
    "checkered",
    "dotted",
    "pattern",
    "texture",
    "color",
    "colour",
]


def train_clip_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 1024,
    min_frequency: int = 1,
    base_words: Sequence[str] = GENERAL_WORDS,
    model_max_length: int = MODEL_MAX_LENGTH,
    out_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Train a byte-level BPE on ``texts`` and return a :class:`transformers.CLIPTokenizer`.

    ``vocab_size`` counts the 256 byte symbols (so any text, in any script, still encodes) and
    the two special tokens; the 256 word-final byte symbols come on top. ``base_words`` are
    learnt besides ``texts``, so that ordinary words tokenize whole. The result truncates at
    ``model_max_length`` (CLIP's 77 by default) and is saved to ``out_dir`` when given.

    The same arguments give the same vocabulary, merges and ids every time (a text encoder
    built from a seed then is the same model): the word-final byte symbols are numbered before
    training, so the trainer breaks ties between equally frequent pairs the same way, and the
    vocabulary is numbered afterwards from the merges alone (:func:`_numbered`).
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + specials), got {vocab_size!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency!r}")

    # The same text pipeline as CLIPTokenizer, so the merges learnt here apply there unchanged.
    tok = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
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
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # As in CLIP's own vocabulary, every byte also exists as a word-final symbol: without it
    # a word ending in a byte never seen word-finally (a lone ".", a CJK character) would map
    # to the unknown token, which is the end-of-text token that CLIP pools on. Given to the
    # trainer up front, they hold fixed ids, which its tie-breaks between equally frequent
    # pairs follow (else it numbers them in hash order, and the merge order varies by run).
    word_final = [sym + "</w>" for sym in alphabet]
    trainer = BpeTrainer(
        vocab_size=vocab_size + len(word_final),
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, *word_final],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    corpus = list(texts) + [" ".join(base_words)]
    tok.train_from_iterator(corpus, trainer=trainer)

    model = json.loads(tok.to_str())["model"]
    # tokenizers writes merges as [a, b] pairs (or "a b" strings in older versions)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    vocab = _numbered(model["vocab"], merges, alphabet)
    clip_tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # tuples, as tokenizers expects
        model_max_length=model_max_length,
    )
    logger.info("trained a CLIP BPE tokenizer: %s tokens, %s merges", len(vocab), len(merges))
    if out_dir is not None:
        clip_tok.save_pretrained(os.fspath(out_dir))
    return clip_tok


def _numbered(
    learnt: dict[str, int], merges: Sequence[tuple[str, ...]], alphabet: Sequence[str]
) -> dict[str, int]:
    """The vocabulary numbered from what it holds, not from the trainer's ids: the special
    tokens, the byte symbols, the word-final byte symbols (each set sorted), the merge results
    in merge order, then anything else, sorted."""
    order = [BOS, EOS, *alphabet, *(sym + "</w>" for sym in alphabet)]
    order += ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for sym in [*order, *sorted(learnt)]:
        vocab.setdefault(sym, len(vocab))
    return vocab


#: the special tokens of the captioner's vocabulary; ``[DEC]`` starts every generated caption
CAPTION_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def train_caption_tokenizer(texts: list[str], *, max_length: int = 24) -> Any:
    """A lower-casing WordPiece tokenizer (``BertTokenizer``) trained on ``texts``; ``[DEC]``
    is its beginning-of-caption token, as BLIP's decoder expects."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(
        texts, vocab_size=512, min_frequency=1, special_tokens=list(CAPTION_SPECIAL_TOKENS)
    )
    return BertTokenizer(
        vocab=tok.get_vocab(), bos_token="[DEC]", model_max_length=max_length, do_lower_case=True
    )

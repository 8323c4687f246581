"""The captioner's training code on a tiny run: tokenizer, folder, loss, evaluation, card."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from curate.captioner import Captioner
from curate.models import read_captioning
from curate.training.captioner import CaptionerSettings, train_shapes_captioner
from curate.training.data import caption_of_codes
from curate.training.evaluate import evaluate_shapes_captioner
from curate.training.tokenizer import train_caption_tokenizer


def test_tokenizer_round_trips_every_caption_of_the_grammar():
    from curate.shapes import all_captions

    captions = all_captions()
    tok = train_caption_tokenizer(captions)
    enc = tok(captions)["input_ids"]
    assert tok.unk_token_id not in {i for ids in enc for i in ids}
    assert tok.batch_decode(enc, skip_special_tokens=True) == captions
    assert tok.convert_tokens_to_ids("[DEC]") not in (tok.unk_token_id, None)
    assert max(len(ids) for ids in enc) <= CaptionerSettings().max_length


def test_caption_of_codes_is_the_grammar():
    from curate.shapes import random_facts
    from curate.training.data import facts_codes

    rng = np.random.default_rng(5)
    facts = [random_facts(rng) for _ in range(20)]
    codes = np.array([facts_codes(f) for f in facts])
    assert caption_of_codes(codes) == [f.caption for f in facts]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="eval_seed"):
        CaptionerSettings(seed=3, eval_seed=3)
    with pytest.raises(ValueError, match="patch_size"):
        CaptionerSettings(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="device"):
        CaptionerSettings(device="tpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("captioner")
    settings = CaptionerSettings(
        scenes=256,
        epochs=12,
        batch_size=32,
        lr=2e-3,
        image_size=64,
        hidden=48,
        vision_layers=1,
        text_layers=1,
        device="cpu",
        time_budget_s=None,
    )
    report = train_shapes_captioner(out, settings, progress=False)
    return out, settings, report


def test_tiny_run_learns_and_writes_a_loadable_folder(tiny_run):
    out, settings, report = tiny_run
    assert report["steps"] == 12 * (256 // 32)
    assert report["final_loss"] < 0.6 * report["first_loss"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (out / name).is_file()
    assert read_captioning(out) == (2, 2)
    cap = Captioner(out)
    assert cap.input_size == (64, 64)
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    (text,) = cap.caption_scenes([frames])
    # what it writes is made of the grammar's words, whatever it learned so far
    from curate.shapes import all_captions

    words = {w for c in all_captions() for w in c.split()}
    assert text and set(text.split()) <= words


def test_evaluation_and_model_card(tiny_run):
    from curate.training.cards import captioner_card

    out, settings, report = tiny_run
    metrics = evaluate_shapes_captioner(out, scenes=24, image_size=64, progress=False)
    assert metrics["scenes"] == 24
    for k in ("color", "shape", "motion", "background", "color_shape_motion", "exact"):
        assert 0.0 <= metrics[k] <= 1.0
    assert metrics["exact"] <= metrics["color_shape_motion"] <= metrics["color"]
    report = {**report, "continued_from": dict(report)}
    card = captioner_card(report, metrics)
    assert card.count("| cpu |") == 2  # both chained runs have a row
    assert f"{metrics['scenes']:,} scenes" in card
    json.dumps(dataclasses.asdict(settings))  # the settings go into the report as JSON

"""The user tasks end to end on the tiny checkpoint: sizes, seeds, masked edits, chat, cancel."""

import json
from dataclasses import replace

import numpy as np
import pytest

from engine import masking, vision
from engine.errors import BadInput, Cancelled
from engine.pipeline import Pipeline, Turn


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    pipe = Pipeline.load(tiny_checkpoint, device="cpu")
    # small crop buckets keep edits to a few dozen tokens on the CPU; the code path is the same
    pipe.defaults = replace(pipe.defaults, thinking_length=64, thinking_steps=4, edit_budget=128)
    return pipe


def picture(h=200, w=300, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1)
    return (base + rng.integers(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


def test_generate_gives_the_requested_size_and_seed_reproduces(pipeline):
    a = pipeline.generate("a red fox", width=256, height=320, seed=3)
    b = pipeline.generate("a red fox", width=256, height=320, seed=3)
    c = pipeline.generate("a red fox", width=256, height=320, seed=4)
    assert a.image.shape == (320, 256, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.image, c.image)
    assert a.codes.shape == (10, 8) and (a.codes >= 0).all() and (a.codes < 16384).all()
    meta = a.metadata
    assert meta["task"] == "generate" and meta["seed"] == "3" and meta["prompt"] == "a red fox"
    assert meta["steps"] == "8" and meta["cfg_scale"] == "2.0" and meta["width"] == "256"
    assert "app version" in meta and meta["model"].endswith("LLaDA2.0-Uni")


def test_wide_aspect_and_no_cfg(pipeline):
    out = pipeline.generate("a long banner", width=1024, height=256, cfg_scale=1.0, steps=2)
    assert out.image.shape == (256, 1024, 3)


def test_thinking_mode_streams_its_text_and_makes_the_image(pipeline):
    deltas, stages = [], set()
    out = pipeline.generate(
        "a fox",
        width=256,
        height=256,
        thinking=True,
        on_text=deltas.append,
        on_progress=lambda stage, step, total: stages.add(stage),
    )
    assert out.image.shape == (256, 256, 3)
    assert "".join(deltas) == out.thinking
    assert {"thinking", "denoise tokens", "decode"} <= stages


@pytest.mark.parametrize(
    ("width", "height", "words"),
    [(250, 256, "steps of 32"), (1056, 256, "between 256 and 1024"), (1024, 224, "between")],
)
def test_bad_sizes_are_one_sentence(pipeline, width, height, words):
    with pytest.raises(BadInput, match=words):
        pipeline.generate("a fox", width=width, height=height)


def test_empty_prompt_and_instruction_are_refused(pipeline):
    with pytest.raises(BadInput, match="Type a prompt"):
        pipeline.generate("   ")
    with pytest.raises(BadInput, match="Type an instruction"):
        pipeline.edit(picture(), "")


def test_masked_edit_keeps_everything_outside_the_feathered_mask(pipeline):
    image = picture()
    mask = np.zeros(image.shape[:2], bool)
    mask[60:110, 150:220] = True
    out = pipeline.edit(image, "make it blue", mask=mask, seed=1)
    assert out.image.shape == image.shape
    plan = masking.plan_edit(image.shape[:2], mask, buckets=vision.edit_buckets(128))
    alpha = masking.feathered_alpha(mask, plan)
    assert np.array_equal(out.image[alpha == 0], image[alpha == 0])
    assert not np.array_equal(out.image[mask], image[mask])
    source = pipeline.tokenize(masking.crop_to_bucket(image, plan)).codes
    repaint = masking.token_mask(mask, plan)
    assert 0 < repaint.sum() < repaint.size
    assert np.array_equal(out.codes[~repaint], source[~repaint])
    assert out.metadata["masked"] == "true"
    assert out.metadata["repainted_tokens"] == str(int(repaint.sum()))


def test_same_seed_reproduces_an_edit(pipeline):
    image, mask = picture(seed=2), np.zeros((200, 300), bool)
    mask[10:60, 10:60] = True
    a = pipeline.edit(image, "add a hat", mask=mask, seed=5)
    b = pipeline.edit(image, "add a hat", mask=mask, seed=5)
    c = pipeline.edit(image, "add a hat", mask=mask, seed=6)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_empty_mask_is_a_global_edit_and_full_mask_works(pipeline):
    image = picture()
    globally = pipeline.edit(image, "make it winter", mask=np.zeros((200, 300), bool))
    assert globally.metadata["masked"] == "false"
    assert globally.metadata["repainted_tokens"] == str(globally.codes.size)
    unmasked = pipeline.edit(image, "make it winter")
    assert np.array_equal(unmasked.image, globally.image)
    full = pipeline.edit(image, "make it winter", mask=np.ones((200, 300), bool))
    assert full.image.shape == image.shape and not np.array_equal(full.image, image)


def test_three_way_edit_guidance_runs(pipeline):
    out = pipeline.edit(picture(), "make it blue", cfg_image_scale=1.5, steps=2)
    assert out.metadata["cfg_image_scale"] == "1.5"


def test_mask_of_another_size_is_one_sentence(pipeline):
    with pytest.raises(BadInput, match="mask is 100x100 px but the image is 300x200"):
        pipeline.edit(picture(), "make it blue", mask=np.ones((100, 100), bool))


def test_cancel_mid_denoise_stops_within_one_step(pipeline):
    seen = []

    def on_progress(stage, step, total):
        seen.append((stage, step))
        if stage == "denoise tokens" and step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        pipeline.generate("a fox", width=256, height=256, on_progress=on_progress)
    assert seen[-1] == ("denoise tokens", 2)
    assert not any(stage == "decode" for stage, _ in seen)


def test_understanding_streams_the_answer(pipeline):
    deltas = []
    answer = pipeline.understand(
        [Turn("user", "What is in this picture?", (picture(),))],
        on_text=deltas.append,
        gen_length=64,
        steps=4,
    )
    assert "".join(deltas) == answer


def test_multi_turn_chat_keeps_earlier_turns_and_images(pipeline):
    first, second = picture(seed=1), picture(120, 160, seed=2)
    chat = [
        Turn("user", "What is this?", (first,)),
        Turn("assistant", "A red fox"),
        Turn("user", "And this one?", (second,)),
    ]
    ids = pipeline.chat_ids(chat)
    tok = pipeline.tokenizer
    assert tok.encode(["A red fox"])[0] in ids
    image_ids = [i for i in ids if i >= tok.image_token_offset]
    one = pipeline.chat_ids(chat[:1])
    assert len(image_ids) > len([i for i in one if i >= tok.image_token_offset])
    answer = pipeline.understand(chat, gen_length=32, steps=2)
    assert isinstance(answer, str)


def test_region_question_uses_the_masked_crop(pipeline):
    image = picture(400, 600)
    mask = np.zeros((400, 600), bool)
    mask[300:340, 500:560] = True
    whole = pipeline.chat_ids([Turn("user", "What is here?", (image,))])
    region = pipeline.chat_ids([Turn("user", "What is here?", (image,))], mask=mask)
    assert region != whole
    with pytest.raises(BadInput, match="covers nothing"):
        pipeline.chat_ids([Turn("user", "?", (image,))], mask=np.zeros((400, 600), bool))


def test_chat_must_end_with_a_question(pipeline):
    with pytest.raises(BadInput):
        pipeline.understand([Turn("user", "  ")])
    with pytest.raises(BadInput):
        pipeline.understand([Turn("assistant", "hi")])


def test_the_fake_pipeline_takes_the_same_parameters():
    import inspect

    from tests.fakes import FakePipeline

    for name in ("generate", "edit", "understand", "status", "unload"):
        real = inspect.signature(getattr(Pipeline, name)).parameters
        fake = inspect.signature(getattr(FakePipeline, name)).parameters
        assert list(real) == list(fake), name


def test_previews_arrive_before_each_decode_step(pipeline):
    events = []
    pipeline.generate(
        "a fox",
        width=256,
        height=256,
        steps=2,
        on_preview=lambda image: events.append(("preview", image.shape)),
        on_progress=lambda stage, step, total: events.append((stage, step)),
    )
    decode = events[events.index(("decode", 1)) - 1 :]  # token previews come before
    assert decode[:2] == [("preview", (32, 32, 3)), ("decode", 1)]  # 1/8 of the pixels
    assert len([e for e in decode if e[0] == "preview"]) == 8


def test_image_codes_are_cached_but_bounded(pipeline, monkeypatch):
    import engine.pipeline as module

    monkeypatch.setattr(module, "CODE_CACHE_IMAGES", 3)
    pipeline._codes.clear()
    images = [picture(32, 32, seed=s) for s in range(5)]
    for image in images:
        pipeline.tokenize(image)
    assert len(pipeline._codes) == 3
    stages = []
    pipeline.tokenize(images[-1], lambda stage, *_: stages.append(stage))
    assert stages == []  # a cached image is not encoded again
    pipeline.tokenize(images[0], lambda stage, *_: stages.append(stage))
    assert stages == ["encode image", "encode image"]  # evicted, so encoded anew
    assert pipeline.status()["memory"].endswith("GiB (process)")


def test_decoder_steps_and_resolution_multiplier_reach_the_decoder(pipeline):
    totals = set()
    out = pipeline.generate(
        "a fox", width=256, height=256, steps=2, decoder_steps=3, resolution_multiplier=1,
        on_progress=lambda stage, step, total: totals.add((stage, total)),
    )  # fmt: skip
    assert ("decode", 3) in totals and not any(t[0] == "decode" and t[1] != 3 for t in totals)
    assert out.image.shape == (128, 128, 3)  # 8x8 tokens at 16 px x 1
    meta = out.metadata
    assert meta["decoder_steps"] == "3" and meta["resolution_multiplier"] == "1"
    edit = pipeline.edit(picture(), "make it blue", steps=2, decoder_steps=2, turbo=False)
    assert edit.metadata["decoder"] == "normal" and edit.metadata["decoder_steps"] == "2"


def test_thinking_length_and_steps_come_from_the_request(pipeline):
    thinking = []
    out = pipeline.generate(
        "a fox", width=256, height=256, steps=2, thinking=True, thinking_steps=2,
        thinking_length=32,
        on_progress=lambda stage, step, total: thinking.append(total) if stage == "thinking" else 0,
    )  # fmt: skip
    # 32 tokens after the prompt's partial block span two blocks of 2 steps (the fixture's
    # defaults, 64 tokens at 4 steps, would give 12)
    assert thinking and set(thinking) == {4}
    meta = out.metadata
    assert meta["thinking_length"] == "32" and meta["thinking_steps"] == "2"


def test_metadata_keeps_the_wall_time_apart_from_the_parameters(pipeline):
    from engine.pipeline import MEASURED_KEYS, parameters

    a = pipeline.generate("a fox", width=256, height=256, seed=2, steps=2, cfg_rescale=0.7)
    b = pipeline.generate("a fox", width=256, height=256, seed=2, steps=2, cfg_rescale=0.7)
    assert MEASURED_KEYS == ("elapsed_s",) and float(a.metadata["elapsed_s"]) > 0
    assert parameters(a.metadata) == parameters(b.metadata)
    assert "elapsed_s" not in parameters(a.metadata)
    p = parameters(a.metadata)
    assert p["cfg_rescale"] == "0.7" and p["threshold"] == "0.95" and p["use_cache"] == "true"
    assert p["block_length"] == "32" and p["decoder"] == "turbo" and p["steps"] == "2"


def test_cache_threshold_and_block_length_are_request_options(pipeline):
    cached = pipeline.generate("a fox", width=256, height=256, seed=1, steps=2)
    plain = pipeline.generate("a fox", width=256, height=256, seed=1, steps=2, use_cache=False)
    assert np.array_equal(cached.codes, plain.codes)  # the cache is exact
    assert plain.metadata["use_cache"] == "false"
    off = pipeline.generate("a fox", width=256, height=256, steps=2, threshold=1.0)
    assert off.metadata["threshold"] == "off"
    chat = [Turn("user", "What is this?", (picture(),))]
    a = pipeline.understand(chat, gen_length=32, steps=4, block_length=16)
    b = pipeline.understand(chat, gen_length=32, steps=4, block_length=16, use_cache=False)
    assert a == b


def test_temperature_top_k_and_top_p_come_from_the_request(pipeline):
    size = {"width": 256, "height": 256, "steps": 4, "decoder_steps": 1}

    def denoise_steps(**options) -> int:
        steps = []
        pipeline.generate("a fox", **size, **options, on_progress=lambda s, *_: steps.append(s))
        return steps.count("denoise tokens")

    # among one token the drawn one has probability 1, above the threshold: a block per step
    blocks = denoise_steps(top_k=1)
    assert blocks < denoise_steps() and blocks == denoise_steps(top_k=1, temperature=1.0)
    hot = [
        pipeline.generate("a fox", **size, temperature=1.5, top_p=0.9, seed=s) for s in (1, 1, 2)
    ]
    assert np.array_equal(hot[0].codes, hot[1].codes)
    assert not np.array_equal(hot[0].codes, hot[2].codes)
    assert hot[0].metadata["top_p"] == "0.9" and hot[0].metadata["top_k"] == "null"


def test_official_baseline_is_threshold_095_without_cache():
    from engine.pipeline import Defaults

    baseline = Defaults().official_baseline()
    assert baseline.threshold == 0.95 and baseline.use_cache is False
    assert Defaults().threshold == 0.95 and Defaults().use_cache is True


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"steps": 0}, "The steps per block must be a whole number between 1 and 1024, not 0."),
        ({"steps": 40}, "cannot be more than the block length (32)"),
        ({"threshold": 0.0}, "The threshold must be"),
        ({"decoder_steps": 0}, "The decoder steps"),
        ({"resolution_multiplier": 8}, "The resolution multiplier"),
        ({"cfg_rescale": 2.0}, "The CFG rescale"),
        ({"thinking": True, "thinking_length": 0}, "The thinking length"),
        ({"seed": -5}, "The seed"),
        ({"top_p": 0.0}, "The top-p must be a number above 0 and at most 1"),
        ({"top_k": 0}, "The top-k"),
    ],
)
def test_bad_parameters_get_the_sentence_of_the_rule_table(pipeline, options, words):
    with pytest.raises(BadInput) as caught:
        pipeline.generate("a fox", width=256, height=256, **options)
    assert words in str(caught.value)


def test_a_masked_edit_says_where_its_previews_sit_before_the_first(pipeline):
    image = np.full((300, 400, 3), 128, np.uint8)
    mask = np.zeros((300, 400), bool)
    mask[100:160, 250:330] = True
    events = []
    out = pipeline.edit(
        image,
        "make it blue",
        mask=mask,
        steps=2,
        on_place=lambda box: events.append(("box", box)),
        on_preview=lambda picture: events.append(("preview", picture.shape)),
    )
    assert events[0] == ("box", tuple(json.loads(out.metadata["box"])))  # the crop it shows
    x0, y0, x1, y1 = events[0][1]
    assert x0 <= 250 and y0 <= 100 and x1 >= 330 and y1 >= 160  # it holds the mask
    assert sum(1 for e in events if e[0] == "box") == 1 and len(events) > 1

"""Prompt strings (character for character, facts §4.3) and the tokenizer from tokenizer.json."""

import json

import numpy as np
import pytest

from engine import text
from engine.errors import BadCheckpoint, BadInput
from engine.text import ImageCodes, TextTokenizer

HEADER = "<|image|><|reserved_token_16|><|reserved_token_24|><boi>"


def test_text_to_image_prompts():
    assert text.text_to_image("a cat", 16, 24) == [
        "<role>SYSTEM</role> You are a text-to-image generation assistant. "
        "<role>HUMAN</role>a cat<role>ASSISTANT</role>" + HEADER
    ]
    assert text.text_to_image_uncond(16, 24) == [
        "<role>SYSTEM</role> You are a text-to-image generation assistant. "
        "<role>HUMAN</role><uncondition><role>ASSISTANT</role>" + HEADER
    ]
    assert text.thinking("a cat") == [
        "<role>SYSTEM</role> You are a text-to-image generation assistant with a thinking "
        "process. <role>HUMAN</role>a cat<role>ASSISTANT</role>"
    ]


def test_understanding_prompt_single_and_multi_turn():
    a, b = ImageCodes(np.zeros((2, 3), int)), ImageCodes(np.ones((1, 1), int))
    assert text.understanding([("user", "What is this?", [a])]) == [
        "<role>SYSTEM</role> You are a multimodal understanding assistant. <role>HUMAN</role>"
        "<|image|><|reserved_token_2|><|reserved_token_3|><boi>",
        a,
        "<|/image|>What is this?<role>ASSISTANT</role>",
    ]
    chat = text.understanding([("user", "Q1", [a]), ("assistant", "A1", []), ("user", "Q2", [b])])
    assert chat[2] == "<|/image|>Q1<role>ASSISTANT</role>A1<role>HUMAN</role>" + (
        "<|image|><|reserved_token_1|><|reserved_token_1|><boi>"
    )
    assert chat[3] == b and chat[4] == "<|/image|>Q2<role>ASSISTANT</role>"


def test_edit_prompts():
    src = ImageCodes(np.zeros((16, 24), int))
    head = "<role>SYSTEM</role> You are an image editing assistant. <role>HUMAN</role>" + HEADER
    assert text.edit(src, "make it blue") == [
        head,
        src,
        "<|/image|>make it blue<role>ASSISTANT</role>" + HEADER,
    ]
    assert text.edit_no_text(src)[2] == "<|/image|><uncondition><role>ASSISTANT</role>" + HEADER
    assert text.edit_no_image("make it blue", 16, 24) == [
        "<role>SYSTEM</role> You are an image editing assistant. <role>HUMAN</role><|image|>"
        "make it blue<role>ASSISTANT</role>" + HEADER
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    return TextTokenizer(tiny_checkpoint, config["image_token_offset"], config["pad_token_id"])


def test_special_tokens_are_single_ids_looked_up_by_string(tokenizer):
    for token in ["<|image|>", "<|/image|>", "<boi>", "<uncondition>", "<|mask|>", "<role>"]:
        ids = tokenizer.encode([token])
        assert ids == [tokenizer.token_id(token)]
    assert tokenizer.tokenizer.id_to_token(tokenizer.eos_id) == "<|endoftext|>"


def test_image_codes_get_the_offset_and_text_round_trips(tokenizer):
    codes = ImageCodes(np.array([[0, 5], [16383, 7]]))
    ids = tokenizer.encode(["hello", codes, "<|/image|>"])
    off = tokenizer.image_token_offset
    assert ids[-5:] == [off, off + 5, off + 16383, off + 7, tokenizer.image_end_id]
    assert tokenizer.decode(tokenizer.encode(["A red fox sits"])) == "A red fox sits"


def test_grid_without_a_reserved_token_is_refused(tokenizer):
    with pytest.raises(BadInput, match="grid of 500 tokens"):
        tokenizer.encode([text.image_header(500, 4)])


def test_missing_special_token_is_named(tmp_path, tiny_checkpoint):
    raw = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|mask|>"]
    raw["model"]["vocab"].pop("<|mask|>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(BadCheckpoint, match=r"no special token <\|mask\|>"):
        TextTokenizer(tmp_path, 512, 0)

"""app/generate.py: sizes the engine takes, N jobs with successive seeds, seed lock, thinking
stream, and restoring a made image's parameters."""

import pytest

from app.generate import PRESETS, Advanced, GenerateForm, size_problem
from engine.protocol import Generate


def form_with(sent: list) -> GenerateForm:
    form = GenerateForm(sent.append)
    form.set_prompt("a red fox")
    return form


def test_presets_are_sizes_the_engine_takes():
    assert set(PRESETS) == {"1:1", "4:3", "3:4", "16:9", "9:16"}
    for width, height in PRESETS.values():
        assert size_problem(width, height) == ""
        assert max(width, height) == 1024


@pytest.mark.parametrize("size", [(250, 512), (512, 1056), (512, 500), (0, 512)])
def test_custom_sizes_outside_the_rules_are_refused_with_a_sentence(size):
    sent = []
    form = form_with(sent)
    form.set_size(*size)
    assert form.preset == "custom"
    assert form.generate() == [] and sent == []
    assert "between 256 and 1024 px in steps of 32" in form.error


def test_count_submits_that_many_jobs_with_successive_seeds():
    sent = []
    form = form_with(sent)
    form.set_size(512, 384)
    form.set_seed(41)
    form.set_seed_locked(True)
    form.set_count(3)
    ids = form.generate()
    assert [r.job_id for r in sent] == ids and len(set(ids)) == 3
    assert all(isinstance(r, Generate) for r in sent)
    assert [r.seed for r in sent] == [41, 42, 43]
    assert {(r.width, r.height, r.prompt) for r in sent} == {(512, 384, "a red fox")}
    assert form.seed == 41  # locked: the next click makes the same images


def test_an_unlocked_seed_changes_after_each_run_and_advanced_defaults_are_official():
    sent = []
    form = form_with(sent)
    form.set_seed(7)
    form.generate()
    assert sent[0].seed == 7 and sent[0].steps == 8 and sent[0].cfg_scale == 2.0
    assert sent[0].turbo is True and form.advanced == Advanced()
    assert (sent[0].cfg_rescale, sent[0].decoder_steps, sent[0].thinking_length) == (
        0.0,
        None,
        4096,
    )
    form.seed = 7  # a random draw may repeat; force the comparison to mean something
    form.generate()
    assert sent[1].seed == 7


def test_no_prompt_is_one_sentence_and_nothing_is_sent():
    sent = []
    form = GenerateForm(sent.append)
    assert form.generate() == [] and sent == []
    assert form.error == "Type a prompt that describes the image to make."


def test_thinking_streams_for_the_newest_job_only():
    sent = []
    form = form_with(sent)
    form.set_thinking(True)
    form.set_count(2)
    first, second = form.generate()
    form.add_thinking(first, "old ")
    form.add_thinking(second, "Think")
    form.add_thinking(second, "ing.")
    assert form.thinking_text == "Thinking." and sent[0].thinking


def test_restore_puts_a_made_images_parameters_back():
    form = GenerateForm(lambda r: None)
    metadata = {"task": "generate", "prompt": "a boat", "seed": "99", "width": "768",
                "height": "1024", "steps": "12", "cfg_scale": "3.5", "thinking": "true",
                "decoder": "normal", "decoder_steps": "50", "cfg_rescale": "0.7",
                "elapsed_s": "1.2"}  # fmt: skip
    assert form.restore(metadata)
    assert (form.prompt, form.seed, form.seed_locked) == ("a boat", 99, True)
    assert (form.width, form.height, form.preset, form.thinking) == (768, 1024, "3:4", True)
    assert (form.advanced.steps, form.advanced.cfg_scale, form.advanced.turbo) == (12, 3.5, False)
    assert (form.advanced.cfg_rescale, form.advanced.decoder_steps) == (0.7, 0)  # 50: default
    assert not form.restore({"task": "edit", "instruction": "x"})

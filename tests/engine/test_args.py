"""The table of argument rules: ranges, words, paths and devices, each refused in one sentence."""

import argparse
import subprocess
import sys

import pytest

from engine import args
from engine.errors import BadInput


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("steps", 0, "between 1 and 1024, not 0."),
        ("steps", 2.5, "whole number"),
        ("steps", True, "whole number"),
        ("seed", -1, "The seed"),
        ("width", 300, "in steps of 32 px, not 300."),
        ("height", 1056, "between 256 and 1024"),
        ("threshold", 0.0, "above 0 and at most 1"),
        ("threshold", 1.5, "'off'"),
        ("cfg_scale", float("nan"), "The CFG scale"),
        ("cfg_rescale", 1.2, "between 0 and 1"),
        ("decoder", "fast", "one of turbo, normal, not 'fast'."),
        ("use_cache", "yes", "on or off"),
        ("resolution_multiplier", 5, "between 1 and 4"),
        ("prompt", "   ", "Type a prompt"),
    ],
)
def test_a_value_outside_its_rule_is_one_sentence(name, value, words):
    with pytest.raises(BadInput, match=None) as caught:
        args.check(name, value)
    sentence = str(caught.value)
    assert words in sentence and sentence.endswith(".") and "\n" not in sentence


def test_good_values_pass_and_none_means_the_default():
    assert args.check("steps", 8) == 8 and args.check("steps", 8.0) == 8
    assert args.check("threshold", 1.0) == 1.0 and args.check("cfg_scale", 0) == 0.0
    assert args.check("width", 1024) == 1024 and args.check("decoder", "normal") == "normal"
    assert all(args.check(name, None) is None for name in args.RULES)


def test_cli_words_parse_to_values_and_bad_text_gets_the_same_sentence():
    threshold = args.RULES["threshold"]
    assert threshold.parse("off") == args.THRESHOLD_OFF and threshold.parse("0.9") == 0.9
    with pytest.raises(BadInput) as from_cli:
        args.RULES["steps"].parse("-3")
    with pytest.raises(BadInput) as from_request:
        args.check("steps", -3)
    assert str(from_cli.value) == str(from_request.value)
    with pytest.raises(BadInput, match="not 'many'"):
        args.RULES["steps"].parse("many")


def test_add_flag_parses_with_the_rule_and_registering_a_new_rule():
    args.register(args.Rule("test_batch_size", "int", "The batch size", low=1, high=64))
    args.register(args.Rule("test_batch_size", "int", "The batch size", low=1, high=64))
    with pytest.raises(ValueError):
        args.register(args.Rule("test_batch_size", "int", "The batch size", low=1, high=8))
    parser = argparse.ArgumentParser()
    args.add_flag(parser, "test_batch_size")
    args.add_flag(parser, "use_cache")
    ns = parser.parse_args(["--test-batch-size", "4", "--no-cache"])
    assert ns.test_batch_size == 4 and ns.use_cache is False
    with pytest.raises(BadInput, match="The batch size"):
        parser.parse_args(["--test-batch-size", "65"])


def test_check_fields_checks_a_request_by_its_field_names():
    from engine.protocol import Generate

    args.check_fields(Generate("j", "a fox", steps=8))
    with pytest.raises(BadInput, match="The steps per block"):
        args.check_fields(Generate("j", "a fox", steps=0))
    with pytest.raises(BadInput, match="Type a prompt"):
        args.check_fields(Generate("j", " "))


def test_paths(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        ("model", tmp_path / "nope", "does not exist"),
        ("model", image, "is a file; choose a folder"),
        ("image", tmp_path, "is a folder; choose a file"),
        ("image", tmp_path / "notes.txt", "is not an image file"),
        ("out", tmp_path, "is an existing folder"),
        ("out", tmp_path / "x.gif", "must end in .png"),
        ("out", image / "x.png", "is a file, not a folder"),
    ]
    for name, path, words in cases:
        with pytest.raises(BadInput, match=words):
            args.check(name, path)
    assert args.check("out", tmp_path / "new" / "deeper" / "x.png").name == "x.png"
    assert args.check("image", image) == image


def test_a_gpu_that_does_not_exist_gets_its_sentence_without_cuda_too():
    with pytest.raises(BadInput, match=r"There is no GPU cuda:99"):
        args.check_device("cuda:99")
    with pytest.raises(BadInput, match="auto, cpu, mps, cuda or cuda:N"):
        args.check_device("gpu0")
    assert args.check_device("cpu") == "cpu" and args.check_device("auto") == "auto"


def test_the_table_imports_no_torch():
    code = "import engine.args, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

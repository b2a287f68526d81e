"""`python main.py generate | edit | ask` on the tiny checkpoint, as a user runs them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def main_py(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    return path


def test_generate_writes_a_png_with_its_metadata_and_reproduces(tiny_checkpoint, tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        run = main_py("generate", "--model", tiny_checkpoint, "--prompt", "a fox", "--size",
                      "320x256", "--seed", 7, "--out", tmp_path / name)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "denoise tokens" in run.stderr and "decode" in run.stderr
        outs.append(Image.open(tmp_path / name))
    assert outs[0].size == (320, 256)
    assert outs[0].text["seed"] == "7" and outs[0].text["prompt"] == "a fox"
    assert outs[0].tobytes() == outs[1].tobytes()


def test_masked_edit_from_the_command_line(tiny_checkpoint, photo, tmp_path):
    mask = np.zeros((240, 320), np.uint8)
    mask[100:140, 100:160] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    run = main_py("edit", "--model", tiny_checkpoint, "--image", photo, "--mask",
                  tmp_path / "mask.png", "--instruction", "make it blue", "--out",
                  tmp_path / "e.png")  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = np.asarray(Image.open(tmp_path / "e.png"))
    src = np.asarray(Image.open(photo))
    assert out.shape == src.shape
    assert np.array_equal(out[:40], src[:40])  # far from the mask: untouched
    assert Image.open(tmp_path / "e.png").text["instruction"] == "make it blue"


def test_ask_streams_an_answer(tiny_checkpoint, photo):
    run = main_py("ask", "--model", tiny_checkpoint, "--image", photo, "--question",
                  "What is this?", "--max-tokens", 32, "--steps", 2)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith("\n")


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["generate", "--prompt", "", "--out", "x.png"], "Type a prompt"),
        (["generate", "--prompt", "a", "--size", "300x256", "--out", "x.png"], "steps of 32"),
        (["edit", "--image", "nope.png", "--instruction", "x", "--out", "x.png"], "nope.png"),
        (["ask", "--image", "README.md", "--question", "what?"], "README.md"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tiny_checkpoint, args, sentence, tmp_path):
    run = main_py(args[0], "--model", tiny_checkpoint, *args[1:])
    assert run.returncode == 2
    assert sentence in run.stderr
    assert run.stderr.strip().startswith("error: ") and "Traceback" not in run.stderr


def test_wrong_model_folder(tmp_path):
    run = main_py("ask", "--model", tmp_path, "--question", "hi")
    assert run.returncode == 2 and "config.json" in run.stderr

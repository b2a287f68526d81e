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


# ---- bad arguments: one sentence, exit 2, before the model loads, nothing written


@pytest.fixture
def corpus_files(tmp_path, photo):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder").mkdir()
    return tmp_path


def bad_arguments(model, files, photo):
    out = str(files / "out" / "o.png")
    gen = ["generate", "--model", model, "--prompt", "a fox", "--size", "256x256", "--out", out]
    edit = ["edit", "--model", model, "--image", photo, "--instruction", "blue", "--out", out]
    ask = ["ask", "--model", model, "--image", photo, "--question", "what?"]
    return [
        [*gen, "--steps", "0"],
        [*gen, "--steps", "-3"],
        [*gen, "--steps", "abc"],
        [*gen, "--steps", "40"],  # more than the 32-token block
        [*gen, "--block-length", "0"],
        [*gen, "--threshold", "0"],
        [*gen, "--threshold", "1.5"],
        [*gen, "--threshold", "maybe"],
        [*gen, "--temperature", "-1"],
        [*gen, "--cfg", "-2"],
        [*gen, "--cfg-rescale", "3"],
        [*gen, "--decoder", "fast"],
        [*gen, "--decoder-steps", "0"],
        [*gen, "--resolution-multiplier", "5"],
        [*gen, "--size", "300x256"],
        [*gen, "--size", "12"],
        [*gen, "--size", "2048x1024"],
        [*gen, "--seed", "-1"],
        [*gen, "--thinking", "--thinking-steps", "0"],
        [*gen, "--thinking", "--thinking-steps", "33"],
        [*gen, "--thinking-length", "0"],
        [*gen, "--prompt", "   "],
        [*gen, "--out", str(files / "folder")],
        [*gen, "--out", str(files / "o.gif")],
        [*gen, "--out", str(files / "a_file" / "o.png")],
        [*gen, "--model", str(files / "missing")],
        [*gen, "--model", str(files / "a_file")],
        [*gen, "--device", "cuda:7"],
        [*gen, "--device", "gpu"],
        gen[:-2],  # no --out
        [*gen, "--stpes", "8"],
        [*gen, "--steps"],
        [*edit, "--image", str(files / "missing.png")],
        [*edit, "--image", str(files / "notes.txt")],
        [*edit, "--image", str(files / "folder")],
        [*edit, "--mask", str(files / "missing.png")],
        [*edit, "--instruction", ""],
        [*edit, "--cfg-text", "-1"],
        [*edit, "--cfg-image", "abc"],
        [*edit, "--out", str(files / "out.bmp")],
        [*ask, "--max-tokens", "0"],
        ["ask", "--model", model, "--question", " "],  # no question and no image
        [*ask, "--image", str(files / "notes.txt")],
        [*ask, "--mask", str(files / "folder")],
        [*ask, "--steps", "33"],
        [*ask, "--device", "cuda:99"],
        ["download", "--variant", "bf17"],
        ["doctor", "--bogus"],
        ["generat", "--model", model],
        [str(files / "missing.png")],
    ]


def cli_exit(argv, capsys) -> tuple[int, str]:
    from engine.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def test_every_bad_argument_is_one_sentence_exit_2_before_the_model_loads(
    tiny_checkpoint, corpus_files, photo, capsys, monkeypatch
):
    from engine.pipeline import Pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the arguments were checked")

    monkeypatch.setattr(Pipeline, "load", no_load)
    before = sorted(corpus_files.rglob("*"))
    corpus = bad_arguments(tiny_checkpoint, corpus_files, photo)
    assert len(corpus) >= 30
    for argv in corpus:
        code, err = cli_exit(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert "Traceback" not in err and lines[0].endswith((".", "?")), (argv, err)
    assert sorted(corpus_files.rglob("*")) == before  # no file written, no folder made


def test_sentences_name_the_problem(tiny_checkpoint, corpus_files, photo, capsys):
    cases = {
        ("generat",): "Did you mean 'generate'?",
        ("ask", "--model", tiny_checkpoint, "--question", "?", "--stpes", "8"): "'--steps'?",
        ("generate", "--prompt", "a"): "main.py generate needs --model and --out;",
        ("ask", "--model", tiny_checkpoint, "--question", "?", "--device", "cuda:7"): "cuda:7",
        ("generate", "--model", tiny_checkpoint, "--prompt", "a", "--out", corpus_files): (
            "is an existing folder"
        ),
    }
    for argv, words in cases.items():
        code, err = cli_exit(argv, capsys)
        assert code == 2 and words in err, err


def test_an_unknown_command_exits_2_without_opening_the_window():
    run = main_py("generat")
    assert run.returncode == 2 and "Did you mean 'generate'?" in run.stderr
    assert run.stderr.count("\n") == 1


def test_an_image_path_opens_the_window_with_it(photo, monkeypatch):
    import main as entry
    from engine.cli import window_paths

    opened = []
    monkeypatch.setattr(entry, "run_window", lambda paths: opened.append(paths) or 0)
    monkeypatch.setattr(sys, "argv", ["main.py", str(photo)])
    assert entry.main() == 0 and opened == [[photo]]
    assert window_paths(["generate", "--help"]) is None and window_paths(["generat"]) is None
    assert window_paths([str(photo), "missing.png"]) is None  # the parser names the mistake

    class Window:
        def __init__(self, settings, open_paths=()): ...

    class OldWindow:
        def __init__(self, settings): ...

    assert entry.open_paths(Window, [photo]) == {"open_paths": [photo]}
    assert entry.open_paths(OldWindow, [photo]) == {}  # a window without it still opens


def test_a_text_only_question_never_imports_the_decoder(tiny_checkpoint):
    code = (
        "import sys; from engine.cli import main;"
        f"code = main(['ask', '--model', {str(tiny_checkpoint)!r}, '--question', 'hi',"
        " '--max-tokens', '16', '--steps', '2']);"
        "assert code == 0, code; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


def test_decoder_and_loop_flags_reach_the_image(tiny_checkpoint, tmp_path):
    out = tmp_path / "small.png"
    run = main_py("generate", "--model", tiny_checkpoint, "--prompt", "a fox", "--size",
                  "256x256", "--steps", "2", "--resolution-multiplier", "1", "--decoder-steps",
                  "2", "--threshold", "off", "--no-cache", "--out", out)  # fmt: skip
    assert run.returncode == 0, run.stderr
    image = Image.open(out)
    assert image.size == (128, 128)
    assert image.text["threshold"] == "off" and image.text["use_cache"] == "false"
    assert image.text["decoder_steps"] == "2" and "elapsed_s" in image.text

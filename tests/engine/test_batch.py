"""Batch work on the tiny checkpoint: names, formats and metadata, resuming after Ctrl+C or a
truncated file, bad inputs reported and skipped, no overwriting, a full disk, safe file names."""

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import batch, imagefile, naming
from engine.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 1, "decoder_steps": 1, "resolution_multiplier": 1}  # 256² tokens -> 128² px
FAST_FLAGS = ["--steps", "1", "--decoder-steps", "1", "--resolution-multiplier", "1"]


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    from engine.pipeline import Pipeline

    return Pipeline.load(tiny_checkpoint, device="cpu")


def run(job: batch.Job, pipeline) -> batch.Report:
    progress = batch.Progress(len(job.items), stream=io.StringIO())
    return batch.Runner(job, pipeline, progress).run()


def generate_job(tiny_checkpoint, out: Path, prompts: list[str], **spec) -> batch.Job:
    spec = {"task": "generate", "model": str(tiny_checkpoint), "out": str(out), "seeds": "1-2",
            "size": "256x256", "prompts": prompts, "options": FAST, **spec}  # fmt: skip
    return batch.build_job(spec)


def test_prompt_list_times_two_seeds_gives_the_expected_files(tiny_checkpoint, pipeline, tmp_path):
    job = generate_job(tiny_checkpoint, tmp_path, ["a red fox", "Blue sky, over sea"],
                       format="webp", quality=80, sidecar=True)  # fmt: skip
    report = run(job, pipeline)
    assert report.exit_status == 0 and len(report.done) == 4
    names = ["0001-a-red-fox-1", "0002-a-red-fox-2", "0003-blue-sky-over-sea-1",
             "0004-blue-sky-over-sea-2"]  # fmt: skip
    expected = {f"{n}.webp" for n in names} | {f"{n}.json" for n in names} | {"manifest.jsonl"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    asked = [("a red fox", 1), ("a red fox", 2), ("Blue sky, over sea", 1),
             ("Blue sky, over sea", 2)]  # fmt: skip
    for name, (prompt, seed) in zip(names, asked):
        with Image.open(tmp_path / f"{name}.webp") as image:
            assert image.format == "WEBP" and image.size == (128, 128)
        keys = imagefile.read_metadata(tmp_path / f"{name}.webp")
        assert (keys["prompt"], keys["seed"], keys["task"]) == (prompt, str(seed), "generate")
        assert keys["steps"] == "1" and keys["decoder_steps"] == "1"  # the batch's options


def test_png_carries_a1111_parameters_that_pil_reads(tiny_checkpoint, pipeline, tmp_path):
    job = generate_job(tiny_checkpoint, tmp_path, ["a castle at night"], seeds="5")
    assert run(job, pipeline).exit_status == 0
    with Image.open(tmp_path / "0001-a-castle-at-night-5.png") as image:
        parameters = image.text["parameters"]
        assert image.text["prompt"] == "a castle at night"
    assert parameters.splitlines()[0] == "a castle at night"
    assert "Seed: 5" in parameters and "Size: 256x256" in parameters
    # a batch item is the single job: same code, same defaults, same pixels
    single = pipeline.generate("a castle at night", width=256, height=256, seed=5, **FAST)
    assert (imagefile.read_image(tmp_path / "0001-a-castle-at-night-5.png") == single.image).all()


def test_rerun_skips_done_and_redoes_a_truncated_output(tiny_checkpoint, pipeline, tmp_path):
    job = generate_job(tiny_checkpoint, tmp_path, ["a fox"])
    assert run(job, pipeline).exit_status == 0
    first, second = tmp_path / "0001-a-fox-1.png", tmp_path / "0002-a-fox-2.png"
    pixels = imagefile.read_image(first)
    whole = first.read_bytes()
    first.write_bytes(whole[: len(whole) // 2])  # a crash or a copy cut it short
    report = run(generate_job(tiny_checkpoint, tmp_path, ["a fox"]), pipeline)
    assert report.exit_status == 0
    assert report.done == [first.name] and len(report.skipped) == 1
    assert (imagefile.read_image(first) == pixels).all()  # redone whole (elapsed_s may differ)
    second.unlink()
    report = run(generate_job(tiny_checkpoint, tmp_path, ["a fox"]), pipeline)
    assert report.done == [second.name] and second.exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [first.name, second.name]


def test_existing_file_is_not_overwritten_without_the_flag(tiny_checkpoint, pipeline, tmp_path):
    mine = tmp_path / "0001-a-fox-1.png"
    mine.write_bytes(b"someone else's file")
    report = run(generate_job(tiny_checkpoint, tmp_path, ["a fox"], seeds="1"), pipeline)
    assert report.exit_status == 1
    assert "already exists; pass --overwrite" in report.failed[0][1]
    assert mine.read_bytes() == b"someone else's file"
    report = run(generate_job(tiny_checkpoint, tmp_path, ["a fox"], seeds="1", overwrite=True),
                 pipeline)  # fmt: skip
    assert report.exit_status == 0 and imagefile.read_image(mine).shape == (128, 128, 3)


def test_folder_with_bad_files_reports_them_and_finishes_the_rest(tiny_checkpoint, pipeline,
                                                                   tmp_path):  # fmt: skip
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "good.png")
    Image.new("RGB", (1, 1)).save(images / "dot.png")
    good = (images / "good.png").read_bytes()
    (images / "broken.png").write_bytes(good[: len(good) // 3])
    (images / "huge.png").write_bytes(_png_header(30_000, 30_000))
    (images / "notes.txt").write_text("not an image")
    spec = {"task": "ask", "model": str(tiny_checkpoint), "out": str(tmp_path / "out"),
            "images": str(images), "question": "What is shown?",
            "options": {"steps": 8, "block_length": 8, "max_tokens": 8}}  # fmt: skip
    report = run(batch.build_job(spec), pipeline)
    assert report.exit_status == 1 and len(report.done) == 1
    failed = dict(report.failed)
    assert set(failed) == {"broken.png", "dot.png", "huge.png", "notes.txt"}
    assert "truncated or damaged" in failed["broken.png"]
    assert "1x1 pixels" in failed["dot.png"]
    assert "megapixels" in failed["huge.png"]
    assert "not an image file" in failed["notes.txt"]
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()
    ]
    assert [Path(r["image"]).name for r in rows] == ["good.png"]
    assert "answer" in (tmp_path / "out" / "answers.csv").read_text().splitlines()[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels; no pixel data follows."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_a_full_disk_stops_with_a_sentence_and_keeps_finished_items(
    tiny_checkpoint, pipeline, tmp_path, monkeypatch
):
    writes = []
    real = imagefile.write_atomic

    def fill_up(path, data):
        writes.append(path)
        if len(writes) >= 2:
            raise imagefile.DiskFull(f"The disk is full: {Path(path).name} could not be written.")
        real(path, data)

    monkeypatch.setattr(imagefile, "write_atomic", fill_up)
    job = generate_job(tiny_checkpoint, tmp_path, ["a fox"], seeds="1-3")
    report = run(job, pipeline)
    assert report.exit_status == 1 and report.stopped.startswith("The disk is full")
    assert report.done == ["0001-a-fox-1.png"] and report.not_run >= 1
    manifest = batch.Manifest(tmp_path)
    assert manifest.finished(job.items[0], tmp_path)
    assert [p.name for p in tmp_path.glob("*.png")] == ["0001-a-fox-1.png"]


def test_ctrl_c_after_an_items_last_step_still_stops_as_ctrl_c(tiny_checkpoint, pipeline, tmp_path):
    """Ctrl+C that lands when the item has no step left to cancel: the item is kept, the rest
    is not run, and the run ends as interrupted (exit 130, the resume line), not as failed."""
    job = generate_job(tiny_checkpoint, tmp_path, ["one", "two"])

    class LateCtrlC:
        def generate(self, *args, **options):
            result = pipeline.generate(*args, **options)
            runner._interrupt()  # after the last progress report of the item
            return result

    runner = batch.Runner(job, LateCtrlC(), batch.Progress(len(job.items), stream=io.StringIO()))
    report = runner.run()
    assert len(report.done) == 1 and report.not_run == 3
    assert report.exit_status == batch.EXIT_INTERRUPTED and "Ctrl+C" in report.summary()


def test_sigint_stops_cleanly_and_a_rerun_finishes_the_rest(tiny_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "main.py"), "batch", "generate", "--model",
               str(tiny_checkpoint), "--prompts", str(prompts), "--seeds", "1-2", "--size",
               "256x256", "--out", str(out), *FAST_FLAGS]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    manifest = out / batch.MANIFEST
    deadline = time.monotonic() + 240
    while not (manifest.exists() and manifest.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Stopped by Ctrl+C" in stderr and "not run" in stderr
    first = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert 1 <= len(first) < 6
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 6 and len({r["key"] for r in records}) == 6  # nothing redone
    assert f"{len(first)} skipped" in rerun.stderr
    expected = {f"{n:04d}-{word}-{seed}.png" for n, (word, seed) in enumerate(
        [(w, s) for w in ("one", "two", "three") for s in (1, 2)], 1)}  # fmt: skip
    assert {p.name for p in out.glob("*.png")} == expected  # no duplicates under other names
    assert not list(out.glob(".*partial"))


@pytest.mark.parametrize(
    "prompt",
    ["../../x", "..\\..\\x", "CON", "nul.txt", "x" * 500, "🦊" * 300, "a\nb\r\nc", "a\x00b",
     "  . ", "/etc/passwd", "COM1", "what?*<>|:"],
)  # fmt: skip
def test_hostile_prompts_give_safe_names(prompt):
    for template in ("{index:04d}-{slug}-{seed}", "{prompt}", "{prompt}-{seed}"):
        name = naming.render(template, {"prompt": prompt, "seed": 3, "index": 1})
        assert name and len(name.encode("utf-8")) <= naming.MAX_NAME_BYTES
        assert not any(c in name for c in '/\\:*?"<>|\x00\n\r')
        assert not any(ord(c) < 32 for c in name)
        assert name not in (".", "..") and not name.endswith((".", " "))
        assert name.split(".")[0].upper() not in naming.RESERVED


def test_naming_fields_and_unknown_field():
    from datetime import datetime

    when = datetime(2026, 1, 2, 3, 4, 5)
    name = naming.render("{date}-{task}-{source}-{index:03d}-{seed}", {"task": "edit",
                         "source": "IMG 01", "index": 7, "seed": 42}, when)  # fmt: skip
    assert name == "2026-01-02-edit-IMG 01-007-42"
    with pytest.raises(BadInput, match=r"\{colour\}"):
        naming.check_template("{colour}-{seed}")


def test_prompt_files_and_seeds(tmp_path):
    assert batch.parse_seeds("1-3,7") == [1, 2, 3, 7]
    with pytest.raises(BadInput, match="1-4"):
        batch.parse_seeds("a-b")
    (tmp_path / "p.csv").write_text(
        'prompt,seed,count,size,thinking\n"a, b",5,2,256x320,yes\nc,,,,\n'
    )
    rows = batch.read_prompts(tmp_path / "p.csv")
    items = batch.generate_items(rows, [1, 2])
    assert [(i.text, i.seed, i.width, i.height, i.thinking) for i in items] == [
        ("a, b", 5, 256, 320, True), ("a, b", 6, 256, 320, True),
        ("c", 1, None, None, None), ("c", 2, None, None, None),
    ]  # fmt: skip
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "size": "100x100"}\n')
    with pytest.raises(BadInput, match="line 1 of p.jsonl.*width"):
        batch.read_prompts(tmp_path / "p.jsonl")


def test_job_files_toml_and_json(tmp_path, tiny_checkpoint):
    (tmp_path / "prompts.txt").write_text("# a comment\na fox\n\na cat\n")
    (tmp_path / "job.toml").write_text(
        f'model = "{tiny_checkpoint}"\nout = "out"\nprompts_file = "prompts.txt"\n'
        'seeds = [1, 2]\nformat = "jpeg"\nquality = 90\n[options]\nsteps = 4\n'
    )
    job = batch.job_from_options(batch_options(str(tmp_path / "job.toml")))
    assert job.output.folder == tmp_path / "out" and job.output.format == "jpeg"
    assert [(i.text, i.seed) for i in job.items] == [("a fox", 1), ("a fox", 2), ("a cat", 1),
                                                     ("a cat", 2)]  # fmt: skip
    assert job.options == {"steps": 4}
    (tmp_path / "job.json").write_text(json.dumps({"model": str(tiny_checkpoint), "out": "o",
                                                   "prompts": ["x"], "colour": 1}))  # fmt: skip
    with pytest.raises(BadInput, match="unknown setting 'colour'"):
        batch.job_from_options(batch_options(str(tmp_path / "job.json")))


def batch_options(target: str, *flags: str):
    from engine.cli import build_parser

    return build_parser().parse_args(["batch", target, *flags])


def test_masks_are_matched_by_file_name(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a.jpg", "b.png", "c.png"):
        Image.new("RGB", (32, 32)).save(images / name)
    Image.new("L", (32, 32)).save(masks / "a.png")
    Image.new("L", (32, 32)).save(masks / "b_mask.png")
    items = batch.folder_items("edit", images, "make it blue", [0], masks)
    assert [(Path(i.image).name, i.mask and Path(i.mask).name) for i in items] == [
        ("a.jpg", "a.png"), ("b.png", "b_mask.png"), ("c.png", None),
    ]  # fmt: skip


def test_command_line_refusals_are_one_sentence(tmp_path, tiny_checkpoint):
    code = batch.run_command(batch_options("generate", "--model", str(tiny_checkpoint)))
    assert code == 2
    with pytest.raises(BadInput, match="needs an image folder"):
        batch.job_from_options(batch_options("edit", "--model", "m", "--out", "o",
                                             "--instruction", "x"))  # fmt: skip
    with pytest.raises(BadInput, match="no job file"):
        batch.job_from_options(batch_options(str(tmp_path / "missing.toml")))

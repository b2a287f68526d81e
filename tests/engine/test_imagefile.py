"""engine/imagefile.py: metadata that survives a save in every format and that other tools read,
atomic writes, the A1111 and ComfyUI readers, and reading images from bytes."""

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine import imagefile
from engine.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
META = {
    "task": "generate",
    "seed": "7",
    "prompt": 'a fox, in snow: "red"\nsecond line ünïcode 🦊',
    "width": "48",
    "height": "32",
    "steps": "8",
    "cfg_scale": "2.0",
    "model": "/models/LLaDA2.0-Uni",
    "app version": "0.1.0",
}


@pytest.fixture
def picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
def test_metadata_and_thinking_survive_every_format(tmp_path, picture, suffix):
    path = imagefile.save_image(tmp_path / f"out{suffix}", picture, META, thinking="because")
    assert imagefile.read_metadata(path) == {**META, imagefile.KEY_THINKING_TEXT: "because"}
    assert imagefile.read_image(path).shape == (32, 48, 3)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_png_is_lossless_and_webp_lossless_too(tmp_path, picture):
    png = imagefile.save_image(tmp_path / "a.png", picture, META)
    webp = imagefile.save_image(tmp_path / "a.webp", picture, META, lossless=True)
    assert (imagefile.read_image(png) == picture).all()
    assert (imagefile.read_image(webp) == picture).all()


def test_jpeg_quality_changes_the_file(tmp_path, picture):
    low = imagefile.save_image(tmp_path / "low.jpg", picture, META, quality=20)
    high = imagefile.save_image(tmp_path / "high.jpg", picture, META, quality=98)
    assert low.stat().st_size < high.stat().st_size


def test_other_tools_read_the_a1111_parameters(tmp_path, picture):
    png = imagefile.save_image(tmp_path / "a.png", picture, META)
    with Image.open(png) as image:
        text = image.text["parameters"]
    assert text.startswith(META["prompt"] + "\n")
    assert "Seed: 7" in text and "Size: 48x32" in text and "Model: LLaDA2.0-Uni" in text
    jpg = imagefile.save_image(tmp_path / "a.jpg", picture, META)
    with Image.open(jpg) as image:
        comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"UNICODE\x00"
    assert comment[8:].decode("utf-16-be") == text


def test_a1111_form_round_trips():
    parsed = imagefile.parse_a1111(imagefile.a1111_parameters(META))
    assert parsed["prompt"] == META["prompt"]
    assert (parsed["seed"], parsed["steps"], parsed["width"], parsed["height"]) == (
        "7", "8", "48", "32",
    )  # fmt: skip


def test_reads_an_a1111_png(tmp_path, picture):
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "masterpiece, castle\nNegative prompt: blurry\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, Model: "sd, v1"',
    )
    path = tmp_path / "a1111.png"
    Image.fromarray(picture).save(path, pnginfo=info)
    keys = imagefile.read_metadata(path)
    assert keys["prompt"] == "masterpiece, castle" and keys["negative prompt"] == "blurry"
    assert keys["seed"] == "1234" and (keys["width"], keys["height"]) == ("512", "768")
    assert keys["model"] == "sd, v1" and keys[imagefile.KEY_SOURCE_TOOL] == "A1111"


def test_reads_a_comfyui_png(tmp_path, picture):
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 99, "positive": ["6", 0],
                                                   "negative": ["7", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse"}},
    }  # fmt: skip
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    info.add_text("workflow", json.dumps({"nodes": []}))
    path = tmp_path / "comfy.png"
    Image.fromarray(picture).save(path, pnginfo=info)
    keys = imagefile.read_metadata(path)
    assert keys == {"prompt": "a lighthouse", "seed": "99", imagefile.KEY_SOURCE_TOOL: "ComfyUI"}


def test_reads_a_comfyui_workflow_only(tmp_path, picture):
    workflow = {"nodes": [{"type": "KSampler", "widgets_values": [5, "fixed", 20]},
                          {"type": "CLIPTextEncode", "widgets_values": ["a boat"]}]}  # fmt: skip
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(workflow))
    path = tmp_path / "wf.png"
    Image.fromarray(picture).save(path, pnginfo=info)
    assert imagefile.read_metadata(path)["prompt"] == "a boat"
    assert imagefile.read_metadata(path)["seed"] == "5"


def test_plain_image_has_no_metadata_and_broken_one_is_one_sentence(tmp_path, picture):
    Image.fromarray(picture).save(tmp_path / "plain.png")
    assert imagefile.read_metadata(tmp_path / "plain.png") == {}
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(BadInput, match="broken.png"):
        imagefile.read_metadata(tmp_path / "broken.png")


def test_sidecar_json(tmp_path, picture):
    path = imagefile.save_image(tmp_path / "s.jpg", picture, META, sidecar=True, thinking="t")
    side = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert side == {**META, imagefile.KEY_THINKING_TEXT: "t"}
    assert path.exists()


def test_format_from_suffix_or_argument(tmp_path, picture):
    with pytest.raises(BadInput, match=r"\.png, \.jpg or \.webp"):
        imagefile.save_image(tmp_path / "a.bmp", picture, META)
    path = imagefile.save_image(tmp_path / "noext", picture, META, format="webp")
    with Image.open(path) as image:
        assert image.format == "WEBP"
    with pytest.raises(BadInput, match="quality"):
        imagefile.save_image(tmp_path / "q.jpg", picture, META, quality=0)


def test_a_failed_write_keeps_the_old_file_and_says_disk_full(tmp_path, picture, monkeypatch):
    path = imagefile.save_image(tmp_path / "keep.png", picture, META)
    before = path.read_bytes()

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(imagefile.DiskFull, match="disk is full"):
        imagefile.save_image(path, picture[::-1], META)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_files_get_ordinary_permissions(tmp_path, picture):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    path = imagefile.save_image(tmp_path / "p.png", picture, META)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_read_image_bytes_like_a_paste(picture):
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    assert (imagefile.read_image_bytes(buffer.getvalue()) == picture).all()
    assert (imagefile.read_image_bytes(bytearray(buffer.getvalue())) == picture).all()
    with pytest.raises(BadInput, match="truncated or damaged"):
        imagefile.read_image_bytes(buffer.getvalue()[:60])


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(wide).save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert imagefile.read_image(tmp_path / "o.jpg").shape == (30, 10, 3)


def test_vision_uses_the_same_reader():
    from engine import vision

    assert vision.read_image is imagefile.read_image


def test_imagefile_imports_no_torch():
    code = "import sys, engine.imagefile; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "False", run.stderr

"""engine/vision.py on the tiny checkpoint: reading every kind of image, resize rules, tokens."""

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import BadCheckpoint, BadInput
from engine.vision import (
    ImageTokenizer,
    ImageTokenizerConfig,
    cover_resize,
    edit_buckets,
    fit_for_edit,
    load_image_tokenizer,
    nearest_bucket,
    official_edit_crop,
    read_image,
    resize_for_understanding,
    understanding_size,
)


@pytest.fixture(scope="module")
def root(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # engine.tiny writes the vision folders through write_tiny_vision


@pytest.fixture(scope="module")
def tokenizer(root) -> ImageTokenizer:
    return load_image_tokenizer(root)


def picture(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1
    )


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def assert_one_sentence(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message and ". " not in message.rstrip(".")


# --- tokens


def test_tokens_are_deterministic_and_one_per_16_pixels(root, tokenizer):
    image = picture(48, 64).astype(np.uint8)
    codes = tokenizer.tokenize(image)
    assert codes.shape == (3, 4) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 16384
    assert torch.equal(codes, tokenizer.tokenize(image))
    assert torch.equal(codes, load_image_tokenizer(root / "image_tokenizer").tokenize(image))
    assert tokenizer.tokenize(np.zeros((32, 96, 3), np.uint8)).shape == (2, 6)


def test_codes_depend_on_the_image(tokenizer):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    assert not torch.equal(tokenizer.tokenize(a), tokenizer.tokenize(b))


def test_sides_must_be_multiples_of_16(tokenizer):
    with pytest.raises(BadInput, match="multiples of 16") as error:
        tokenizer.tokenize(np.zeros((40, 64, 3), np.uint8))
    assert_one_sentence(error)


FORMATS = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "I": "TIFF",
    "I;16": "PNG",
    "CMYK": "TIFF",
    "YCbCr": "TIFF",
    "F": "TIFF",
    "LAB": "TIFF",
}


@pytest.mark.parametrize("mode", sorted(FORMATS))
def test_every_mode_reads_and_tokenizes_or_fails_with_a_sentence(tokenizer, mode):
    source = Image.fromarray(picture().astype(np.uint8)).convert(mode)
    try:
        image = read_image(encode(source, FORMATS[mode]))
    except BadInput as error:  # only acceptable as one sentence naming the problem
        message = str(error)
        assert message.endswith(".") and "\n" not in message
        return
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert tokenizer.tokenize(fit_for_edit(image)).ndim == 2
    assert tokenizer.tokenize(resize_for_understanding(image)).ndim == 2


def test_transparency_goes_onto_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent
    image = read_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (image[:8] == (255, 0, 0)).all() and (image[8:] == 255).all()
    assert (read_image(rgba) == image).all()

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image = read_image(encode(palette, "PNG", transparency=0))
    assert image[0, 0].tolist() == [255, 255, 255] and image[0, 1].tolist() == [0, 0, 255]


def test_16_bit_png_scales_to_8_bit():
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    image = read_image(encode(Image.fromarray(values), "PNG"))
    assert image[0, :, 0].tolist() == [0, 100, 255] and image.shape == (1, 3, 3)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = read_image(data)
    assert image[..., 0].min() > 200 and image[..., 2].max() < 50


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.new("RGB", (40, 20), "white"), "JPEG", exif=exif)
    assert read_image(data).shape == (40, 20, 3)


def test_one_pixel_image_goes_through_every_rule(tokenizer):
    image = read_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert image.shape == (1, 1, 3)
    assert resize_for_understanding(image).shape == (128, 128, 3)
    assert fit_for_edit(image).shape == (512, 512, 3)
    crop = official_edit_crop(image)
    assert crop.shape == (512, 512, 3) and crop[0, 0].tolist() == [10, 20, 30]
    assert crop[1:].max() == 0  # the official rule pads a small image with black
    assert tokenizer.tokenize(fit_for_edit(image)).shape == (32, 32)


def test_arrays_of_other_types_are_converted():
    assert read_image(np.full((4, 4), 7, np.uint8)).tolist() == np.full((4, 4, 3), 7).tolist()
    assert read_image(np.ones((2, 2, 3), np.float32)).max() == 255
    assert read_image(np.ones((2, 2), bool)).min() == 255
    with pytest.raises(BadInput) as error:
        read_image(np.zeros((2, 2, 5), np.uint8))
    assert_one_sentence(error)


def test_truncated_garbage_and_missing_files_are_refused(tmp_path):
    data = encode(Image.fromarray(picture(64, 64).astype(np.uint8)), "PNG")
    with pytest.raises(BadInput, match="truncated") as error:
        read_image(data[: len(data) // 2])
    assert_one_sentence(error)
    with pytest.raises(BadInput, match="not an image") as error:
        read_image(b"this is not an image at all")
    assert_one_sentence(error)
    with pytest.raises(BadInput, match="does not exist"):
        read_image(tmp_path / "nope.png")
    path = tmp_path / "cut.png"
    path.write_bytes(data[:-30])
    with pytest.raises(BadInput, match="cut.png"):
        read_image(path)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels; no pixel data follows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [14000, 20000])
def test_decompression_bomb_is_refused(side):
    with pytest.raises(BadInput, match="megapixels") as error:
        read_image(png_header(side, side))
    assert_one_sentence(error)


# --- resize rules


def test_understanding_size_follows_the_official_rule():
    assert understanding_size(1000, 1000, 1) == (800, 800)
    assert understanding_size(1000, 1000, 2) == (448, 448)
    assert understanding_size(100, 100) == (128, 128)
    assert understanding_size(480, 640) == (480, 640)
    h, w = understanding_size(3000, 1000)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 800**2


def test_resize_for_understanding_gives_32_multiples_covering_the_target():
    for height, width in [(480, 640), (1000, 333), (77, 1500), (2000, 2000)]:
        image = np.zeros((height, width, 3), np.uint8)
        out = resize_for_understanding(image)
        target = understanding_size(height, width)
        assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
        assert out.shape[0] >= target[0] and out.shape[1] >= target[1]


def test_official_edit_crop_is_a_native_centre_crop():
    image = picture(600, 1000).astype(np.uint8)
    width, height = nearest_bucket(1000, 600)
    crop = official_edit_crop(image)
    top, left = (600 - height) // 2, (1000 - width) // 2
    assert (width, height) in edit_buckets()
    assert (crop == image[top : top + height, left : left + width]).all()


def test_cover_resize_keeps_the_whole_picture():
    image = np.zeros((1024, 1024, 3), np.uint8)
    image[:512, :512] = 255  # top-left quarter white
    out = cover_resize(image, (512, 512))
    assert out.shape == (512, 512, 3)
    assert out[:250, :250].min() > 250 and out[262:, 262:].max() < 5
    fitted = fit_for_edit(np.zeros((600, 1000, 3), np.uint8))
    assert fitted.shape[1::-1] == nearest_bucket(1000, 600)


# --- loading


def test_file_names_flat_config_and_index_are_accepted(root, tokenizer, tmp_path):
    image = picture(32, 32).astype(np.uint8)
    expected = tokenizer.tokenize(image)
    folder = tmp_path / "image_tokenizer"
    shutil.copytree(root / "image_tokenizer", folder)
    (folder / "model.safetensors").rename(folder / "image_tokenizer.safetensors")
    nested = json.loads((folder / "config.json").read_text())
    flat = nested["vision_config"] | nested["vq_config"] | {"in_channels": 3}
    (folder / "config.json").write_text(json.dumps(flat))
    assert torch.equal(load_image_tokenizer(tmp_path).tokenize(image), expected)

    (folder / "image_tokenizer.safetensors").rename(folder / "shard-1.safetensors")
    weight_map = {"model.visual.patch_embed.proj.weight": "shard-1.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(load_image_tokenizer(folder).tokenize(image), expected)


def test_tokenizer_loads_strictly(root, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "image_tokenizer"
    shutil.copytree(root / "image_tokenizer", folder)
    state = load_file(folder / "model.safetensors")
    state.pop("model.visual.blocks.0.attn.qkv.bias")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(BadCheckpoint, match="lack 1 tensors") as error:
        load_image_tokenizer(folder)
    assert_one_sentence(error)
    (folder / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BadCheckpoint, match="truncated"):
        load_image_tokenizer(folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(BadCheckpoint, match="preprocessor"):
        load_image_tokenizer(folder)


def test_real_tokenizer_config_has_the_published_parameter_count():
    with torch.device("meta"):
        model = ImageTokenizer(ImageTokenizerConfig())
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) == 1_199_457_280  # vision 1,159,607,808 + VQ
    assert len(model.state_dict()) == 488

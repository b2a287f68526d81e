"""Image files in and out, torch-free (stdlib, numpy, PIL): both processes use it.

Reading follows the engine's rules: EXIF orientation applied, 16-bit, CMYK, palette and alpha
converted to 8-bit RGB (transparency onto white), the first frame of an animation, a
decompression-bomb limit, and one sentence (BadInput) for a broken or truncated file.

Writing embeds the metadata so the image says how it was made: PNG text chunks with our keys plus
a `parameters` chunk in the AUTOMATIC1111 form that other tools read; for JPEG and WebP, an EXIF
UserComment in that same form plus an XMP packet with our keys. The file appears atomically
(temporary file, then rename), so a crash or a full disk never leaves half an image under a real
name. `read_metadata` reads our keys back, and the prompt and seed of A1111 and ComfyUI files.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import warnings
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from engine.errors import BadInput, StudioError

MAX_PIXELS = 180_000_000  # decompression-bomb limit, about twice Pillow's warning threshold
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
KEY_PARAMETERS = "parameters"  # the A1111 text chunk
KEY_THINKING_TEXT = "thinking text"  # the model's reasoning ("thinking" holds true/false)
KEY_SOURCE_TOOL = "source tool"  # set when the keys were read from another tool's metadata
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
UNICODE_PREFIX, ASCII_PREFIX = b"UNICODE\x00", b"ASCII\x00\x00\x00"
XMP_NS = "https://github.com/llada-studio/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
MAX_XMP_BYTES = 4_000_000
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation

# A1111 infotext names for our keys (their form: `Steps: 8, CFG scale: 2.0, Seed: 1, ...`)
A1111_NAMES = {
    "steps": "Steps",
    "cfg_scale": "CFG scale",
    "cfg_text_scale": "Text CFG scale",
    "cfg_image_scale": "Image CFG scale",
    "seed": "Seed",
    "task": "Task",
    "block_length": "Block length",
    "threshold": "Threshold",
    "temperature": "Temperature",
    "decoder": "Decoder",
    "decoder_steps": "Decoder steps",
    "thinking": "Thinking",
}


class WriteFailed(StudioError):
    """An image or its sidecar could not be written; nothing under the real name changed."""

    code = "write_failed"


class DiskFull(WriteFailed):
    code = "disk_full"


# ---------------------------------------------------------------------------------------------
# Reading images


def read_image(source: Path | str | bytes | np.ndarray) -> np.ndarray:
    """Any image file, bytes or array as [H, W, 3] uint8 RGB; transparency goes onto white."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    name = "the image" if isinstance(source, bytes) else f"{Path(source).name}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            with opened as image:
                _refuse_bomb(image.size, name)
                image.seek(0)  # animated images: the first frame
                image.load()
                return _pil_to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise BadInput(f"{name} is too large to open safely (over 180 megapixels).") from error
    except FileNotFoundError as error:
        raise BadInput(f"{name} does not exist.") from error
    except IsADirectoryError as error:
        raise BadInput(f"{name} is a folder, not an image file.") from error
    except UnidentifiedImageError as error:
        raise BadInput(f"{name} is not an image file this app can read.") from error
    except (OSError, SyntaxError, EOFError) as error:  # Pillow's truncated and corrupt-file errors
        raise BadInput(f"{name} is truncated or damaged and cannot be read.") from error


def read_image_bytes(data: bytes) -> np.ndarray:
    """An image from bytes in any format PIL reads (a clipboard paste, a download)."""
    return read_image(bytes(data))


def _refuse_bomb(size: tuple[int, int], name: str) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        megapixels = size[0] * size[1] / 1e6
        raise BadInput(f"{name} has {megapixels:.0f} megapixels, more than the 180 this app opens.")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _on_white(np.asarray(image.convert("RGBA")))
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _array_to_rgb(np.asarray(image))
    try:
        return np.asarray(image.convert("RGB")).copy()
    except ValueError as error:
        raise BadInput(f"The image's colour mode {mode} cannot be converted to RGB.") from error


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] arrays of uint8, bool, 16-bit or float to [H, W, 3] uint8."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise BadInput(f"An image array must be [H, W] or [H, W, 1|3|4], not {list(array.shape)}.")
    array = _to_uint8(array)
    if array.shape[2] == 4:
        return _on_white(array)
    return np.ascontiguousarray(
        np.broadcast_to(array, (*array.shape[:2], 3)) if array.shape[2] == 1 else array
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        # floats in 0..1 are the usual convention; anything larger is taken as 0..255
        scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(finite * scale, 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        wide = array.astype(np.int64)
        # 16-bit data (Pillow's I;16 and I modes) scales 0..65535 to 0..255; 8-bit data stays
        if wide.max(initial=0) > 255 or array.dtype in (np.uint16, np.int16):
            return (np.clip(wide, 0, 65535) // 257).astype(np.uint8)
        return np.clip(wide, 0, 255).astype(np.uint8)
    raise BadInput(f"An image array of type {array.dtype} cannot be read as pixels.")


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """[H, W, 4] uint8 composited over opaque white -> [H, W, 3] uint8 (official whitening)."""
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(rgb.round(), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing images


def image_format(path: Path | str, format: str | None = None) -> str:
    """PIL's format name for `format` ("png", "jpeg", "webp"), or else the path's suffix."""
    if format is not None:
        key = format.lower().lstrip(".")
        found = FORMATS.get(f".{key}") or {"jpeg": "JPEG"}.get(key)
        if found is None:
            raise BadInput(f"The format must be png, jpeg or webp, not {format!r}.")
        return found
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise BadInput(f"{Path(path).name} must end in .png, .jpg or .webp.")
    return found


def encode_image(
    image: np.ndarray,
    metadata: dict[str, str],
    format: str = "PNG",
    *,
    quality: int = 95,
    lossless: bool = False,
    thinking: str | None = None,
) -> bytes:
    """The file's bytes: `image` ([H, W, 3] uint8) in `format` with the metadata embedded."""
    fmt = image_format("", format)
    if not 1 <= quality <= 100:
        raise BadInput(f"The quality must be 1 to 100, not {quality}.")
    keys = _with_thinking(metadata, thinking)
    picture = Image.fromarray(_array_to_rgb(np.asarray(image)))
    out = io.BytesIO()
    if fmt == "PNG":
        picture.save(out, format="PNG", pnginfo=_png_info(keys), compress_level=4)
    elif fmt == "JPEG":
        subsampling = 0 if quality >= 90 else 2  # 4:4:4 keeps fine colour at high quality
        options = {"quality": quality, "subsampling": subsampling}
        picture.save(out, format="JPEG", exif=_exif(keys), xmp=_xmp(keys), **options)
    else:
        options = {"quality": quality, "lossless": lossless, "method": 4}
        picture.save(out, format="WEBP", exif=_exif(keys), xmp=_xmp(keys), **options)
    return out.getvalue()


def save_image(
    path: Path | str,
    image: np.ndarray,
    metadata: dict[str, str],
    *,
    format: str | None = None,
    quality: int = 95,
    lossless: bool = False,
    thinking: str | None = None,
    sidecar: bool = False,
) -> Path:
    """Write `image` with its metadata to `path` atomically (format from the suffix unless
    given); with `sidecar`, also `path` with a .json suffix holding the same keys."""
    path = Path(path)
    fmt = image_format(path, format)
    data = encode_image(image, metadata, fmt, quality=quality, lossless=lossless, thinking=thinking)
    write_atomic(path, data)
    if sidecar:
        write_atomic(sidecar_path(path), sidecar_bytes(metadata, thinking))
    return path


def sidecar_path(path: Path | str) -> Path:
    return Path(path).with_suffix(".json")


def sidecar_bytes(metadata: dict[str, str], thinking: str | None = None) -> bytes:
    keys = _with_thinking(metadata, thinking)
    return (json.dumps(keys, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_atomic(path: Path | str, data: bytes) -> None:
    """`data` to `path` through a temporary file in the same folder, synced, then renamed over
    it: readers see the old file or the whole new one. Failures raise WriteFailed/DiskFull."""
    path = Path(path)
    temporary = path.with_name(f".{path.name[:40]}.{secrets.token_hex(4)}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open, not mkstemp: the file gets the user's usual permissions (0666 less umask)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o666)
    except OSError as error:
        raise _write_error(error, path) from error
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(error, path) from error
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open folders, and needs not."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_error(error: OSError, path: Path) -> WriteFailed:
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFull(f"The disk is full: {path.name} could not be written to {path.parent}.")
    if isinstance(error, PermissionError):
        return WriteFailed(f"{path.parent} cannot be written to (permission denied).")
    reason = error.strerror or type(error).__name__
    return WriteFailed(f"{path.name} could not be written to {path.parent} ({reason}).")


def _with_thinking(metadata: dict[str, str], thinking: str | None) -> dict[str, str]:
    keys = {str(k): str(v) for k, v in metadata.items()}
    if thinking:
        keys[KEY_THINKING_TEXT] = thinking
    return keys


def _png_info(keys: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in keys.items():
        if key != KEY_PARAMETERS:
            info.add_itxt(key[:79], value)  # PNG keywords are 1..79 bytes
    info.add_itxt(KEY_PARAMETERS, a1111_parameters(keys))
    return info


def _exif(keys: dict[str, str]) -> bytes:
    """EXIF with the A1111 text as UserComment (UTF-16, big-endian like the EXIF block)."""
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = UNICODE_PREFIX + a1111_parameters(keys).encode(
        "utf-16-be"
    )
    return exif.tobytes()


def _xmp(keys: dict[str, str]) -> bytes:
    """An XMP packet holding our keys as JSON, and the prompt as the image's description."""
    rdf = f"{{{RDF_NS}}}"
    ElementTree.register_namespace("rdf", RDF_NS)
    ElementTree.register_namespace("llada", XMP_NS)
    ElementTree.register_namespace("dc", "http://purl.org/dc/elements/1.1/")
    root = ElementTree.Element("{adobe:ns:meta/}xmpmeta")
    description = ElementTree.SubElement(
        ElementTree.SubElement(root, f"{rdf}RDF"), f"{rdf}Description", {f"{rdf}about": ""}
    )
    ElementTree.SubElement(description, f"{{{XMP_NS}}}metadata").text = json.dumps(
        keys, ensure_ascii=False
    )
    if text := _prompt_of(keys):
        alt = ElementTree.SubElement(
            ElementTree.SubElement(description, "{http://purl.org/dc/elements/1.1/}description"),
            f"{rdf}Alt",
        )
        item = ElementTree.SubElement(alt, f"{rdf}li")
        item.set("{http://www.w3.org/XML/1998/namespace}lang", "x-default")
        item.text = text
    body = ElementTree.tostring(root, encoding="unicode")
    packet = f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>{body}<?xpacket end="w"?>'
    return packet.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# The A1111 text form


def _prompt_of(keys: dict[str, str]) -> str:
    for key in ("prompt", "instruction", "question"):
        if keys.get(key):
            return keys[key]
    return ""


def _quote(value: str) -> str:
    """A1111's rule: a value with a comma, colon or newline goes in JSON quotes."""
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def a1111_parameters(keys: dict[str, str]) -> str:
    """`prompt\\nSteps: 8, CFG scale: 2.0, Seed: 1, Size: 512x512, Model: ...` for other tools."""
    fields = []
    for key, name in A1111_NAMES.items():
        value = keys.get(key)
        if value not in (None, "", "null"):
            fields.append((name, value))
        if key == "seed" and keys.get("width") and keys.get("height"):
            fields.append(("Size", f"{keys['width']}x{keys['height']}"))
    if keys.get("model"):
        fields.append(("Model", Path(keys["model"]).name or keys["model"]))
    fields.append(("Version", f"LLaDA Studio {keys.get('app version', '')}".strip()))
    line = ", ".join(f"{name}: {_quote(str(value))}" for name, value in fields)
    prompt = _prompt_of(keys).replace("\r\n", "\n")
    return f"{prompt}\n{line}" if prompt else line


_FIELD = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, str]:
    """The prompt, negative prompt, seed, steps, CFG scale and size of an A1111 infotext."""
    lines = text.strip().replace("\r\n", "\n").split("\n")
    fields = {}
    if lines and len(_FIELD.findall(lines[-1])) >= 2:
        for name, value in _FIELD.findall(lines.pop()):
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value.strip('"')
            fields[name.strip()] = value.strip()
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    keys = {"prompt": "\n".join(prompt).strip()}
    if negative:
        keys["negative prompt"] = "\n".join(negative).strip()
    names = {name: key for key, name in A1111_NAMES.items()}
    for name, value in fields.items():
        if name == "Size" and re.fullmatch(r"\d+x\d+", value):
            keys["width"], keys["height"] = value.split("x")
        elif name in names:
            keys[names[name]] = value
        elif name == "Model":
            keys["model"] = value
    return {k: v for k, v in keys.items() if v != ""}


# ---------------------------------------------------------------------------------------------
# Reading metadata back


def read_metadata(source: Path | str | bytes) -> dict[str, str]:
    """The keys an image file carries: LLaDA Studio's own (PNG text, XMP, or a sidecar JSON), or
    else the prompt and seed from A1111 (`parameters`, EXIF UserComment) or ComfyUI (`prompt`
    and `workflow` JSON), with KEY_SOURCE_TOOL naming that tool. {} when it carries none."""
    name = "the image" if isinstance(source, bytes) else Path(source).name
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            text = dict(getattr(image, "text", {}) or {})
            info = dict(image.info)
            exif = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except FileNotFoundError as error:
        raise BadInput(f"{name} does not exist.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadInput(f"{name} is not an image file whose metadata can be read.") from error
    keys = _from_text_chunks(text) or _from_xmp(info.get("xmp")) or _from_sidecar(source)
    if keys:
        return keys
    if text.get(KEY_PARAMETERS):
        return {**parse_a1111(text[KEY_PARAMETERS]), KEY_SOURCE_TOOL: "A1111"}
    if comfy := _from_comfyui(text):
        return {**comfy, KEY_SOURCE_TOOL: "ComfyUI"}
    if comment := _user_comment(exif):
        return {**parse_a1111(comment), KEY_SOURCE_TOOL: "A1111"}
    return {}


def _from_text_chunks(text: dict[str, str]) -> dict[str, str]:
    """Ours when the chunks name a task; A1111's `parameters` is theirs (and a copy of ours)."""
    if "task" not in text:
        return {}
    return {str(k): str(v) for k, v in text.items() if k != KEY_PARAMETERS}


def _from_xmp(xmp) -> dict[str, str]:
    if not xmp or len(xmp) > MAX_XMP_BYTES:
        return {}
    try:
        root = ElementTree.fromstring(xmp if isinstance(xmp, (bytes, str)) else bytes(xmp))
        node = root.find(f".//{{{XMP_NS}}}metadata")
        keys = json.loads(node.text) if node is not None and node.text else {}
    except (ElementTree.ParseError, json.JSONDecodeError, TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}


def _from_sidecar(source) -> dict[str, str]:
    if isinstance(source, bytes):
        return {}
    try:
        keys = json.loads(sidecar_path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(keys, dict) or "task" not in keys:
        return {}
    return {str(k): str(v) for k, v in keys.items()}


def _user_comment(raw) -> str:
    """EXIF UserComment: an 8-byte charset code, then the text (UTF-16 for UNICODE)."""
    if isinstance(raw, str):
        return raw.strip("\x00 ")
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return ""
    code, body = raw[:8], raw[8:]
    if code == UNICODE_PREFIX:
        big = body.decode("utf-16-be", errors="replace")
        little = body.decode("utf-16-le", errors="replace")
        # the byte order follows the EXIF block's, which PIL does not expose here: take the
        # reading with fewer unprintable characters
        text = min((big, little), key=lambda t: sum(not c.isprintable() and c != "\n" for c in t))
    else:
        text = body.decode("utf-8", errors="replace")
    return text.strip("\x00 ")


def _from_comfyui(text: dict[str, str]) -> dict[str, str]:
    """The positive prompt and seed of a ComfyUI API graph (`prompt`) or UI graph (`workflow`)."""
    for key, reader in (("prompt", _comfy_api), ("workflow", _comfy_workflow)):
        try:
            graph = json.loads(text.get(key) or "null")
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(graph, dict) and (found := reader(graph)):
            return found
    return {}


def _comfy_api(graph: dict) -> dict[str, str]:
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict) and "class_type" in v}
    samplers = [n for n in nodes.values() if "KSampler" in str(n.get("class_type"))]
    keys = {}
    for sampler in samplers:
        inputs = sampler.get("inputs") or {}
        seed = inputs.get("seed", inputs.get("noise_seed"))
        if isinstance(seed, int):
            keys.setdefault("seed", str(seed))
        link = inputs.get("positive")
        if isinstance(link, list) and link and str(link[0]) in nodes:
            prompt = _comfy_text(nodes, str(link[0]))
            if prompt:
                keys.setdefault("prompt", prompt)
    if "prompt" not in keys:
        texts = [n["inputs"].get("text") for n in nodes.values() if "CLIPTextEncode" in
                 str(n.get("class_type")) and isinstance(n.get("inputs"), dict)]  # fmt: skip
        if texts and isinstance(texts[0], str):
            keys["prompt"] = texts[0]
    return keys


def _comfy_text(nodes: dict, node_id: str, depth: int = 0) -> str:
    """The text a conditioning input comes from, following links through a few nodes."""
    node = nodes.get(node_id) or {}
    inputs = node.get("inputs") or {}
    if isinstance(inputs.get("text"), str):
        return inputs["text"]
    for value in inputs.values():
        if depth < 8 and isinstance(value, list) and value and str(value[0]) in nodes:
            if found := _comfy_text(nodes, str(value[0]), depth + 1):
                return found
    return ""


def _comfy_workflow(graph: dict) -> dict[str, str]:
    keys = {}
    for node in graph.get("nodes") or []:
        if not isinstance(node, dict):
            continue
        kind, values = str(node.get("type")), node.get("widgets_values") or []
        if "CLIPTextEncode" in kind and values and isinstance(values[0], str):
            keys.setdefault("prompt", values[0])
        if "KSampler" in kind and values and isinstance(values[0], int):
            keys.setdefault("seed", str(values[0]))
    return keys

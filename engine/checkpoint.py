"""Finds and validates a LLaDA2.0-Uni model folder, official layout or Hugging Face cache.

Validation reads only config files, safetensors headers and file sizes, never tensor data, so a
40 GB folder checks in well under a second. Every problem is one `BadCheckpoint` sentence.
"""

from __future__ import annotations

import json
import math
import re
import struct
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import BadCheckpoint

if TYPE_CHECKING:
    from engine.backbone import BackboneConfig

HF_REPO_FOLDER = "models--inclusionAI--LLaDA2.0-Uni"
ARCHITECTURE = "LLaDA2MoeModelLM"
MODEL_TYPES = ("llada2_moe", "llada2_moe_veomni")
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")
ALL_PARTS = ("backbone", "tokenizer", "image_tokenizer", "decoder", "decoder_turbo", "vae")
SIGVQ_NAME = "image_tokenizer/sigvq_embedding.pt"  # SigVQ features: the decoder's, in this folder
ZIP_END, ZIP_TAIL_BYTES = b"PK\x05\x06", 65_536 + 22  # a zip's last record, and how far back
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
QUANT_MANIFEST = "quantization.json"  # engine/quant.py MANIFEST: a folder `quantize` wrote
# Root shards might also carry copies of the vision tower; the image tokenizer loads its own folder.
VISION_PREFIXES = ("model.visual.", "model.vqmodel.")
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class ModelFolder:
    root: Path  # the folder holding config.json (for a Hugging Face cache, the snapshot)
    revision: str | None  # the snapshot's commit hash in a Hugging Face cache, else None


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str  # safetensors spelling: "BF16", "F32", ...
    shape: tuple[int, ...]


# Finding the folder


def find_model_folder(path: Path | str) -> ModelFolder:
    """The model folder at `path`: a plain folder, a HF cache repo folder or a snapshot in it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BadCheckpoint(f"The model folder {path} does not exist.")
    if not path.is_dir():
        raise BadCheckpoint(f"{path} is a file; choose the folder that holds config.json.")
    if (path / HF_REPO_FOLDER).is_dir():  # the hub cache itself, e.g. ~/.cache/huggingface/hub
        path = path / HF_REPO_FOLDER
    if path.name == "snapshots" and (path.parent / "blobs").is_dir():
        path = path.parent
    revision = None
    if (path / "snapshots").is_dir():
        path = _pick_snapshot(path)
    if path.parent.name == "snapshots":
        revision = path.name
    _require(
        path,
        "config.json",
        f"The model folder {path} has no config.json; choose the "
        "folder you downloaded LLaDA2.0-Uni into.",
    )
    return ModelFolder(path, revision)


def _pick_snapshot(repo: Path) -> Path:
    """The snapshot refs/main names, or the newest one if there is no ref."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text().strip()
        snapshot = repo / "snapshots" / revision
        if not snapshot.is_dir():
            raise BadCheckpoint(
                f"{ref} names snapshot {revision}, which is not in {repo / 'snapshots'}; "
                "download the model again."
            )
        return snapshot
    snapshots = [p for p in (repo / "snapshots").iterdir() if p.is_dir()]
    if not snapshots:
        raise BadCheckpoint(
            f"The Hugging Face cache folder {repo} holds no snapshot; download the model again."
        )
    return max(snapshots, key=lambda p: p.stat().st_mtime)


def _require(root: Path, relative: str, missing: str) -> Path:
    """root/relative; BadCheckpoint with `missing` if absent, or its own sentence if a dead link."""
    path = root / relative
    if path.is_symlink() and not path.exists():
        raise BadCheckpoint(
            f"{relative} in {root} links to a file that is not there, so the download is "
            "incomplete; download the model again."
        )
    if not path.exists():
        raise BadCheckpoint(missing)
    return path


def _as_folder(folder: ModelFolder | Path | str) -> ModelFolder:
    return folder if isinstance(folder, ModelFolder) else find_model_folder(folder)


# config.json


def read_backbone_config(folder: ModelFolder | Path | str) -> BackboneConfig:
    """The backbone config from config.json, once it is sure to be LLaDA2.0-Uni, all fields set."""
    from engine.backbone import BackboneConfig  # imports torch; finding a folder should not

    root = _as_folder(folder).root
    raw = _read_json(root, "config.json")
    _check_model_kind(root, raw)
    try:
        hints = typing.get_type_hints(BackboneConfig)
    except (NameError, TypeError):  # an annotation we cannot resolve: skip the type checks
        hints = {}
    for field in fields(BackboneConfig):
        if field.name in raw and not _fits(raw[field.name], hints.get(field.name)):
            raise BadCheckpoint(
                f"config.json in {root} has {field.name} = {raw[field.name]!r}, "
                f"which is not a valid {_type_name(hints[field.name])}."
            )
    try:
        return BackboneConfig.from_dict(raw)  # it knows which fields are required
    except BadCheckpoint as error:  # "config.json lacks the field 'x'.": say which config.json
        raise BadCheckpoint(
            str(error).replace("config.json", f"config.json in {root}", 1)
        ) from None
    except (TypeError, ValueError) as error:
        raise BadCheckpoint(
            f"config.json in {root} does not describe a valid model ({error})."
        ) from error


def _read_json(root: Path, relative: str) -> dict:
    path = _require(root, relative, f"The model folder {root} has no {relative}.")
    try:
        raw = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadCheckpoint(
            f"{relative} in {root} is not valid JSON ({error}); {remedy(root)}."
        ) from error
    if not isinstance(raw, dict):
        raise BadCheckpoint(f"{relative} in {root} holds no JSON object; {remedy(root)}.")
    return raw


def _check_model_kind(root: Path, raw: dict) -> None:
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    model_type = raw.get("model_type")
    if ARCHITECTURE not in architectures and model_type not in MODEL_TYPES:
        found = ", ".join(map(str, architectures)) or model_type
        if not found:
            raise BadCheckpoint(
                f"config.json in {root} names no architecture, so it is not LLaDA2.0-Uni "
                f"(architectures {ARCHITECTURE})."
            )
        raise BadCheckpoint(
            f"{root} holds a {found} model, not LLaDA2.0-Uni (architectures {ARCHITECTURE})."
        )
    if "image_token_offset" not in raw:
        raise BadCheckpoint(
            f"{root} holds a text-only LLaDA2.0 model (config.json has no "
            "image_token_offset), not LLaDA2.0-Uni."
        )


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value can stand for a field of type `hint`; unknown types always fit."""
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: object) -> str:
    names = {int: "whole number", float: "number", bool: "true or false", str: "string"}
    return names.get(hint, str(hint))  # type: ignore[arg-type]


# safetensors headers


def read_header(path: Path, root: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of one safetensors file, checked against its size."""
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    _require(root, name, f"{name} is missing from {root}.")
    try:
        return _read_header(path, name, root)
    except OSError as error:
        raise BadCheckpoint(f"{name} in {root} cannot be read ({error.strerror}).") from error


def remedy(path: Path) -> str:
    """What to do about a broken file under `path`: a folder `quantize` wrote (its manifest in
    the path or a folder above it) is made again, anything else is downloaded again."""
    path = Path(path)
    for folder in [path, *list(path.parents)[:3]]:
        if (folder / QUANT_MANIFEST).is_file():
            return "quantize the model again (python main.py quantize)"
    return "download it again"


def _read_header(path: Path, name: str, root: Path) -> dict[str, TensorInfo]:
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise BadCheckpoint(f"{name} in {root} is truncated ({_bytes(size)}); {remedy(root)}.")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise BadCheckpoint(
                f"{name} in {root} has a corrupt safetensors header; {remedy(root)}."
            )
        if 8 + length > size:
            raise BadCheckpoint(
                f"{name} in {root} is truncated ({_part_of(size, 8 + length)}, or more); "
                f"{remedy(root)}."
            )
        text = file.read(length)
    tensors, data_bytes = _parse_header(text, name, root)
    expected = 8 + length + data_bytes
    if size < expected:
        raise BadCheckpoint(
            f"{name} in {root} is truncated ({_part_of(size, expected)}); {remedy(root)}."
        )
    if size > expected:
        raise BadCheckpoint(
            f"{name} in {root} has {size - expected:,} bytes more than its header describes, "
            f"so it is corrupt; {remedy(root)}."
        )
    return {key: TensorInfo(path, dtype, shape) for key, (dtype, shape) in tensors.items()}


def _parse_header(text: bytes, name: str, root: Path) -> tuple[dict, int]:
    """({tensor name: (dtype, shape)}, bytes of tensor data the header accounts for)."""
    corrupt = BadCheckpoint(f"{name} in {root} has a corrupt safetensors header; {remedy(root)}.")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt from None
    if not isinstance(header, dict):
        raise corrupt
    tensors, end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = isinstance(dtype, str) and all(isinstance(n, int) and n >= 0 for n in shape)
            valid = (
                valid and isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop
            )
        except (TypeError, KeyError, ValueError):
            raise corrupt from None
        itemsize = DTYPE_BYTES.get(dtype)
        if not valid or (itemsize is not None and stop - begin != math.prod(shape) * itemsize):
            raise corrupt
        tensors[key] = (dtype, tuple(shape))
        end = max(end, stop)
    return tensors, end


def _part_of(have: int, want: int) -> str:
    """Such as 1.2 GB of 2.9 GB; in exact bytes where rounding would hide the difference."""
    if _bytes(have) == _bytes(want):
        return f"{have:,} of {want:,} bytes"
    return f"{_bytes(have)} of {_bytes(want)}"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# Backbone weights


def tensor_index(folder: ModelFolder | Path | str) -> dict[str, TensorInfo]:
    """Every backbone tensor: name -> file, dtype, shape; checks the index, shards and sizes."""
    root = _as_folder(folder).root
    index = root / INDEX_NAME
    if index.exists() or index.is_symlink():
        return _indexed_tensors(root)
    shards = sorted(
        p for p in root.glob("model-*-of-*.safetensors") if SHARD_NAME.fullmatch(p.name)
    )
    if shards:
        _check_numbering(root, shards)
    elif (root / "model.safetensors").exists() or (root / "model.safetensors").is_symlink():
        shards = [root / "model.safetensors"]
    else:
        raise BadCheckpoint(
            f"The model folder {root} has no backbone weights ({INDEX_NAME} "
            "and its model-*.safetensors shards); download them again."
        )
    return _headers(root, shards)


def _indexed_tensors(root: Path) -> dict[str, TensorInfo]:
    weight_map = _read_json(root, INDEX_NAME).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadCheckpoint(f"{INDEX_NAME} in {root} has no weight_map; {remedy(root)}.")
    shards = []
    for shard in sorted(set(map(str, weight_map.values()))):
        missing = f"Shard {shard} is missing from {root} (named in {INDEX_NAME})."
        shards.append(_require(root, shard, missing))
    tensors = _headers(root, shards)
    for name, shard in weight_map.items():
        if name not in tensors or tensors[name].file.name != Path(shard).name:
            raise BadCheckpoint(
                f"{INDEX_NAME} in {root} puts tensor {name} in {shard}, but that "
                "shard does not hold it; download both again."
            )
    return tensors


def _check_numbering(root: Path, shards: list[Path]) -> None:
    matches = [SHARD_NAME.fullmatch(shard.name) for shard in shards]
    found = {int(match[1]) for match in matches if match}
    total = max(int(match[2]) for match in matches if match)
    width = len(matches[0][2]) if matches[0] else 5
    for number in range(1, total + 1):
        if number not in found:
            name = f"model-{number:0{width}d}-of-{total:0{width}d}.safetensors"
            raise BadCheckpoint(f"Shard {name} is missing from {root}.")


def _headers(root: Path, files: list[Path]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in read_header(file, root).items():
            if name in tensors:
                raise BadCheckpoint(
                    f"Tensor {name} is in both {tensors[name].file.name} and "
                    f"{file.name} in {root}; download the model again."
                )
            tensors[name] = info
    return tensors


def check_backbone(folder: ModelFolder | Path | str) -> dict[str, TensorInfo]:
    """tensor_index, plus: each tensor config.json implies is there with its shape, and no other."""
    from engine.backbone import expected_shapes

    folder = _as_folder(folder)
    config = read_backbone_config(folder)
    tensors = tensor_index(folder)
    fused = any(name.endswith(".mlp.experts.gate_proj") for name in tensors)
    fused = fused or any(name.endswith(".mlp.experts.gate_proj.qweight") for name in tensors)
    expected = _stored_shapes(folder.root, expected_shapes(config, fused_experts=fused), tensors)
    for name, shape in expected.items():
        if name in tensors and tensors[name].shape != tuple(shape):
            raise BadCheckpoint(
                f"In {folder.root}, tensor {name} has shape "
                f"{list(tensors[name].shape)} but config.json implies "
                f"{list(shape)}."
            )
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise BadCheckpoint(
            f"The backbone in {folder.root} lacks {_count(missing)} that "
            f"config.json implies, such as {missing[0]}."
        )
    extra = [n for n in tensors if n not in expected and not n.startswith(VISION_PREFIXES)]
    if extra:
        raise BadCheckpoint(
            f"The backbone in {folder.root} holds {_count(extra)} that "
            f"LLaDA2.0-Uni does not have, such as {extra[0]}."
        )
    return tensors


def _stored_shapes(root: Path, expected: dict, tensors: dict[str, TensorInfo]) -> dict:
    """The expected tensors as this folder stores them: quantized parts in a quantized folder
    (its manifest says how), block scales beside FP8 expert weights."""
    from engine import quant

    manifest = quant.read_manifest(root)
    if manifest:
        bits = manifest["backbone"]["bits"]
        group = manifest["backbone"].get("group_size") or quant.DEFAULT_GROUP
        stored = {}
        for name, shape in expected.items():
            if quant.is_quantized_name(name):
                parts = quant.quantized_names(name, tuple(shape), bits, group)
                stored |= {part: part_shape for part, (_, part_shape) in parts.items()}
            else:
                stored[name] = shape
        return stored
    if any(name.endswith(".qweight") for name in tensors):
        raise BadCheckpoint(
            f"{root} holds quantized weights but no {quant.MANIFEST}, so it is an unfinished "
            "quantized folder; quantize the model again."
        )
    scales = {}
    for name, info in tensors.items():
        base = name.removesuffix(quant.FP8_SCALE_SUFFIX)
        if name != base and base in expected and quant.is_fp8_expert(base):
            scales[name] = info.shape  # block scales: [ceil(N/128), ceil(K/128)]
    return expected | scales


def _count(names: list[str]) -> str:
    return "1 tensor" if len(names) == 1 else f"{len(names)} tensors"


# Other parts


def _check_tokenizer(root: Path) -> None:
    path = _require(
        root, "tokenizer.json", f"The model folder {root} has no tokenizer.json; download it too."
    )
    with path.open("rb") as file:
        if file.read(64).lstrip()[:1] != b"{":
            raise BadCheckpoint(
                f"tokenizer.json in {root} is not a tokenizer file; {remedy(root)}."
            )


def _check_weights_folder(root: Path, part: str, needed_for: str) -> None:
    """A part folder: present, with config.json and readable, complete safetensors files."""
    folder = root / part
    if not folder.is_dir():
        raise BadCheckpoint(
            f"The model folder {root} has no {part}/ folder, which "
            f"{needed_for} needs; download it too."
        )
    _require(
        root,
        f"{part}/config.json",
        f"The {part}/ folder in {root} has no config.json; {remedy(root)}.",
    )
    files = sorted(folder.glob("*.safetensors"))
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    for index in indexes:
        weight_map = _read_json(root, f"{part}/{index.name}").get("weight_map") or {}
        for shard in sorted(set(map(str, weight_map.values()))):
            missing = f"Shard {part}/{shard} is missing from {root} (named in {index.name})."
            _require(folder, shard, missing)
    if not files:
        raise BadCheckpoint(
            f"The {part}/ folder in {root} has no .safetensors weights; {remedy(root)}."
        )
    for file in files:
        read_header(file, root)


def _check_decoder(root: Path) -> None:
    """Either decoder will do (turbo is the default when present); each one there must be whole."""
    present = [part for part in ("decoder-turbo", "decoder") if (root / part).is_dir()]
    if not present:
        raise BadCheckpoint(
            f"The model folder {root} has neither a decoder/ nor a decoder-turbo/ folder, "
            "which making images needs; download one."
        )
    for part in present:
        _check_weights_folder(root, part, "making images")
    _check_torch_file(root, SIGVQ_NAME, "making images")


def _check_torch_file(root: Path, relative: str, needed_for: str) -> None:
    """A torch.save file: present, and if a zip archive (the modern format), not cut short."""
    missing = f"The model folder {root} has no {relative}, which {needed_for} needs; download it."
    path = _require(root, relative, missing)
    size = path.stat().st_size
    with path.open("rb") as file:
        is_zip = file.read(2) == b"PK"
        file.seek(max(0, size - ZIP_TAIL_BYTES))
        tail = file.read()
    if size == 0 or (is_zip and ZIP_END not in tail):
        raise BadCheckpoint(f"{relative} in {root} is truncated; {remedy(root)}.")


def validate_model_folder(
    path: Path | str,
    *,
    parts: tuple[str, ...] = ("backbone", "tokenizer", "image_tokenizer", "decoder", "vae"),
) -> ModelFolder:
    """The model folder at `path`, after checking every part in `parts` (names in ALL_PARTS).

    Understanding needs ("backbone", "tokenizer", "image_tokenizer"); "decoder" takes either
    decoder/ or decoder-turbo/, while "decoder_turbo" insists on decoder-turbo/.
    """
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; choose from {ALL_PARTS}")
    folder = find_model_folder(path)
    root = folder.root
    for part in parts:
        match part:
            case "backbone":
                check_backbone(folder)
            case "tokenizer":
                _check_tokenizer(root)
            case "image_tokenizer":
                _check_weights_folder(root, "image_tokenizer", "reading and editing images")
            case "decoder":
                _check_decoder(root)
            case "decoder_turbo":
                _check_weights_folder(root, "decoder-turbo", "turbo decoding")
            case "vae":
                _check_weights_folder(root, "vae", "making images")
    return folder

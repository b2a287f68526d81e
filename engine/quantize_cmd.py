"""Writes a quantized copy of a model folder: `main.py quantize --model DIR --bits 4 --out DIR`.

Same layout as the source (config.json, tokenizer, sharded safetensors with an index, the vision
and decoder folders), with each quantized weight `X.weight` stored as `X.qweight`, `X.scale`
(and `X.minv` for int4) in the device-neutral format of engine/quant.py, plus a manifest,
quantization.json, saying what was quantized and how. The backbone streams one tensor at a time;
with --decoder-bits 8 the decoder transformers are stored int8 too, streamed tensor by tensor
(engine/quantize_decoder.py). Unchanged files are hard links.

Cancel-safe: everything is written into a hidden `.NAME.partial` folder next to the output, the
manifest last, and the folder is renamed to its name only at the end; a cancelled or failed run
removes it. A folder without the manifest never loads as a quantized model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine import quant
from engine.checkpoint import INDEX_NAME, TensorInfo, tensor_index, validate_model_folder
from engine.errors import BadCheckpoint, BadInput

DECODER_BITS = (8, 16)
MARGIN_BYTES = 64 * 2**20  # headers, index, manifest, filesystem slack
SAFETENSORS_DTYPES = {"I8": 1, "U8": 1, "BF16": 2}


def output_bytes(tensors: dict[str, TensorInfo], bits: int, group: int) -> int:
    """Bytes of backbone tensor data the quantized folder will hold (from headers only)."""
    from engine.checkpoint import DTYPE_BYTES

    total = 0
    for name, info in tensors.items():
        if name.endswith(".weight" + quant.FP8_SCALE_SUFFIX):
            continue
        if quant.is_quantized_name(name):
            for dtype, shape in quant.quantized_names(name, info.shape, bits, group).values():
                total += SAFETENSORS_DTYPES[dtype] * _numel(shape)
        else:
            total += DTYPE_BYTES.get(info.dtype, 4) * _numel(info.shape)
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def quantize_folder(
    source: Path | str,
    out: Path | str,
    bits: int,
    decoder_bits: int = 16,
    group: int = quant.DEFAULT_GROUP,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the quantized folder `out` from the bf16 (or FP8) model folder `source`."""
    if bits not in (4, 8):
        raise BadInput(f"--bits must be 4 or 8, not {bits}.")
    if decoder_bits not in DECODER_BITS:
        raise BadInput(f"--decoder-bits must be 8 or 16, not {decoder_bits}.")
    root = validate_model_folder(source, parts=("backbone", "tokenizer")).root
    if quant.read_manifest(root):
        raise BadInput(f"{root} is already quantized; quantize the bf16 model folder instead.")
    out = Path(out).expanduser().absolute()
    if out.exists():
        raise BadInput(f"The output folder {out} already exists; choose a new name.")
    if not out.parent.is_dir():
        raise BadInput(f"The folder {out.parent} for the output does not exist.")
    tensors = tensor_index(root)
    shards = sorted({info.file for info in tensors.values()})
    decoder_files, rewritten = _decoder_plan(root, decoder_bits)
    others = [p for p in _other_files(root, shards) if p not in rewritten]
    need = output_bytes(tensors, bits, group) + MARGIN_BYTES
    need += sum(item.out_bytes for item in decoder_files)
    if not _same_disk(root, out.parent):
        need += sum(p.stat().st_size for p in others)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise BadInput(
            f"Quantizing needs {need / 1e9:.1f} GB free in {out.parent}, which has "
            f"{free / 1e9:.1f} GB; free some space or choose another --out."
        )
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():  # left by a run that was killed: ours, by its name
        shutil.rmtree(partial)
    partial.mkdir()
    progress = _Progress(on_progress, shards, decoder_files)
    try:
        _link_others(root, others, partial)
        _write_config(root, partial)
        _write_shards(root, shards, partial, bits, group, device, progress)
        if decoder_files:
            from engine import quantize_decoder

            quantize_decoder.write(partial, decoder_files, device, progress.ticker)
        _write_manifest(partial, root, bits, decoder_bits, group, decoder_files)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _decoder_plan(root: Path, decoder_bits: int) -> tuple[list, set[Path]]:
    """The decoder files to store in int8 (none at 16 bits), and the source files they replace."""
    if decoder_bits == 16:
        return [], set()
    from engine import quantize_decoder  # diffusers: only when the decoder is quantized

    files = quantize_decoder.plan(root)
    return files, {item.source for item in files} | set(quantize_decoder.index_files(root))


class _Progress:
    """Progress in units of one backbone shard; a decoder file counts as many units as it holds
    shards' worth of bytes, and advances as its tensors are read."""

    def __init__(self, on_progress, shards: list[Path], decoder_files: list) -> None:
        self.on_progress = on_progress
        unit = max((p.stat().st_size for p in shards), default=1) or 1
        self.units = {id(f): max(1, round(f.data_bytes / unit)) for f in decoder_files}
        self.total = len(shards) + sum(self.units.values())
        self.done = 0

    def step(self, units: int = 1) -> None:
        self.done += units
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def ticker(self, item) -> Callable[[int], None]:
        """For one decoder file: told the bytes read after each tensor, steps in proportion."""
        units, size, state = self.units[id(item)], item.data_bytes, {"read": 0, "sent": 0}

        def tick(read: int) -> None:
            state["read"] += read
            due = units if state["read"] >= size else units * state["read"] // size
            if due > state["sent"]:
                self.step(due - state["sent"])
                state["sent"] = due

        return tick


def _other_files(root: Path, shards: list[Path]) -> list[Path]:
    """Every file of the model folder except the backbone shards, index, config and manifest."""
    skip = {p.name for p in shards} | {INDEX_NAME, "config.json", quant.MANIFEST}
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() or (len(relative.parts) == 1 and relative.name in skip):
            continue
        found.append(path)
    return found


def _same_disk(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _link_others(root: Path, others: list[Path], target: Path) -> None:
    """Hard-link the unchanged files (no space, no time) or copy them across disks."""
    for path in others:
        dest = target / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()  # a Hugging Face cache links into blobs/
        try:
            os.link(real, dest)
        except OSError:
            shutil.copy2(real, dest)


def _write_config(root: Path, target: Path) -> None:
    """config.json as in the source, minus the FP8 flags: the weights are no longer FP8."""
    raw = json.loads((root / "config.json").read_text())
    raw.pop("use_fp8_experts", None)
    raw.pop("quantization_config", None)
    (target / "config.json").write_text(json.dumps(raw, indent=2))


def _write_shards(root, shards, target, bits, group, device, progress: _Progress) -> None:
    weight_map: dict[str, str] = {}
    size = 0
    fp8: dict[str, dict[str, torch.Tensor]] = {}  # FP8 weights waiting for their scales
    for shard in shards:
        tensors = _quantize_shard(shard, bits, group, device, fp8)
        save_file(tensors, str(target / shard.name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, shard.name)
        size += sum(t.numel() * t.element_size() for t in tensors.values())
        progress.step()
    if fp8:
        name = next(iter(fp8))
        lacks = "its weight_scale_inv" if "weight" in fp8[name] else "its weight"
        raise BadCheckpoint(f"The FP8 checkpoint has {name} without {lacks}.")
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (target / INDEX_NAME).write_text(json.dumps(index, indent=2))


def _quantize_shard(shard: Path, bits: int, group: int, device: str, fp8: dict) -> dict:
    """One shard's tensors in the quantized layout, each source tensor read once; an FP8
    weight is written where the second of it and its block scales is read."""
    out: dict[str, torch.Tensor] = {}
    with safe_open(shard, framework="pt", device=device) as file:
        for name in file.keys():
            tensor = file.get_tensor(name)
            if (
                name.endswith(".weight" + quant.FP8_SCALE_SUFFIX)
                or tensor.dtype in quant.FP8_DTYPES
            ):
                base = name.removesuffix(quant.FP8_SCALE_SUFFIX)
                if not quant.is_fp8_expert(base):
                    raise BadCheckpoint(
                        f"The FP8 checkpoint holds {name}, which is not a routed expert weight."
                    )
                slot = fp8.setdefault(base, {})
                slot["scale" if name != base else "weight"] = tensor
                if len(slot) < 2:
                    continue
                del fp8[base]
                name, tensor = base, quant.dequantize_fp8(slot["weight"], slot["scale"])
            out |= _quantize_tensor(name, tensor, bits, group)
    return out


def _quantize_tensor(name: str, tensor: torch.Tensor, bits: int, group: int) -> dict:
    if not quant.is_quantized_name(name):
        return {name: tensor.cpu().contiguous()}
    base = name.removesuffix(".weight")
    if tensor.dim() == 3:  # a fused expert stack: one expert at a time bounds the fp32 copies
        per = [quant.quantize(tensor[e], bits, group) for e in range(tensor.shape[0])]
        parts = {k: torch.stack([p[k] for p in per]) for k in per[0]}
    else:
        parts = quant.quantize(tensor, bits, group)
    return {f"{base}.{k}": v.cpu().contiguous() for k, v in parts.items()}


def _write_manifest(target, source, bits, decoder_bits, group, decoder_files) -> None:
    manifest = {
        "format": quant.FORMAT,
        "version": 1,
        "source": str(source),
        "backbone": {
            "bits": bits,
            "group_size": group if bits == 4 else None,
            "scheme": "int8 symmetric per output channel"
            if bits == 8
            else f"int4 asymmetric, groups of up to {group} columns",
            "quantized": "every linear layer of the layers, routed and shared experts",
            "kept_bf16": ["word embeddings", "lm_head", "router", "norms"],
        },
        "decoder": _decoder_manifest(decoder_bits, decoder_files),
        "torch": torch.__version__,
    }
    (target / quant.MANIFEST).write_text(json.dumps(manifest, indent=2))


def _decoder_manifest(decoder_bits: int, decoder_files: list) -> dict:
    if decoder_bits == 16:
        return {
            "bits": 16,
            "stored": "bf16",
            "applied": "stored as the source (linked); the memory plan may quantize its linear "
            "layers to int8 as they load",
        }
    return {
        "bits": 8,
        "stored": "int8",
        "parts": sorted({item.relative.parts[0] for item in decoder_files}),
        "scheme": "int8 symmetric per output channel (qweight int8, scale bf16)",
        "quantized": "every linear layer of the transformer but its embedders",
        "kept_as_stored": ["embedders", "norms", "biases", "pad tokens"],
    }

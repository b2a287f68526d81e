"""The decoder transformers of a model folder stored int8, for `quantize --decoder-bits 8`.

Each decoder folder present (decoder-turbo/, decoder/) gets its weight files rewritten: every
linear layer that loading would quantize (`quant.quantize_linears`, the same choice) is stored as
`X.qweight` int8 [N, K] and `X.scale` bf16 [N] (engine/quant.py's neutral format); embedders,
norms, biases and pad tokens are copied as stored. One tensor at a time: the source file is
memory-mapped, the output's header is computed from the source's shapes first, and each tensor is
written straight to the file, so neither the bf16 nor the int8 transformer is ever whole in
memory. A sharded folder's index is rewritten; its config.json and other files are hard-linked
by the caller (engine/quantize_cmd.py).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from engine import quant
from engine.checkpoint import DTYPE_BYTES, read_header
from engine.decoder import build_dit, dit_config, dit_files, dit_key
from engine.errors import BadCheckpoint, BadInput
from engine.vision import read_json

PARTS = ("decoder-turbo", "decoder")
BITS = 8
SAFETENSORS_NAMES = {dtype: name for name, dtype in quant.SAFETENSORS_DTYPES.items()}
Layout = list[tuple[str, str, tuple[int, ...]]]  # (name, safetensors dtype, shape) in file order


@dataclass
class DitFile:
    """One decoder weight file: where it comes from and what the quantized copy holds."""

    source: Path
    relative: Path  # under the model folder, e.g. decoder-turbo/model.safetensors
    layout: Layout = field(default_factory=list)
    quantized: set[str] = field(default_factory=set)  # source names of the int8 linears
    data_bytes: int = 0  # of the source's tensors

    @property
    def out_bytes(self) -> int:
        return sum(DTYPE_BYTES[dtype] * _numel(shape) for _, dtype, shape in self.layout)


def plan(root: Path) -> list[DitFile]:
    """Every decoder weight file under `root` with its output layout, from the headers only."""
    found = []
    for part in PARTS:
        folder = root / part
        if not folder.is_dir():
            continue
        linears = linear_shapes(folder)
        files = [_plan_file(root, file, linears) for file in dit_files(folder)]
        stored = {dit_key(name) for item in files for name in item.quantized}
        if missing := sorted(set(linears) - stored):
            raise BadCheckpoint(
                f"The {part}/ weights in {root} lack {len(missing)} linear layers, for example "
                f"{missing[0]}; download the decoder again."
            )
        found += files
    if not found:
        raise BadInput(
            f"The model folder {root} has neither a decoder/ nor a decoder-turbo/ folder to "
            "store in int8; leave out --decoder-bits 8."
        )
    return found


def index_files(root: Path) -> list[Path]:
    """The decoders' shard indexes: rewritten, not linked."""
    return [path for part in PARTS for path in sorted((root / part).glob("*.index.json"))]


def linear_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """diffusers name of each linear weight the decoder stores in int8 -> its [N, K]."""
    raw = read_json(folder / "config.json", "decoder config")
    width = raw.get("cap_feat_dim") or 4096  # the caption embedder stays bf16: any width will do
    with torch.device("meta"):
        model = quant.quantize_linears(build_dit(dit_config(raw, width)), BITS)
    return {
        f"{name}.weight": (module.n, module.k)
        for name, module in model.named_modules()
        if isinstance(module, quant.QuantLinear)
    }


def _plan_file(root: Path, file: Path, linears: dict[str, tuple[int, int]]) -> DitFile:
    read_header(file, root)  # a cut-short or corrupt file: the checkpoint's sentence
    item = DitFile(file, file.relative_to(root))
    for name, view in quant.mapped_tensors(file):  # views: no data is read here
        shape = tuple(view.shape)
        item.data_bytes += view.numel() * view.element_size()
        want = linears.get(dit_key(name))
        if want is None:
            item.layout.append((name, SAFETENSORS_NAMES[view.dtype], shape))
            continue
        if shape != want:
            raise BadCheckpoint(
                f"Tensor {name} in {item.relative} has shape {list(shape)} but its config.json "
                f"implies {list(want)}."
            )
        parts = quant.quantized_names(name, shape, BITS, quant.DEFAULT_GROUP)
        item.layout += [(part, dtype, part_shape) for part, (dtype, part_shape) in parts.items()]
        item.quantized.add(name)
    return item


def write(
    target: Path, files: list[DitFile], device: str, ticker: Callable[[DitFile], Callable]
) -> None:
    """Write every planned file (and the shard indexes) under `target`, the folder being made.

    `ticker(file)` gives the function told the source bytes read after each tensor (progress;
    it may raise Cancelled, which leaves the half-written file to the caller's clean-up).
    """
    for item in files:
        dest = target / item.relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        tick = ticker(item)
        with open(dest, "wb") as out:
            out.write(header_bytes(item.layout))
            for parts, read in _converted(item, device):
                for tensor in parts:
                    out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
                tick(read)
        tick(0)  # a file without tensors is done too
    _write_indexes(target, files)


def header_bytes(layout: Layout) -> bytes:
    """The safetensors prefix for tensors written back to back in `layout` order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in layout:
        size = DTYPE_BYTES[dtype] * _numel(shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text


def _converted(item: DitFile, device: str) -> Iterator[tuple[list[Tensor], int]]:
    """Per source tensor, in file order: the tensors written for it, and its bytes read."""
    layout = iter(item.layout)
    for name, tensor in quant.mapped_tensors(item.source):
        read = tensor.numel() * tensor.element_size()
        if name in item.quantized:
            parts = quant.quantize_int8(tensor.to(device))
            out = [parts["qweight"].cpu().contiguous(), parts["scale"].cpu().contiguous()]
        else:
            out = [tensor.contiguous()]
        for tensor_out in out:  # what is written is what the header says, or nothing is
            _, dtype, shape = next(layout)
            if tuple(tensor_out.shape) != shape or SAFETENSORS_NAMES[tensor_out.dtype] != dtype:
                raise BadCheckpoint(f"{item.relative} changed while it was being quantized.")
        yield out, read


def _write_indexes(target: Path, files: list[DitFile]) -> None:
    for part in PARTS:
        mine = [item for item in files if item.relative.parts[0] == part]
        indexes = sorted(mine[0].source.parent.glob("*.index.json")) if mine else []
        for index in indexes:
            weight_map = {name: item.relative.name for item in mine for name, _, _ in item.layout}
            total = sum(item.out_bytes for item in mine)
            text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
            (target / part / index.name).write_text(text)


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n

"""Weight-only int8 and int4 quantization on torch's own kernels, applied from outside the models.

Format (device-neutral, what a quantized folder stores; plain safetensors, no custom classes):
  int8: `qweight` int8 [..., N, K], `scale` bf16 [..., N]            w = q * scale
  int4: `qweight` uint8 [..., N, K/2] (even column in the low nibble, odd in the high one),
        `scale`, `minv` bf16 [..., N, K/g]                          w = q * scale + minv
The leading `...` is the expert dimension of a stacked expert weight. Kernels come from the
device at `pack` time: int8 `_weight_int8pack_mm` (CPU and CUDA), int4
`_weight_int4pack_mm_for_cpu` (CPU) or `_weight_int4pack_mm` (CUDA sm80+, tinygemm layout);
anything else falls back to dequantize + matmul. `dequantize` is the reference in tests.
Routed expert stacks on CUDA (sm80+, Triton importable) keep the neutral format and run
engine/moe_triton.py's grouped kernel, one launch per projection over every hit expert;
elsewhere they loop over the hit experts on the kernels above (`choose_experts_kernel`;
with LLADA_MOE_KERNEL=loop|triton|auto or the `experts_kernel` argument of `pack`).
Facts: shared/notes/stack.md §1 (kernels, the int8 alignment crash).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import mmap
import os
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.backbone import _copy_into  # the bf16 loader's shape-checked copy
from engine.errors import BadCheckpoint, BadInput

PRECISIONS = ("bf16", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
GROUP_SIZES = (256, 128, 64, 32)  # what the int4 kernels accept
DEFAULT_GROUP = 128
ALIGN = 64  # bytes; the int8 kernel crashes on weights not 16-byte aligned (stack.md §1.5)
# Above this many rows a CUDA matmul is compute-bound, where the int8 weight-only kernel is far
# slower than cuBLAS (the decoder's 16k-token steps); the weight is widened per call instead.
GEMM_ROWS = 256
STORE_DTYPE = torch.bfloat16  # scales and minima as stored, so reloads are bit-identical


# ---- quantize and dequantize (the reference) -----------------------------------------------


def group_for(k: int, group: int = DEFAULT_GROUP) -> int:
    """The int4 group size for rows of length k: `group` or the largest kernel size below it."""
    for size in GROUP_SIZES:
        if size <= group and k % size == 0:
            return size
    raise ValueError(f"int4 needs rows that are a multiple of 32 long, not {k}")


def quantize_int8(w: Tensor) -> dict[str, Tensor]:
    """Symmetric per output channel: w [..., N, K] -> qweight int8, scale bf16 [..., N]."""
    w32 = w.float()
    scale = (w32.abs().amax(-1) / 127).clamp(min=1e-12).to(STORE_DTYPE)
    q = torch.round(w32 / scale.float().unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return {"qweight": q, "scale": scale}


def quantize_int4(w: Tensor, group: int = DEFAULT_GROUP) -> dict[str, Tensor]:
    """Asymmetric per group of `group` columns: w [..., N, K] -> packed nibbles, scale, minv."""
    *lead, n, k = w.shape
    g = group_for(k, group)
    wg = w.to(torch.float32, copy=True).reshape(*lead, n, k // g, g)  # worked on in place
    low, high = torch.aminmax(wg, dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-12).to(STORE_DTYPE)
    minv = low.to(STORE_DTYPE)
    wg.sub_(minv.float().unsqueeze(-1)).mul_((1 / scale.float()).unsqueeze(-1))
    q = wg.round_().clamp_(0, 15).to(torch.uint8).reshape(*lead, n, k)
    return {"qweight": q[..., 0::2] | (q[..., 1::2] << 4), "scale": scale, "minv": minv}


def quantize(w: Tensor, bits: int, group: int = DEFAULT_GROUP) -> dict[str, Tensor]:
    return quantize_int8(w) if bits == 8 else quantize_int4(w, group)


def unpack_int4(packed: Tensor) -> Tensor:
    """[..., N, K/2] uint8 -> [..., N, K] uint8 values 0..15."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


def dequantize(parts: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight the quantized parts stand for, [..., N, K] in `dtype`: the reference path."""
    q, scale = parts["qweight"], parts["scale"].float()
    if q.dtype == torch.int8:
        return (q.float() * scale.unsqueeze(-1)).to(dtype)
    values = unpack_int4(q).float()
    *lead, n, k = values.shape
    groups = scale.shape[-1]
    w = values.reshape(*lead, n, groups, k // groups) * scale.unsqueeze(-1)
    return (w + parts["minv"].float().unsqueeze(-1)).reshape(*lead, n, k).to(dtype)


def aligned(t: Tensor) -> Tensor:
    """t itself if its data is 64-byte aligned, else an aligned copy (the allocator aligns)."""
    return t if t.data_ptr() % ALIGN == 0 else t.clone()


# ---- kernels ----------------------------------------------------------------------------------


def int4_kernel(device: torch.device, n: int, k: int) -> str:
    """Which int4 kernel runs on `device` for an [n, k] weight: "cpu", "cuda" or "dequant"."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        if n % 8 == 0 and k % 128 == 0:  # tinygemm tiles (8 inner k tiles of 16, at least 1)
            return "cuda"
    return "dequant"


def inner_k_tiles(k: int) -> int:
    return next(t for t in (8, 4, 2) if k % (t * 16) == 0)


MOE_KERNEL_ENV = "LLADA_MOE_KERNEL"  # "auto" (default), "triton" or "loop"
MOE_KERNELS = ("auto", "triton", "loop")


def choose_experts_kernel(device: torch.device, wanted: str | None = None) -> str:
    """How expert stacks on `device` run: "triton" (one grouped launch per projection) or
    "loop" (torch's kernels, once per hit expert).

    `wanted` (else $LLADA_MOE_KERNEL, else "auto") may force either; "auto" picks Triton on
    CUDA sm80+ when it can be imported (torch's CUDA wheels bring it), the loop elsewhere.
    Forcing Triton on the CPU works only under TRITON_INTERPRET=1 (the tests).
    """
    wanted = wanted or os.environ.get(MOE_KERNEL_ENV) or "auto"
    if wanted not in MOE_KERNELS:
        raise ValueError(
            f"{MOE_KERNEL_ENV} must be one of {', '.join(MOE_KERNELS)}, not {wanted!r}"
        )
    has_triton = importlib.util.find_spec("triton") is not None
    if wanted == "triton" and not has_triton:
        raise RuntimeError("the Triton experts kernel was asked for, but Triton is not installed")
    if wanted != "auto":
        return wanted
    cuda_ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    return "triton" if cuda_ok and has_triton else "loop"


def pack_int4(parts: dict[str, Tensor], dtype: torch.dtype, kind: str) -> tuple[Tensor, Tensor]:
    """One [N, K/2] int4 weight in the kernel's layout, and tinygemm's scale/zero [K/g, N, 2].

    tinygemm computes w = (q - 8) * scale + zero, so zero = minv + 8 * scale.
    """
    scale, minv = parts["scale"].to(dtype), parts["minv"].to(dtype)
    zeros = minv + 8 * scale
    scale_zero = torch.stack((scale, zeros), dim=-1).transpose(0, 1).contiguous()
    values = unpack_int4(parts["qweight"]).to(torch.int32)
    if kind == "cpu":
        return torch._convert_weight_to_int4pack_for_cpu(values, 1), scale_zero
    k = values.shape[-1]
    high_first = ((values[:, 0::2] << 4) | values[:, 1::2]).to(torch.uint8)
    return torch._convert_weight_to_int4pack(high_first, inner_k_tiles(k)), scale_zero


def int4_matmul(x: Tensor, packed: Tensor, group: int, scale_zero: Tensor, kind: str) -> Tensor:
    if kind == "cpu":
        return torch._weight_int4pack_mm_for_cpu(x, packed, group, scale_zero)
    return torch._weight_int4pack_mm(x, packed, group, scale_zero)


class QuantWeight(nn.Module):
    """One quantized weight [N, K], or a stack [E, N, K]; `matmul(x, e)` computes x @ w[e].T.

    Buffers `qweight`, `scale` (and `minv` for int4) hold the device-neutral format and are what
    a state dict saves. `pack()` builds the device's kernel form; for int4 it replaces the
    neutral nibbles (so memory is not doubled), after which the module can no longer be saved.
    """

    def __init__(self, out_features: int, in_features: int, bits: int, experts: int = 0,
                 group: int = DEFAULT_GROUP):  # fmt: skip
        super().__init__()
        self.bits, self.n, self.k = bits, out_features, in_features
        lead = (experts,) if experts else ()
        self.experts = experts
        if bits == 8:
            self.group = 0
            self.register_buffer("qweight", torch.empty(*lead, self.n, self.k, dtype=torch.int8))
            self.register_buffer("scale", torch.empty(*lead, self.n, dtype=STORE_DTYPE))
        else:
            self.group = group_for(in_features, group)
            groups = in_features // self.group
            self.register_buffer(
                "qweight", torch.empty(*lead, self.n, self.k // 2, dtype=torch.uint8)
            )
            self.register_buffer("scale", torch.empty(*lead, self.n, groups, dtype=STORE_DTYPE))
            self.register_buffer("minv", torch.empty(*lead, self.n, groups, dtype=STORE_DTYPE))
        self.kind = "neutral"  # until pack(): "int8", "cpu", "cuda", "dequant" or "triton"
        self.compute_dtype = torch.bfloat16
        self.reference = False  # True: dequantize + matmul (the tests' reference)

    def parts(self, expert: int | None = None) -> dict[str, Tensor]:
        names = ("qweight", "scale") if self.bits == 8 else ("qweight", "scale", "minv")
        return {n: getattr(self, n) if expert is None else getattr(self, n)[expert] for n in names}

    def fill(self, parts: dict[str, Tensor], expert: int | None = None) -> None:
        """Copy quantized parts into this weight (or into one expert's slice of the stack)."""
        for name, value in parts.items():
            target = getattr(self, name) if expert is None else getattr(self, name)[expert]
            if tuple(target.shape) != tuple(value.shape) or target.dtype != value.dtype:
                raise ValueError(
                    f"{name} is {value.dtype} {list(value.shape)}, "
                    f"expected {target.dtype} {list(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(value)

    def pack(self, dtype: torch.dtype, experts_kernel: str | None = None) -> None:
        """Prepare the kernel form for the buffers' device and activations of `dtype`.

        An expert stack bound for the Triton kernel (`experts_kernel`) keeps the neutral
        buffers as they are (kind "triton"): the kernel reads them directly.
        """
        self.compute_dtype = dtype
        device = self.qweight.device
        if self.experts and choose_experts_kernel(device, experts_kernel) == "triton":
            self.kind = "triton"
            return
        self.register_buffer("scale_c", self.scale.to(dtype), persistent=False)
        if self.bits == 8:
            self.kind = "int8"
            self.qweight = aligned(self.qweight)
            return
        self.kind = int4_kernel(device, self.n, self.k)
        if self.kind == "dequant":
            return
        stack = [self.parts(e) for e in range(self.experts)] if self.experts else [self.parts()]
        packed, scale_zero = zip(*(pack_int4(p, dtype, self.kind) for p in stack), strict=True)
        packed = torch.stack(packed) if self.experts else packed[0]
        scale_zero = torch.stack(scale_zero) if self.experts else scale_zero[0]
        self._drop_neutral()  # buffers (not persistent): .to() moves them with the module
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scale_zero", scale_zero, persistent=False)

    def _drop_neutral(self) -> None:
        for name in ("qweight", "scale", "minv", "scale_c"):
            self._buffers.pop(name, None)
        self.neutral_dropped = True

    def dequantized(self, expert: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dequantized weight (the reference); needs the neutral buffers."""
        if getattr(self, "neutral_dropped", False):
            raise RuntimeError(
                "this weight was packed for its kernel; the reference needs the neutral buffers"
            )
        return dequantize(self.parts(expert), dtype)

    def matmul(self, x: Tensor, expert: int | None = None) -> Tensor:
        """x [M, K] -> [M, N] in x's dtype."""
        if self.reference or self.kind in ("neutral", "dequant", "triton"):
            return F.linear(x, self.dequantized(expert, x.dtype))  # triton: one expert's only
        out_dtype = x.dtype
        x = x.to(self.compute_dtype).contiguous()
        if self.kind == "int8":
            q = self.qweight if expert is None else self.qweight[expert]
            scale = self.scale_c if expert is None else self.scale_c[expert]
            if x.shape[0] > GEMM_ROWS and x.is_cuda:  # compute-bound: cuBLAS on the weight
                y = F.linear(x, q.to(x.dtype) * scale.unsqueeze(-1))
            else:
                y = torch._weight_int8pack_mm(x, q, scale)
        else:
            packed = self.packed if expert is None else self.packed[expert]
            scale_zero = self.scale_zero if expert is None else self.scale_zero[expert]
            y = int4_matmul(x, packed, self.group, scale_zero, self.kind)
        return y.to(out_dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())


class QuantLinear(QuantWeight):
    """nn.Linear without bias on a quantized weight: buffers `qweight`, `scale` (, `minv`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group: int = DEFAULT_GROUP,
        bias: bool = False,
    ):
        super().__init__(out_features, in_features, bits, group=group)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.matmul(x.reshape(-1, x.shape[-1])).view(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class QuantExperts(nn.Module):
    """Routed experts on quantized stacks; only the experts a step hits run.

    `kind` says how: "triton" (stacks packed for engine/moe_triton.py: one grouped launch per
    projection, no host sync) or "loop" (tokens sorted by expert once, one host sync learns
    which experts were hit, and a loop runs torch's kernels over those only, at most T*K of
    the E experts). Every buffer keeps the expert as its leading dimension.
    """

    def __init__(self, experts: int, dim: int, width: int, bits: int, group: int = DEFAULT_GROUP):
        super().__init__()
        self.num_experts = experts
        self.gate_proj = QuantWeight(width, dim, bits, experts, group)
        self.up_proj = QuantWeight(width, dim, bits, experts, group)
        self.down_proj = QuantWeight(dim, width, bits, experts, group)

    @property
    def kind(self) -> str:
        stacks = (self.gate_proj, self.up_proj, self.down_proj)
        triton = all(s.kind == "triton" and not s.reference for s in stacks)
        return "triton" if triton else "loop"

    def forward(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """x [T, D], weights/chosen [T, K] -> [T, D] fp32."""
        if self.kind == "triton":
            kernel = importlib.import_module("engine.moe_triton")  # Triton: only when used
            x = x.to(self.gate_proj.compute_dtype)
            return kernel.moe_forward(x, weights, chosen, self.gate_proj, self.up_proj,
                                      self.down_proj)  # fmt: skip
        return self._loop(x, weights, chosen)

    def _loop(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        T, K = chosen.shape
        flat = chosen.reshape(-1)
        order = flat.argsort(stable=True)
        token_of = order // K
        counts = torch.bincount(flat, minlength=self.num_experts)
        xs = x[token_of]
        ys = torch.empty(T * K, x.shape[-1], dtype=x.dtype, device=x.device)
        start = 0
        for expert, count in enumerate(counts.tolist()):  # one sync; hit experts only
            if count == 0:
                continue
            rows = slice(start, start + count)
            part = xs[rows]
            h = F.silu(self.gate_proj.matmul(part, expert)) * self.up_proj.matmul(part, expert)
            ys[rows] = self.down_proj.matmul(h, expert)
            start += count
        ys = ys.float() * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros(T, x.shape[-1], dtype=torch.float32, device=x.device).index_add_(
            0, token_of, ys
        )


# ---- applying quantization to a model (from outside the model files) -------------------------


def keep_in_bf16(name: str) -> bool:
    """Embeddings, the head and the router stay in bf16 (or fp32) unless a flag says otherwise."""
    if name.endswith(("lm_head", "mlp.gate")):
        return True
    return any("embed" in part for part in name.split("."))  # also the decoder's embedders


def quantize_structure(
    model: nn.Module,
    bits: int,
    group: int = DEFAULT_GROUP,
    skip: Callable[[str], bool] = keep_in_bf16,
) -> nn.Module:
    """Swap every nn.Linear (no bias) and every stacked expert set for empty quantized modules.

    Meant for a model on the meta device, before its weights stream in; returns the model.
    """
    from engine.backbone import Experts

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if skip(full):
                continue
            if isinstance(child, nn.Linear) and child.bias is None:
                quant = QuantLinear(child.in_features, child.out_features, bits, group)
                setattr(module, child_name, quant)
            elif isinstance(child, Experts):
                e, width, dim = child.gate_proj.shape
                setattr(module, child_name, QuantExperts(e, dim, width, bits, group))
    return model


def quantize_loaded(
    model: nn.Module, bits: int, group: int = DEFAULT_GROUP, skip=keep_in_bf16
) -> nn.Module:
    """Quantize an already loaded model in place, one layer at a time (decoder, vision encoder)."""
    dtype = next(model.parameters()).dtype
    for module, child_name, child in linears_to_quantize(model, bits, skip):
        has_bias = child.bias is not None
        with torch.device(child.weight.device):  # allocated where it will run
            quant = QuantLinear(child.in_features, child.out_features, bits, group, has_bias)
        quant.fill(quantize(child.weight.detach(), bits, quant.group or group))
        if has_bias:
            quant.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
        quant.pack(dtype)
        setattr(module, child_name, quant)
    return model


def quantize_linears(
    model: nn.Module, bits: int, group: int = DEFAULT_GROUP, skip=keep_in_bf16
) -> nn.Module:
    """Swap the linears `quantize_loaded` would quantize (biased ones too) for empty QuantLinears.

    For a model on the meta device whose weights then stream in (the decoder transformer); each
    bias keeps its linear's dtype. Returns the model.
    """
    for module, child_name, child in linears_to_quantize(model, bits, skip):
        has_bias = child.bias is not None
        with torch.device(child.weight.device):
            quant = QuantLinear(child.in_features, child.out_features, bits, group, has_bias)
            if has_bias:
                quant.bias = nn.Parameter(torch.empty_like(child.bias), requires_grad=False)
        setattr(module, child_name, quant)
    return model


def linears_to_quantize(model: nn.Module, bits: int, skip=keep_in_bf16):
    """(parent, child name, nn.Linear) for each linear that int`bits` replaces, biased or not."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if skip(full) or not isinstance(child, nn.Linear):
                continue
            if child.in_features % 32 and bits == 4:
                continue  # no int4 kernel for this width: keep it
            yield module, child_name, child


def pack_model(
    model: nn.Module, dtype: torch.dtype, experts_kernel: str | None = None
) -> nn.Module:
    """Pack every quantized weight for its device; `experts_kernel` as in QuantWeight.pack."""
    for module in model.modules():
        if isinstance(module, QuantWeight):
            module.pack(dtype, experts_kernel)
    return model


def set_reference(model: nn.Module, on: bool) -> None:
    """Route every quantized matmul through dequantize + F.linear (tests' reference)."""
    for module in model.modules():
        if isinstance(module, QuantWeight):
            module.reference = on


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, packed kernel forms included (meta models too)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QuantWeight):
            total += module.nbytes()
        else:
            total += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
    return total


# ---- names: which checkpoint tensors are quantized -------------------------------------------

QUANTIZED_NAME = re.compile(
    r"model\.layers\.\d+\.(attention\.(query_key_value|dense)\.weight"
    r"|mlp\.((shared_experts\.)?\w+_proj|experts\.\d+\.\w+_proj)\.weight"
    r"|mlp\.experts\.\w+_proj)$"
)
PART_NAMES = ("qweight", "scale", "minv")
FP8_SCALE_SUFFIX = "_scale_inv"  # DeepSeek-V3 block FP8: `<name>.weight_scale_inv` (facts §7)
FP8_BLOCK = 128
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
MANIFEST = "quantization.json"
FORMAT = "llada-studio-quant"


def is_quantized_name(name: str) -> bool:
    """Whether a bf16 checkpoint tensor becomes int8/int4 (linears of the layers, experts)."""
    return QUANTIZED_NAME.fullmatch(name) is not None


def quantized_names(name: str, shape: tuple[int, ...], bits: int, group: int) -> dict:
    """The tensors a quantized folder holds for one bf16 tensor: name -> (dtype, shape)."""
    base = name.removesuffix(".weight")
    *lead, n, k = shape
    if bits == 8:
        return {f"{base}.qweight": ("I8", (*lead, n, k)), f"{base}.scale": ("BF16", (*lead, n))}
    groups = k // group_for(k, group)
    return {
        f"{base}.qweight": ("U8", (*lead, n, k // 2)),
        f"{base}.scale": ("BF16", (*lead, n, groups)),
        f"{base}.minv": ("BF16", (*lead, n, groups)),
    }


def is_fp8_expert(name: str) -> bool:
    """FP8 is accepted only where the facts put it: routed expert weights (facts §7)."""
    return ".mlp.experts." in name and is_quantized_name(name)


def dequantize_fp8(weight: Tensor, scale_inv: Tensor, dtype=torch.bfloat16) -> Tensor:
    """Block FP8 -> dtype: every 128x128 block times its fp32 scale (w = q * scale_inv)."""
    n, k = weight.shape[-2:]
    scale = scale_inv.float().repeat_interleave(FP8_BLOCK, -2)[..., :n, :]
    scale = scale.repeat_interleave(FP8_BLOCK, -1)[..., :k]
    return (weight.float() * scale).to(dtype)


def read_manifest(folder: Path) -> dict | None:
    """The quantized folder's manifest, or None for a plain (bf16 or FP8) folder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadCheckpoint(f"{path} is not a valid quantization manifest ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadCheckpoint(f"{path} is not a LLaDA Studio quantization manifest.")
    return manifest


def folder_precision(folder: Path) -> str:
    """ "int8"/"int4" for a quantized folder, "fp8" for an FP8 checkpoint, else "bf16"."""
    manifest = read_manifest(folder)
    if manifest:
        return f"int{manifest['backbone']['bits']}"
    raw = json.loads((Path(folder) / "config.json").read_text())
    if raw.get("use_fp8_experts") or (raw.get("quantization_config") or {}).get("quant_method"):
        return "fp8"
    return "bf16"


# ---- loading a backbone, quantizing as the tensors stream in ---------------------------------


def load_backbone(
    folder: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    precision: str = "bf16",
    group: int = DEFAULT_GROUP,
    on_progress: Callable[[int, int], None] | None = None,
    pack: bool = True,
):
    """The backbone at `precision` from a bf16, FP8 or quantized folder, one tensor at a time.

    The model is built on the meta device with quantized modules in place, allocated once on
    `device`, and each checkpoint tensor is quantized (or dequantized from FP8) as it is read,
    so the bf16 model is never held whole. A quantized folder loads without re-quantizing.
    `pack` prepares the device's kernels (False keeps the neutral format, for the reference).
    """
    from engine.backbone import Backbone, BackboneConfig, rope_frequencies, shard_files

    folder, device = Path(folder), torch.device(device)
    if precision not in PRECISIONS:
        raise BadInput(f"Precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    manifest = read_manifest(folder)
    if manifest:
        stored = f"int{manifest['backbone']['bits']}"
        if precision not in (stored, "bf16"):
            raise BadInput(
                f"{folder} holds a {stored} model; load it at {stored}, or quantize the "
                f"bf16 model to {precision}."
            )
        precision, group = stored, manifest["backbone"]["group_size"] or DEFAULT_GROUP
    config = BackboneConfig.from_checkpoint(folder)
    with torch.device("meta"):
        model = Backbone(config)
    model.to(dtype)
    for layer in model.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.float()
    if precision != "bf16":
        quantize_structure(model, BITS[precision], group)
    model.to_empty(device=device)
    model.inv_freq = rope_frequencies(config).to(device)
    loader = _StreamLoader(model, config.num_experts, group, folder if not manifest else None)
    files = shard_files(folder)
    for done, file in enumerate(files, 1):
        for name, tensor in mapped_tensors(file):
            loader.take(name, tensor.to(device))
        if on_progress:
            on_progress(done, len(files))
    loader.finish()
    if pack:
        pack_model(model, dtype)
    return model.eval().requires_grad_(False)


SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "BOOL": torch.bool,
    **{k: getattr(torch, v) for k, v in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"))
       if hasattr(torch, v)},
}  # fmt: skip


def mapped_tensors(path: Path):
    """Each tensor of a safetensors file as a view into the memory-mapped file, in file order.

    No tensor is copied into process memory here: the caller copies (or quantizes) each one
    where it belongs, and the file's pages are dropped when the map closes after the last one.
    """
    with open(path, "rb") as file:
        mm = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        (length,) = struct.unpack("<Q", mm[:8])
        header = json.loads(mm[8 : 8 + length])
        header.pop("__metadata__", None)
        start = 8 + length
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise BadCheckpoint(
                    f"Tensor {name} in {path.name} has the unknown type {entry['dtype']}."
                )
            count = (end - begin) // torch.empty(0, dtype=dtype).element_size()
            with warnings.catch_warnings():  # read-only map: the views are only read
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=start + begin)
            yield name, flat.view(entry["shape"])
            del flat
            _release(mm, start + begin, start + end)
    finally:
        try:
            mm.close()
        except BufferError:  # a caller still holds a view: the map closes when it goes
            pass


def _release(mm: mmap.mmap, begin: int, end: int) -> None:
    """Drop the pages of a tensor already used from the process's resident set. The map is a
    read-only file mapping, so a page touched again is read back from the file: always safe."""
    if not hasattr(mmap, "MADV_DONTNEED"):  # Windows: the pages go when the map closes
        return
    first = begin - begin % mmap.PAGESIZE
    if end > first:
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)


def stream_into(
    model: nn.Module,
    files: list[Path],
    device: torch.device,
    rename: Callable[[str], str] = lambda key: key,
    unquantized: Path | None = None,
) -> None:
    """Fill a model that has its quantized modules in place and is allocated on `device` from
    safetensors files, one tensor at a time, strictly (every tensor known, none missing): bf16
    weights are quantized as they are read, stored quantized parts are copied as they are.
    `unquantized` is the folder when it has no manifest (stored parts there: an unfinished one).
    For models without experts (the decoder transformer); load_backbone does the backbone."""
    loader = _StreamLoader(model, 0, DEFAULT_GROUP, unquantized)
    for file in files:
        for name, tensor in mapped_tensors(file):
            loader.take(rename(name), tensor.to(device))
    loader.finish()


class _StreamLoader:
    """Puts each checkpoint tensor where it belongs, quantizing or dequantizing on the way."""

    def __init__(self, model: nn.Module, experts: int, group: int, unquantized: Path | None):
        self.model, self.experts, self.group = model, experts, group
        self.unquantized = unquantized  # the folder, when it has no manifest
        self.filled: dict[str, set[int | None]] = {}
        self.fp8: dict[str, dict[str, Tensor]] = {}  # weight name -> {"weight", "scale"}

    def take(self, name: str, tensor: Tensor) -> None:
        if name.endswith(".weight" + FP8_SCALE_SUFFIX) or tensor.dtype in FP8_DTYPES:
            self._take_fp8(name, tensor)
            return
        module_path, leaf, expert = _locate(name)
        module = _submodule(self.model, module_path)
        if module is None or (expert is not None and not isinstance(module, QuantWeight)):
            module_path, _, leaf = module_path.rpartition(".")  # a bf16 stack: a parameter
            module = _submodule(self.model, module_path)
        if module is None or not (isinstance(module, QuantWeight) or hasattr(module, leaf)):
            raise BadCheckpoint(f"The checkpoint holds a tensor this model does not know: {name}.")
        if isinstance(module, QuantWeight) and leaf != "bias":  # a QuantLinear's bias: a copy
            self._take_quantized(module, module_path, leaf, expert, tensor, name)
        else:
            _copy_into(getattr(module, leaf), expert, tensor, name)
            self._mark(f"{module_path}.{leaf}" if module_path else leaf, expert)  # top level too

    def _take_quantized(self, module, path, leaf, expert, tensor, name) -> None:
        if leaf in PART_NAMES:
            if self.unquantized:
                raise BadCheckpoint(
                    f"{self.unquantized} holds quantized weights but no {MANIFEST}, so it is "
                    "an unfinished quantized folder; quantize the model again."
                )
            self._fill(module, {leaf: tensor}, expert, name)
            self._mark(f"{path}.{leaf}", expert)
            return
        if leaf != "weight":
            raise BadCheckpoint(f"The checkpoint holds a tensor this model does not know: {name}.")
        if tensor.dim() == 3 and expert is None:  # a fused expert stack: one expert at a time
            for e in range(tensor.shape[0]):
                self._take_quantized(module, path, leaf, e, tensor[e], name)
            return
        want = (module.n, module.k)
        if tuple(tensor.shape) != want:
            raise BadCheckpoint(
                f"Tensor {name} has shape {list(tensor.shape)} but config.json implies "
                f"{list(want)}."
            )
        self._fill(module, quantize(tensor, module.bits, module.group or self.group), expert, name)
        for part in module.parts():
            self._mark(f"{path}.{part}", expert)

    def _fill(self, module: QuantWeight, parts: dict, expert, name: str) -> None:
        try:
            module.fill(parts, expert)
        except ValueError as error:
            raise BadCheckpoint(
                f"Tensor {name} does not match this model's quantized layout ({error})."
            ) from None

    def _take_fp8(self, name: str, tensor: Tensor) -> None:
        weight_name = name.removesuffix(FP8_SCALE_SUFFIX)
        if not is_fp8_expert(weight_name):
            raise BadCheckpoint(
                f"The FP8 checkpoint holds {name}, which is not a routed expert weight; only "
                "expert weights with .weight_scale_inv block scales are expected in FP8."
            )
        slot = self.fp8.setdefault(weight_name, {})
        slot["scale" if name.endswith(FP8_SCALE_SUFFIX) else "weight"] = tensor.clone()
        if len(slot) == 2:
            del self.fp8[weight_name]
            self.take(weight_name, dequantize_fp8(slot["weight"], slot["scale"]))

    def _mark(self, key: str, expert) -> None:
        self.filled.setdefault(key, set()).add(expert)

    def finish(self) -> None:
        """Strict: every parameter, buffer and expert slice came from the checkpoint."""
        if self.fp8:
            name = next(iter(self.fp8))
            lacks = "its weight_scale_inv" if "weight" in self.fp8[name] else "its weight"
            raise BadCheckpoint(f"The FP8 checkpoint has {name} without {lacks}.")
        names = [n for n, _ in self.model.named_parameters()]
        names += [n for n, _ in self.model.named_buffers() if n != "inv_freq"]
        for key in names:
            got = self.filled.get(key, set())
            if not got:
                raise BadCheckpoint(f"The checkpoint is missing tensor {key}.")
            if None not in got and len(got) < self.experts:
                e = min(set(range(self.experts)) - got)
                layer, proj = key.rsplit(".", 1)
                raise BadCheckpoint(f"The checkpoint is missing expert {e} of {layer}.{proj}.")


_PER_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+_proj)\.(\w+)$")
_FUSED = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(\w+_proj)$")


def _locate(name: str) -> tuple[str, str, int | None]:
    """Checkpoint name -> (module path, tensor name in it, expert index or None).

    Per-expert tensors land in one expert's slice of the stacked module; a bf16 model keeps
    fused expert stacks as parameters of `experts`, a quantized one as modules inside it.
    """
    if m := _PER_EXPERT.fullmatch(name):
        return f"{m[1]}.{m[3]}", m[4], int(m[2])
    if m := _FUSED.fullmatch(name):
        return f"{m[1]}.{m[2]}", "weight", None
    path, _, leaf = name.rpartition(".")
    return path, leaf, None


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None

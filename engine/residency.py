"""What sits on the GPU: a memory budget, presets by VRAM, each part's size, and the plan.

Sizes are estimated before anything loads: weights from the backbone built on the meta device
(no memory) and from the other parts' safetensors headers, plus the KV cache and activations at
the requested image size. The presets (DESIGN.md, memory plan):

    >= 48 GB   backbone bf16, decoder bf16   all resident
       24 GB   backbone int4, decoder int8   all resident
    12-16 GB   backbone int4, decoder int8   backbone and decoder take turns (pinned host memory)
     < 12 GB   backbone int4, decoder int8   experts (and decoder blocks) streamed from host
                                             memory: slow, and says so

`python main.py estimate --model DIR --vram 16` prints the plan without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

GIB = 2**30
RESERVE = int(0.8 * GIB)  # CUDA context, allocator slack and fragmentation
PROMPT_TOKENS = 512  # room for the prompt and the chat template
BLOCK = 32
# The real parts other than the backbone, in bf16 (backbone_facts.md §8): used when the folder
# lacks a part (estimating before a download) and by the residency test.
REAL_BYTES = {"decoder": 12.3e9, "vision": 2.4e9, "vae": 0.17e9}
DECODER_BLOCKS = 30  # transformer blocks of the 6.2B decoder, streamed one by one on small cards
LINEAR_SHARE = {"decoder": 0.97, "vision": 0.95, "vae": 0.0}  # of the bytes, in linear layers


@dataclass(frozen=True)
class Preset:
    name: str
    min_vram_gib: float  # the smallest card it is meant for
    backbone: str  # "bf16" | "int8" | "int4"
    decoder: str  # "bf16" | "int8"
    mode: str  # "resident" | "turns" | "stream"
    note: str = ""


PRESETS = (
    Preset("48 GB", 44, "bf16", "bf16", "resident"),
    Preset("24 GB", 20, "int4", "int8", "resident"),
    Preset("12-16 GB", 11, "int4", "int8", "turns", "backbone and decoder take turns"),
    Preset(
        "< 12 GB",
        0,
        "int4",
        "int8",
        "stream",
        "experts and decoder blocks stream from host memory; this works but is slow",
    ),
)


@dataclass
class Part:
    name: str
    precision: str
    weights: int  # bytes on the device
    working: int = 0  # KV cache and activations while it runs
    where: str = "gpu"  # "gpu", "host (pinned, takes turns)", "host (streamed)"


@dataclass
class Plan:
    preset: Preset
    budget: int  # bytes usable on the device
    parts: list[Part] = field(default_factory=list)
    expert_bytes: int = 0  # the backbone's routed experts, all layers
    layer_expert_bytes: int = 0  # one MoE layer's experts

    @property
    def peak(self) -> int:
        """The most the device holds at once, by the preset's mode."""
        if self.preset.mode == "resident":
            return sum(p.weights for p in self.parts) + max(p.working for p in self.parts)
        vision, backbone = self.part("vision"), self.part("backbone")
        decoder, vae = self.part("decoder"), self.part("vae")
        backbone_on, decoder_on = backbone.weights, decoder.weights
        if self.preset.mode == "stream":  # two layers or blocks in flight, the rest on the host
            backbone_on -= self.expert_bytes - 2 * self.layer_expert_bytes
            decoder_on = decoder.weights * 2 // DECODER_BLOCKS
        return max(
            vision.weights + vision.working,
            backbone_on + backbone.working,
            decoder_on + vae.weights + decoder.working,
        )

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def text(self) -> str:
        lines = [
            f"preset {self.preset.name}: backbone {self.preset.backbone}, decoder "
            f"{self.preset.decoder}, {self.preset.mode}"
            + (f" ({self.preset.note})" if self.preset.note else ""),
            f"budget {self.budget / GIB:.1f} GiB, peak {self.peak / GIB:.1f} GiB"
            + ("" if self.fits else "  DOES NOT FIT"),
        ]
        for p in self.parts:
            lines.append(
                f"  {p.name:<9} {p.precision:<5} weights {p.weights / GIB:6.2f} GiB  "
                f"working {p.working / GIB:5.2f} GiB  on {p.where}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "preset": self.preset.name,
            "mode": self.preset.mode,
            "budget_gib": round(self.budget / GIB, 2),
            "peak_gib": round(self.peak / GIB, 2),
            "fits": self.fits,
            "parts": [
                {
                    "name": p.name,
                    "precision": p.precision,
                    "weights_gib": round(p.weights / GIB, 3),
                    "working_gib": round(p.working / GIB, 3),
                    "where": p.where,
                }
                for p in self.parts
            ],
        }


# ---- sizes --------------------------------------------------------------------------------------


def backbone_sizes(config, precision: str) -> tuple[int, int]:
    """(all weight bytes, routed expert bytes) of the backbone at `precision`, on meta."""
    import torch

    from engine import quant
    from engine.backbone import Backbone

    with torch.device("meta"):
        model = Backbone(config).to(torch.bfloat16)
        if precision != "bf16":
            quant.quantize_structure(model, quant.BITS[precision])
    total = quant.weight_bytes(model)
    experts = sum(
        quant.weight_bytes(m) for name, m in model.named_modules() if name.endswith("mlp.experts")
    )
    return total, experts


def part_bytes(folder: Path | None, part: str) -> tuple[int, int]:
    """(bf16 bytes, bytes in linear weights) of a part from its safetensors headers."""
    from engine.checkpoint import DTYPE_BYTES, read_header

    sub = {"decoder": ("decoder-turbo", "decoder"), "vision": ("image_tokenizer",), "vae": ("vae",)}
    for name in sub[part]:
        root = folder / name if folder else None
        if root is None or not root.is_dir():
            continue
        total = linear = 0
        for file in sorted(root.glob("*.safetensors")):
            for key, info in read_header(file, folder).items():
                n = DTYPE_BYTES.get(info.dtype, 2) * _numel(info.shape)
                total += n
                if key.endswith(".weight") and len(info.shape) == 2 and min(info.shape) >= 32:
                    linear += n
        return total, linear
    return int(REAL_BYTES[part]), int(REAL_BYTES[part] * LINEAR_SHARE[part])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def at_precision(total: int, linear: int, precision: str) -> int:
    """bf16 bytes -> bytes with the linear weights at `precision` (scales included)."""
    ratio = {"bf16": 1.0, "int8": 0.5 + 1 / 1024, "int4": 0.25 + 2 / 128}[precision]
    return int(total - linear + linear * ratio)


def kv_cache_bytes(config, tokens: int, rows: int) -> int:
    """Keys and values of every layer for `tokens` positions in each of `rows` CFG rows, bf16."""
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2
    return per_token * tokens * rows


def sequence_tokens(width: int, height: int, images_in: int, multiplier: int = 2) -> int:
    """Positions one row holds: prompt, input images and the output, at 16*multiplier px/token."""
    grid = (width // (16 * multiplier)) * (height // (16 * multiplier))
    tokens = PROMPT_TOKENS + (images_in + 1) * (grid + 8)
    return -(-tokens // BLOCK) * BLOCK


def backbone_activation_bytes(config, tokens: int, rows: int) -> int:
    """The largest step: a prefill of `tokens` per row through one MoE layer, plus the mask
    and the image-vocabulary logits of one block."""
    t = tokens * rows
    k, d, width = config.num_experts_per_tok, config.hidden_size, config.moe_intermediate_size
    moe = t * k * (d * 2 + 3 * width * 2 + d * 4)  # sorted copies, expert hidden, fp32 outputs
    hidden = 6 * t * d * 2  # residual stream, norms, attention in and out
    mask = rows * tokens * tokens  # bool
    logits = rows * BLOCK * 16384 * 4
    return moe + hidden + mask + logits


def decoder_activation_bytes(width: int, height: int) -> int:
    """The DiT at batch 2 (CFG) and the VAE decode, scaling with pixels: about 2.5 GiB at
    1024x1024 in bf16, mostly the VAE's full-resolution layers (an estimate that
    tests/bench/gpu.py checks on a GPU)."""
    return int(2.5 * GIB * width * height / 1024**2)


# ---- the plan ------------------------------------------------------------------------------------


def make_plan(
    config,
    folder: Path | None,
    preset: Preset,
    budget: int,
    width: int = 1024,
    height: int = 1024,
    rows: int = 3,
    images_in: int = 1,
    backbone: str | None = None,
) -> Plan:
    """The plan for `preset` within `budget` bytes at the image size with `rows` CFG rows;
    `backbone` overrides the preset's backbone precision (the user's --precision)."""
    if backbone and backbone != preset.backbone:
        preset = replace(preset, name=f"{preset.name}, backbone {backbone}", backbone=backbone)
    total, experts = backbone_sizes(config, preset.backbone)
    tokens = sequence_tokens(width, height, images_in)
    working = kv_cache_bytes(config, tokens, rows)
    working += backbone_activation_bytes(config, tokens, rows)
    vision_prec = "bf16" if preset.backbone == "bf16" else "int8"
    parts = [Part("backbone", preset.backbone, total, working)]
    parts.append(
        Part("vision", vision_prec, at_precision(*part_bytes(folder, "vision"), vision_prec))
    )
    parts.append(
        Part(
            "decoder",
            preset.decoder,
            at_precision(*part_bytes(folder, "decoder"), preset.decoder),
            decoder_activation_bytes(width, height),
        )
    )
    parts.append(Part("vae", "bf16", part_bytes(folder, "vae")[0]))
    moe_layers = max(1, config.num_hidden_layers - config.first_k_dense_replace)
    plan = Plan(preset, budget, parts, experts, experts // moe_layers)
    if preset.mode != "resident":  # whichever phase is idle waits in pinned host memory
        for p in parts:
            p.where = "gpu in turns, else pinned host"
    if preset.mode == "stream":
        parts[0].where = "gpu, experts streamed from host"
        parts[2].where = "gpu in turns, blocks streamed from host"
    return plan


def budget_for(vram_gib: float) -> int:
    return int(vram_gib * GIB) - RESERVE


def choose(config, folder: Path | None, budget: int, **size) -> Plan:
    """The best preset whose plan fits `budget`, trying the larger ones first."""
    plans = [make_plan(config, folder, preset, budget, **size) for preset in PRESETS]
    return next((plan for plan in plans if plan.fits), plans[-1])


def preset_named(name: str) -> Preset:
    return next(p for p in PRESETS if p.name == name)


def device_budget(device) -> int | None:
    """Free bytes on a CUDA device now, less the reserve; None off CUDA."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free - RESERVE


def lower(plan: Plan) -> Preset | None:
    """The next smaller preset, for a retry after running out of memory."""
    index = next(i for i, p in enumerate(PRESETS) if plan.preset.name.startswith(p.name))
    return PRESETS[index + 1] if index + 1 < len(PRESETS) else None


# ---- what to load -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What Pipeline.load puts where: the backbone's and decoder's precisions and the plan."""

    precision: str  # the backbone's: "bf16", "int8", "int4"
    decoder: str  # "bf16" or "int8"
    plan: Plan | None  # None off CUDA (the CPU has no budget to plan for)
    allow_lower: bool = False  # after running out of memory, retry once at the next preset

    def describe(self) -> str:
        where = f", plan {self.plan.preset.name} ({self.plan.preset.mode})" if self.plan else ""
        if self.plan and self.plan.preset.mode == "stream":
            where += "; slow: experts and decoder blocks stream from host memory"
        return f"backbone {self.precision}, decoder {self.decoder}{where}"


def resolve(folder: Path, device, precision: str | None, vram: float | None) -> Settings:
    """The user's --precision/--vram (None: automatic) and the folder, as load settings.

    A quantized folder loads at its own precision; on a GPU without a given precision the
    largest preset that fits the budget (--vram, or the card's free memory) is used; on the
    CPU the model loads as stored (bf16) unless a precision is given.
    """
    import torch

    from engine import quant
    from engine.checkpoint import read_backbone_config

    stored = quant.folder_precision(folder)
    fixed = precision or (stored if stored in ("int8", "int4") else None)
    device = torch.device(device)
    budget = budget_for(vram) if vram else device_budget(device)
    if budget is None:  # the CPU
        chosen = fixed or "bf16"
        return Settings(chosen, "int8" if chosen != "bf16" else "bf16", None)
    config = read_backbone_config(folder)
    if fixed:
        plans = [make_plan(config, folder, p, budget, backbone=fixed) for p in PRESETS]
        plan = next((p for p in plans if p.fits), plans[-1])
    else:
        plan = choose(config, folder, budget)
    return Settings(plan.preset.backbone, plan.preset.decoder, plan)


def fitting_advice(config, folder: Path | None, budget: int) -> str:
    """A sentence naming the preset that would fit, for an out-of-memory failure."""
    plan = choose(config, folder, budget)
    if plan.fits:
        return (
            f"the {plan.preset.name} preset (backbone {plan.preset.backbone}, decoder "
            f"{plan.preset.decoder}) would fit"
        )
    return "no preset fits this card at this image size; try a smaller image"


def loaded_sizes(pipeline) -> str:
    """What is loaded, where and at what size: "backbone int4 9.1 GiB on cuda:0, ..."."""
    from engine import quant, streaming

    parts = [("backbone", pipeline.backbone), ("image tokenizer", pipeline.image_tokenizer)]
    decoder = pipeline.decoder
    if decoder is not None:
        parts += [("decoder", decoder.dit), ("vae", decoder.vae)]
    shown = []
    for name, module in parts:
        if module is None:
            continue
        tensor = next(module.parameters(), None)
        where = str(tensor.device) if tensor is not None else "?"
        if tensor is not None and where == "cpu" and tensor.is_pinned():
            where = "pinned host"
        precision = _precision_of(module)
        size = f"{quant.weight_bytes(module) / GIB:.2f} GiB on {where}"
        shown.append(f"{name} {precision} {size}{streaming.describe(module)}")
    return ", ".join(shown) or "nothing"


def _precision_of(module) -> str:
    from engine import quant

    for m in module.modules():
        if isinstance(m, quant.QuantWeight):
            return f"int{m.bits}"
    return str(next(module.parameters()).dtype).removeprefix("torch.").replace("bfloat", "bf")


def out_of_memory_sentence(pipeline) -> str:
    """For a job that ran out of GPU memory: which preset would fit this card now."""
    settings = pipeline.settings
    budget = device_budget(pipeline.device) if pipeline.device.type == "cuda" else None
    budget = budget if budget is not None else settings.plan.budget
    budget += _loaded_bytes(pipeline)  # what the loaded parts hold would be free to reuse
    advice = fitting_advice(pipeline.backbone.config, pipeline.root, budget)
    return (
        f"The GPU ran out of memory at the {settings.plan.preset.name} preset; {advice} "
        "(choose it in the settings, or allow a lower preset)."
    )


def _loaded_bytes(pipeline) -> int:
    from engine import quant

    parts = [pipeline.backbone, pipeline.image_tokenizer]
    if pipeline.decoder is not None:
        parts += [pipeline.decoder.dit, pipeline.decoder.vae]
    return sum(quant.weight_bytes(p) for p in parts if p is not None)


# ---- taking turns on small cards ----------------------------------------------------------------


def take_turn(pipeline, phase: str) -> None:
    """Before a phase ("backbone": denoising, "decoder": decoding) on a plan that takes turns:
    the other phase's parts wait in pinned host memory and this phase's come to the device.
    Nothing happens where everything is resident, or off CUDA."""
    settings = getattr(pipeline, "settings", None)
    if settings is None or settings.plan is None or settings.plan.preset.mode == "resident":
        return
    if pipeline.device.type != "cuda":
        return
    decoder = pipeline.decoder
    decoder_parts = [decoder.dit, decoder.vae, decoder.sigvq] if decoder is not None else []
    backbone_parts = [pipeline.backbone, pipeline.image_tokenizer]
    away, here = (decoder_parts, backbone_parts) if phase == "backbone" else (
        backbone_parts, decoder_parts)  # fmt: skip
    from engine import streaming

    for module in away:
        if module is not None:
            streaming.release(module)  # a prefetched decoder block leaves the device too
            to_pinned_host(module)
    import torch

    torch.cuda.empty_cache()
    for module in here:
        if module is not None:
            module.to(pipeline.device, non_blocking=True)


def to_pinned_host(module) -> None:
    """Move a module's weights to page-locked host memory (fast to bring back)."""
    module.to("cpu")
    for tensor in list(module.parameters()) + list(module.buffers()):
        if not tensor.is_pinned():
            tensor.data = tensor.data.pin_memory()

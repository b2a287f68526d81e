"""Every GPU measurement of the engine in one process (under 8 minutes on one H200).

    python -m tests.bench.gpu --out gpu.json            # on a CUDA GPU
    python -m tests.bench.gpu --smoke --out smoke.json  # tiny sizes on the CPU: checks the script

Parts, each timed, each in its own try/except (an error is recorded and the rest still run),
each written to `--out` as soon as it ends (so a timeout still leaves figures):
  backbone_<precision>  the real-config backbone (20 layers, 256 experts, random weights made on
                        the device) at bf16, int8, int4: seconds per denoising step after a
                        1024-token prompt for a 32-token block, in the three rows of
                        tests/bench/backbone.py (official baseline, cache alone, everything on),
                        and peak VRAM;
  moe_experts           one MoE layer's routed experts for 32 and 1056 tokens, side by side:
                        bf16 grouped matmul; int8 and int4 as a loop of torch's kernels over
                        the hit experts and as engine/moe_triton.py's grouped kernel (CUDA sm80+
                        with Triton; skipped with a reason elsewhere); FP8 with 128x128
                        block scales on the same Triton kernel (sm80+), and FP8 with per-row
                        scales through torch._scaled_mm over the hit experts (sm89+ only);
  streaming             the "< 12 GB" preset's experts: one real-width int4 MoE layer over the 8
                        steps of a 32-token block, resident against streamed from pinned host
                        memory into device slots (tests/bench/streaming.py), ms per step, MB
                        copied per step and the slot hit rate, for three pool sizes;
  decoder_<precision>   one decoder (6.2B DiT, random weights) step at 1024x1024 with CFG
                        (batch 2) in bf16 and int8, and peak VRAM.
The last line printed is one JSON object (the same as the file).
"""

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import quant
from engine.backbone import Backbone, BackboneConfig, Experts, MoE, rope_frequencies

REPORT: dict = {"parts": {}, "errors": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--parts", default="", help="comma-separated part names (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    device = torch.device("cpu" if options.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: there is no CUDA GPU here; use --smoke to check the script on the CPU.")
    REPORT["machine"] = machine(device)
    REPORT["smoke"] = options.smoke
    print(json.dumps(REPORT["machine"]), flush=True)
    wanted = {p for p in options.parts.split(",") if p}
    sizes = Sizes.smoke() if options.smoke else Sizes.real()
    parts = [(f"backbone_{p}", backbone_part, p) for p in quant.PRECISIONS]
    parts += [("moe_experts", moe_part, None)]
    parts += [("streaming", streaming_part, None)]
    parts += [(f"decoder_{p}", decoder_part, p) for p in ("bf16", "int8")]
    started = time.perf_counter()
    for name, run, precision in parts:
        if wanted and name not in wanted and name.split("_")[0] not in wanted:
            continue
        measure(name, lambda run=run, p=precision: run(sizes, device, p, options.repeats), device)
        write(options.out)
    REPORT["total_s"] = round(time.perf_counter() - started, 1)
    write(options.out)
    print(json.dumps(REPORT), flush=True)


class Sizes:
    """The shapes measured: the real model's, or tiny ones for --smoke."""

    def __init__(self, backbone, prompt, block, moe_tokens, dit, latent, caption, caption_dim):
        self.backbone, self.prompt, self.block = backbone, prompt, block
        self.moe_tokens, self.dit, self.latent = moe_tokens, dit, latent
        self.caption, self.caption_dim = caption, caption_dim

    @classmethod
    def real(cls):
        from engine.decoder import dit_config

        # 1024x1024: 128x128 latents (VAE /8), 64x64 patches; the caption is the 32x32 token
        # grid upsampled 2x (4096 SigVQ features of 4096)
        return cls(BackboneConfig.real(), 1024, 32, (32, 1056), dit_config({}, 4096), 128,
                   4096, 4096)  # fmt: skip

    @classmethod
    def smoke(cls):
        from engine.decoder import dit_config
        from engine.tiny import tiny_config
        from engine.tiny_vision import DECODER_CONFIG, SIGVQ_WIDTH

        backbone = replace(tiny_config(512, 0), num_hidden_layers=3)
        return cls(backbone, 64, 32, (32, 64), dit_config(DECODER_CONFIG, SIGVQ_WIDTH), 16,
                   64, SIGVQ_WIDTH)  # fmt: skip


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    else:
        info["cpu"] = f"{platform.machine()}, {torch.get_num_threads()} threads"
    return info


def measure(name: str, run, device: torch.device) -> None:
    """Run one part: its result or its error (and how long it took) go into the report."""
    print(f"--- {name}", flush=True)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = run()
        result["part_s"] = round(time.perf_counter() - start, 1)
        REPORT["parts"][name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)
    except Exception as error:  # record it and go on with the next part
        REPORT["errors"][name] = {
            "error": f"{type(error).__name__}: {str(error)[:500]}",
            "trace": traceback.format_exc()[-2000:],
            "part_s": round(time.perf_counter() - start, 1),
        }
        print(f"{name} FAILED: {type(error).__name__}: {error}", flush=True)
    finally:
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{name} took {time.perf_counter() - start:.1f} s", flush=True)


def write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(REPORT, indent=2))


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- random weights made where they live ---------------------------------------------------------


@torch.no_grad()
def randomize(module: torch.nn.Module) -> None:
    """Random weights in place, on the module's device: normal(0, 0.02) floats, norms near 1,
    quantized weights as random codes with scales that give the same spread."""
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point():
            if name.endswith("norm.weight") or "layernorm" in name:
                tensor.fill_(1.0)
            elif name.endswith(("expert_bias", ".bias")):
                tensor.zero_()
            elif name.endswith("scale"):
                tensor.fill_(0.02 / 64)
            elif name.endswith("minv"):
                tensor.fill_(-0.02 * 8 / 64)
            else:
                tensor.normal_(0, 0.02)
        elif tensor.dtype == torch.int8:
            tensor.random_(-127, 128)
        elif tensor.dtype == torch.uint8:
            tensor.random_(0, 256)


def backbone_on(config: BackboneConfig, device, precision: str) -> Backbone:
    """The backbone with random weights allocated on `device` (never built on the CPU first)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = Backbone(config)
    model.to(dtype)
    if precision != "bf16":
        quant.quantize_structure(model, quant.BITS[precision])
    model.to_empty(device=device)
    for layer in model.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.float()
    randomize(model)
    model.inv_freq = rope_frequencies(config).to(device)
    quant.pack_model(model, dtype)
    return model.eval().requires_grad_(False)


# ---- parts ---------------------------------------------------------------------------------------


def backbone_part(sizes: Sizes, device, precision: str, repeats: int) -> dict:
    from tests.bench.backbone import step_rows

    start = time.perf_counter()
    model = backbone_on(sizes.backbone, device, precision)
    sync(device)
    built = time.perf_counter() - start
    weights = quant.weight_bytes(model)
    rows = step_rows(model, prompt_tokens=sizes.prompt, repeats=repeats)
    result = {
        "precision": precision,
        "layers": sizes.backbone.num_hidden_layers,
        "experts": sizes.backbone.num_experts,
        "prompt_tokens": sizes.prompt,
        "block_tokens": sizes.block,
        "weights_gib": round(weights / 2**30, 2),
        "experts_kernel": experts_kernels(model),
        "build_s": round(built, 1),
        "rows": rows,
        "peak_vram_gib": peak_gib(device),
    }
    del model
    return result


def experts_kernels(model) -> list[str]:
    """How the model's routed experts run: "grouped_mm" (bf16), "loop" or "triton"."""
    kinds = {
        m.kind if isinstance(m, quant.QuantExperts) else "grouped_mm"
        for m in model.modules()
        if isinstance(m, (quant.QuantExperts, Experts))
    }
    return sorted(kinds)


def moe_part(sizes: Sizes, device, _precision, repeats: int) -> dict:
    """One MoE layer's experts (gate and shared expert left out) by kernel strategy."""
    from tests.bench.backbone import timed

    config = sizes.backbone
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        bf16 = MoE(config)
    bf16.to(dtype).to_empty(device=device)
    randomize(bf16)
    bf16.gate.float()
    layers = {"bf16 grouped_mm": bf16.experts}
    skipped = []
    kernels = ["loop"]
    if device.type == "cuda" and quant.choose_experts_kernel(device, "auto") == "triton":
        kernels.append("triton")
    else:
        skipped.append("triton: needs a CUDA GPU of sm80 or newer with Triton importable")
    for precision in ("int8", "int4"):
        for kernel in kernels:
            experts = quantized_experts(bf16.experts, quant.BITS[precision], dtype, kernel)
            layers[f"{precision} {EXPERT_KERNELS[kernel]}"] = experts
    if "triton" in kernels:
        layers["fp8 blocks triton grouped"] = TritonFp8Experts(bf16.experts)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        layers["fp8 _scaled_mm, hit experts"] = Fp8Experts(bf16.experts)
    else:
        skipped.append("fp8: needs a CUDA GPU of sm89 or newer")
    result = {"skipped": skipped}
    for tokens in sizes.moe_tokens:
        x = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
        weights, chosen = bf16.gate(x)
        reference = bf16.experts(x, weights, chosen)
        row = {"experts_hit": int(chosen.unique().numel())}
        for name, experts in layers.items():
            with torch.inference_mode():
                run = lambda e=experts, a=(x, weights, chosen): (e(*a), sync(device))  # noqa: E731
                seconds = timed(run, max(repeats, MOE_REPEATS))
                out = experts(x, weights, chosen)
            error = ((out - reference).norm() / reference.norm()).item()
            row[name] = {"ms": round(seconds * 1e3, 3), "relative_error": round(error, 4)}
        bf16_ms = row["bf16 grouped_mm"]["ms"]
        for name in layers:
            row[name]["x_bf16_time"] = round(row[name]["ms"] / bf16_ms, 2)
        if "triton" in kernels:  # other launch shapes, to tune moe_triton.Tiles
            int4 = layers[f"int4 {EXPERT_KERNELS['triton']}"]
            row["int4 triton tiles ms"] = tile_sweep(int4, (x, weights, chosen), device, repeats)
        result[f"{tokens}_tokens"] = row
    return result


def tile_sweep(experts, inputs, device, repeats: int) -> dict:
    """ms of the int4 Triton experts per launch shape (block_n, warps, stages)."""
    from engine.moe_triton import Tiles, moe_forward
    from tests.bench.backbone import timed

    x, weights, chosen = inputs
    stacks = (experts.gate_proj, experts.up_proj, experts.down_proj)
    shapes = [(32, 4, 3), (64, 4, 3), (128, 4, 3), (64, 8, 3), (128, 8, 3), (64, 4, 4)]
    figures = {}
    for block_n, warps, stages in shapes:
        tiles = Tiles(block_n, warps, stages)
        run = lambda t=tiles: (moe_forward(x, weights, chosen, *stacks, tiles=t), sync(device))  # noqa: E731
        with torch.inference_mode():
            seconds = timed(run, max(repeats, MOE_REPEATS))
        figures[f"n{block_n}_w{warps}_s{stages}"] = round(seconds * 1e3, 3)
    return figures


EXPERT_KERNELS = {"loop": "loop of torch kernels, hit experts", "triton": "triton grouped"}
MOE_REPEATS = 20  # one layer takes milliseconds: a median of 3 is noise


def quantized_experts(bf16_experts, bits: int, dtype, kernel: str) -> quant.QuantExperts:
    """The bf16 experts quantized on their device, packed for the `kernel` ("loop"/"triton")."""
    e, width, dim = bf16_experts.gate_proj.shape
    experts = quant.QuantExperts(e, dim, width, bits).to(bf16_experts.gate_proj.device)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        target = getattr(experts, proj)
        target.fill(quant.quantize(getattr(bf16_experts, proj), bits, target.group or 128))
    quant.pack_model(experts, dtype, experts_kernel=kernel)
    assert experts.kind == kernel, (experts.kind, kernel)
    return experts


class TritonFp8Experts(torch.nn.Module):
    """Routed experts in FP8 E4M3 with 128x128 block scales (the official FP8 checkpoint's
    format) on engine/moe_triton.py's grouped kernel, activations in bf16."""

    def __init__(self, experts):
        super().__init__()
        from engine.moe_triton import BlockFp8

        projs = ("gate_proj", "up_proj", "down_proj")
        self.stacks = [BlockFp8.quantize(getattr(experts, proj)) for proj in projs]

    def forward(self, x, weights, chosen):
        from engine.moe_triton import moe_forward

        return moe_forward(x.to(torch.bfloat16), weights, chosen, *self.stacks)


class Fp8Experts(torch.nn.Module):
    """Routed experts in FP8 E4M3 with per-row weight scales and per-token activation scales,
    run through torch._scaled_mm over the hit experts (rows padded to 16, as it needs)."""

    def __init__(self, experts):
        super().__init__()
        self.num_experts = experts.gate_proj.shape[0]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            weight = getattr(experts, proj).float()  # [E, N, K]
            scale = weight.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 448
            setattr(self, proj, (weight / scale).to(torch.float8_e4m3fn))
            setattr(self, proj + "_scale", scale.squeeze(-1).contiguous())  # [E, N]

    def matmul(self, x, proj: str, e: int):
        rows = x.shape[0]
        padded = -(-rows // 16) * 16
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))
        x_scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / 448
        xq = (x.float() / x_scale).to(torch.float8_e4m3fn)
        w = getattr(self, proj)[e]
        w_scale = getattr(self, proj + "_scale")[e].unsqueeze(0)  # [1, N]
        y = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        return y[:rows]

    def forward(self, x, weights, chosen):
        T, K = chosen.shape
        flat = chosen.reshape(-1)
        order = flat.argsort(stable=True)
        token_of = order // K
        counts = torch.bincount(flat, minlength=self.num_experts)
        xs = x[token_of].to(torch.bfloat16)
        ys = torch.empty(T * K, x.shape[-1], dtype=torch.bfloat16, device=x.device)
        start = 0
        for e, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            part = xs[start : start + count]
            h = F.silu(self.matmul(part, "gate_proj", e)) * self.matmul(part, "up_proj", e)
            ys[start : start + count] = self.matmul(h, "down_proj", e)
            start += count
        ys = ys.float() * weights.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros(T, x.shape[-1], device=x.device).index_add_(0, token_of, ys)


def streaming_part(sizes: Sizes, device, _precision, repeats: int) -> dict:
    """tests/bench/streaming.py's measurement on this device (real widths: skipped by --smoke,
    whose CPU run of that benchmark is `python -m tests.bench.streaming --cpu-only`)."""
    if device.type != "cuda":
        return {"skipped": "real widths only; run python -m tests.bench.streaming --cpu-only"}
    from tests.bench import streaming

    return streaming.measure(device, tokens=32, steps=8, repeats=repeats)


def decoder_part(sizes: Sizes, device, precision: str, repeats: int) -> dict:
    """One velocity step of the DiT at the image size, CFG batch of 2, random weights."""
    from engine.decoder import _dit_velocity, build_dit
    from tests.bench.backbone import timed

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    with torch.device("meta"):
        dit = build_dit(sizes.dit)
    dit.to(dtype).to_empty(device=device)
    randomize(dit)
    if precision == "int8":
        quant.quantize_loaded(dit, 8)
    dit.eval().requires_grad_(False)
    sync(device)
    built = time.perf_counter() - start
    channels = sizes.dit.get("in_channels", 16)
    latent = torch.randn(1, channels, 1, sizes.latent, sizes.latent, device=device, dtype=dtype)
    caption = torch.randn(sizes.caption, sizes.caption_dim, device=device, dtype=dtype)
    velocity = _dit_velocity(dit, [caption, caption], cfg_scale=2.0)
    t = torch.tensor([0.5], device=device)
    with torch.inference_mode():
        seconds = timed(lambda: (velocity(latent, t), sync(device)), repeats)
    pixels = sizes.latent * 8
    return {
        "precision": precision,
        "image": f"{pixels}x{pixels}",
        "weights_gib": round(quant.weight_bytes(dit) / 2**30, 2),
        "build_s": round(built, 1),
        "step_s": round(seconds, 4),
        "peak_vram_gib": peak_gib(device),
    }


if __name__ == "__main__":
    main()

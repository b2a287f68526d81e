"""Streaming experts from host memory (the "< 12 GB" preset): one real-width MoE layer, resident
against streamed, over the 8 denoising steps of one 32-token block.

    python -m tests.bench.streaming [--tokens 32] [--steps 8] [--repeats 3] [--cpu-only|--cuda-only]

One MoE layer at the real widths (hidden 2048, 256 experts of 512, top-8, one shared expert) in
int4 with random weights. Each step of the block commits a few more tokens (new inputs) and moves
the rest a little, as denoising does; the router is random, so which experts a step hits is
only a stand-in for the real model's. For each pool size: ms per step (the first, cold step
apart), bytes copied per step, and the share of expert lookups that found their expert already
in a slot. Pool sizes: the whole layer (256 slots), this layer's share of the pool an 8 GB card
gets from its plan (the pool serves every MoE layer), and a small pool that runs in chunks.
On the CPU host and device are the same memory, so a copy is a memcpy, not a PCIe transfer; on
CUDA (when present) the host stacks are pinned and the copies are real. The last line printed is
one JSON object.
"""

import argparse
import json
import platform
import statistics
import time

import torch

from engine import quant, residency, streaming
from engine.backbone import BackboneConfig, MoE
from tests.bench.quant import _fill, moe_layer


def int4_layer(config: BackboneConfig, device: torch.device, dtype: torch.dtype) -> MoE:
    """The real-width MoE layer in int4 from random bf16 weights, packed for `device`."""
    torch.manual_seed(0)
    source = moe_layer(config, "bf16")
    with torch.device("meta"):
        layer = MoE(config)
    quant.quantize_structure(layer, 4)
    layer.to(torch.bfloat16).to_empty(device="cpu")
    layer.gate.float()
    with torch.no_grad():
        layer.gate.load_state_dict(source.gate.state_dict())
        _fill(layer, source)
    layer.to(device)
    return quant.pack_model(layer, dtype).eval().requires_grad_(False)


def block_inputs(config: BackboneConfig, tokens: int, steps: int, device, dtype) -> list:
    """The inputs of the block's steps: each commits tokens/steps new tokens, the rest drift."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, config.hidden_size, generator=generator)
    per_step = max(1, tokens // steps)
    inputs = []
    for step in range(steps):
        inputs.append(x.clone().to(device, dtype))
        x = x + 0.1 * torch.randn(x.shape, generator=generator)
        done = slice(step * per_step, (step + 1) * per_step)
        x[:, done] = torch.randn(x[:, done].shape, generator=generator)
    return inputs


def run_block(layer: MoE, inputs: list, streamed, repeats: int) -> dict:
    """ms and bytes of each step of the block, and the slot hit rate over it: the block runs
    `repeats` times, each from an empty pool, and each step's fastest time counts. `streamed`
    (StreamedExperts, or None: resident) stands in for the layer's experts meanwhile."""
    resident = layer.experts
    layer.experts = streamed or resident
    runs = [_one_block(layer, inputs, streamed.cache if streamed else None) for _ in range(repeats)]
    layer.experts = resident
    times = [min(run[0][i] for run in runs) for i in range(len(inputs))]
    copied = runs[-1][1]
    warm = times[1:] or times
    return {
        "first_step_ms": round(times[0] * 1e3, 2),
        "step_ms": round(statistics.mean(warm) * 1e3, 2),
        "bytes_per_step": copied,
        "mean_mb_per_step": round(statistics.mean(copied) / 1e6, 1),
        "slot_hit_rate": round(streamed.cache.traffic.hit_rate, 3) if streamed else None,
    }


def _one_block(layer: MoE, inputs: list, cache) -> tuple[list, list]:
    if cache is not None:
        cache.clear()
    times, copied = [], []
    for x in inputs:
        before = cache.traffic.bytes if cache else 0
        sync(x.device)
        start = time.perf_counter()
        layer(x)
        sync(x.device)
        times.append(time.perf_counter() - start)
        copied.append((cache.traffic.bytes - before) if cache else 0)
    return times, copied


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pool_sizes(config: BackboneConfig, slot_bytes: int) -> dict[str, int]:
    layers = config.num_hidden_layers - config.first_k_dense_replace
    plan = residency.make_plan(config, None, residency.PRESETS[-1], residency.budget_for(8))
    total = streaming.expert_capacity(plan, slot_bytes, config.num_experts, layers)
    return {
        "whole layer": config.num_experts,
        f"8 GB plan share ({total} slots / {layers} layers)": total // layers,
        "small pool": 64,
    }


def measure(device: torch.device, tokens: int, steps: int, repeats: int) -> dict:
    config = BackboneConfig.real()
    dtype = torch.bfloat16
    layer = int4_layer(config, device, dtype)
    inputs = block_inputs(config, tokens, steps, device, dtype)
    experts = layer.experts
    result = {}
    with torch.inference_mode():
        hits = [int(layer.gate(x.view(-1, config.hidden_size))[1].unique().numel()) for x in inputs]
        layer(inputs[0])  # warm the kernels
        result["experts_hit_per_step"] = hits
        result["resident"] = run_block(layer, inputs, None, repeats)
        print(f"{device}: resident int4 {result['resident']['step_ms']} ms/step", flush=True)
        slot = sum(streaming.nbytes(t[0]) for _, t in streaming.named_tensors(experts))
        result["expert_bytes"] = slot
        for name, capacity in pool_sizes(config, slot).items():
            cache = streaming.ExpertCache(experts, config.num_experts, capacity, device)
            streamed = streaming.StreamedExperts(experts, cache, 0)
            got = run_block(layer, inputs, streamed, repeats)
            got["slots"] = capacity
            result[f"streamed, {name}"] = got
            print(
                f"{device}: streamed, {name}: {got['step_ms']} ms/step (first "
                f"{got['first_step_ms']}), {got['mean_mb_per_step']} MB/step, "
                f"hit rate {got['slot_hit_rate']:.0%}",
                flush=True,
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="blocks run, fastest counts")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--cuda-only", action="store_true")
    options = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "tokens": options.tokens,
        "steps": options.steps,
        "repeats": options.repeats,
    }
    if not options.cuda_only:
        report["cpu"] = measure(torch.device("cpu"), options.tokens, options.steps, options.repeats)
    if torch.cuda.is_available() and not options.cpu_only:
        report["cuda"] = measure(
            torch.device("cuda"), options.tokens, options.steps, options.repeats
        )
        report["cuda"]["device"] = torch.cuda.get_device_name()
    print(json.dumps(report))


if __name__ == "__main__":
    main()

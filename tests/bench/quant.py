"""int8 and int4 on the CPU: one MoE layer's step, the real backbone's bytes, and load times.

    python -m tests.bench.quant [--tokens 32] [--repeats 5] [--folder DIR] [--skip-load]

1. One MoE layer at the real widths (hidden 2048, 256 experts of 512, top-8, one shared expert)
   with random weights, for `--tokens` tokens, in bf16, int8 and int4 (torch's kernels; only the
   experts hit run), and each one's ratio to bf16.
2. The bytes of weights per precision for the real 20-layer backbone (built on the meta device).
3. Loading the real-width 2-layer checkpoint of tests/bench/backbone.py into int4: quantizing as
   it streams in, against loading a saved int4 folder (written once by engine/quantize_cmd.py).
The last line printed is one JSON object.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from engine import quant, residency
from engine.backbone import BackboneConfig, MoE
from tests.bench.backbone import timed  # median of repeats after a warm-up


def moe_layer(config: BackboneConfig, precision: str, source: MoE | None = None) -> MoE:
    """The MoE layer at `precision`; quantized ones take their weights from `source` (bf16)."""
    with torch.device("meta"):
        layer = MoE(config)
    if precision != "bf16":
        quant.quantize_structure(layer, quant.BITS[precision])
    layer.to(torch.bfloat16).to_empty(device="cpu")
    layer.gate.float()
    with torch.no_grad():
        if source is None:
            for name, tensor in layer.state_dict().items():
                tensor.normal_(0, 0.02) if "bias" not in name else tensor.zero_()
            return layer.eval()
        layer.gate.load_state_dict(source.gate.state_dict())
        _fill(layer, source)
    quant.pack_model(layer, torch.bfloat16)
    return layer.eval()


def _fill(layer: MoE, source: MoE) -> None:
    bf16 = dict(source.named_parameters())
    for name, module in layer.named_modules():
        if not isinstance(module, quant.QuantWeight):
            continue
        weight = bf16.get(name) if name in bf16 else bf16[name + ".weight"]
        if module.experts:
            for e in range(module.experts):
                module.fill(quant.quantize(weight[e], module.bits), e)
        else:
            module.fill(quant.quantize(weight, module.bits))


def moe_steps(tokens: int, repeats: int) -> dict:
    config = BackboneConfig.real()
    torch.manual_seed(0)
    x = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16)
    bf16 = moe_layer(config, "bf16")
    result = {}
    with torch.inference_mode():
        reference = bf16(x).float()
        for precision in quant.PRECISIONS:
            start = time.perf_counter()
            layer = bf16 if precision == "bf16" else moe_layer(config, precision, bf16)
            built = time.perf_counter() - start
            seconds = timed(lambda layer=layer: layer(x), repeats)
            error = ((layer(x).float() - reference).norm() / reference.norm()).item()
            result[precision] = {"step_s": round(seconds, 4), "relative_error": round(error, 4)}
            print(
                f"MoE layer, {tokens} tokens, {precision}: {seconds * 1e3:.1f} ms "
                f"(relative error {error:.4f}; quantized in {built:.1f} s)",
                flush=True,
            )
    hit = int(bf16.gate(x.view(-1, config.hidden_size))[1].unique().numel())
    base = result["bf16"]["step_s"]
    for precision in quant.PRECISIONS:
        result[precision]["speedup_vs_bf16"] = round(base / result[precision]["step_s"], 2)
    result["experts_hit"] = hit
    return result


def backbone_bytes() -> dict:
    config = BackboneConfig.real()
    sizes = {}
    for precision in quant.PRECISIONS:
        total, experts = residency.backbone_sizes(config, precision)
        sizes[precision] = {"bytes": total, "gb": round(total / 1e9, 2), "experts_bytes": experts}
        print(f"real backbone weights, {precision}: {total / 1e9:.2f} GB", flush=True)
    return sizes


def load_times(folder: Path | None) -> dict:
    from engine.quantize_cmd import quantize_folder
    from tests.bench.backbone import real_width_checkpoint

    source = real_width_checkpoint(folder)
    saved = Path(tempfile.gettempdir()) / "llada-studio-bench-real-2layer-int4"
    start = time.perf_counter()
    if not (saved / quant.MANIFEST).exists():
        quantize_folder(source, saved, 4)
        print(f"wrote {saved} in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    quant.load_backbone(source, "cpu", torch.bfloat16, "int4")
    on_load = time.perf_counter() - start
    print(f"bf16 checkpoint quantized to int4 as it loads: {on_load:.1f} s", flush=True)
    start = time.perf_counter()
    quant.load_backbone(saved, "cpu", torch.bfloat16, "int4")
    from_folder = time.perf_counter() - start
    print(f"saved int4 folder: {from_folder:.1f} s", flush=True)
    return {
        "quantize_on_load_s": round(on_load, 2),
        "saved_int4_folder_s": round(from_folder, 2),
        "speedup": round(on_load / from_folder, 2),
        "checkpoint": "real widths, 2 layers (1 dense, 1 MoE of 256 experts)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, help="the real-width 2-layer checkpoint")
    parser.add_argument("--skip-load", action="store_true", help="leave out the load times")
    options = parser.parse_args()
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "moe_layer": moe_steps(options.tokens, options.repeats),
        "backbone_weights": backbone_bytes(),
    }
    if not options.skip_load:
        report["load"] = load_times(options.folder)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

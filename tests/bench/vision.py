"""Speed and peak memory of the vision path at the real widths, with random weights, on the CPU.

`python -m tests.bench.vision [--layers N]`: tokenize a 512² image (encoder 40 x 1536, float32) and
decode a 16x16 token grid with the turbo sampler for one step (DiT dim 3840, bfloat16). Each
measurement runs in its own process so the peaks (VmHWM) are separate. The 6.2B DiT is built with
only N of its 30 main layers (default 3) to keep the run short; its time and memory are then scaled
to 30 layers from the measured per-layer figures, and the JSON labels them as scaled.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REAL_LAYERS = 30


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def materialise(model, dtype, seed: int = 0):
    """Turn a meta-device model into real random weights (norm weights 1, the rest N(0, 0.02))."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = model.to(dtype).to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.ndim == 1 and "norm" in name and name.endswith("weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def measure_tokenize() -> dict:
    import numpy as np
    import torch

    from engine.vision import ImageTokenizer, ImageTokenizerConfig

    with torch.device("meta"):
        model = ImageTokenizer(ImageTokenizerConfig())
    model = materialise(model, torch.float32)
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    model.tokenize(image[:64, :64])  # warm-up at a small size
    start = time.perf_counter()
    codes = model.tokenize(image)
    seconds = time.perf_counter() - start
    return {
        "what": "tokenize one 512x512 image (encoder 40 blocks x 1536 + VQ), float32",
        "seconds": round(seconds, 2),
        "grid": list(codes.shape),
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }


def measure_decode(layers: int) -> dict:
    import torch

    from engine.decoder import ImageDecoder, SigVQ, build_dit, dit_config

    dtype = torch.bfloat16
    decoder = ImageDecoder(Path("."), turbo=True, device="cpu", dtype=dtype)
    with torch.device("meta"):
        sigvq = SigVQ()
        dit = build_dit(dit_config({"n_layers": layers}, cap_feat_dim=4096))
        vae = _flux_vae()
    decoder.sigvq = materialise(sigvq, dtype, 1)
    decoder.dit = materialise(dit, dtype, 2)
    decoder.vae = materialise(vae, dtype, 3)
    layer_bytes = sum(p.numel() * p.element_size() for p in decoder.dit.layers[0].parameters())

    clocks = {"layers": 0.0, "dit": 0.0, "vae": 0.0}
    _time_module(decoder.dit, clocks, "dit")
    _time_module(decoder.vae.decoder, clocks, "vae")
    for layer in decoder.dit.layers:
        _time_module(layer, clocks, "layers")

    codes = torch.randint(0, 16384, (16, 16), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    pixels = decoder.decode(codes, seed=0, steps=1)
    seconds = time.perf_counter() - start
    per_layer = clocks["layers"] / layers
    missing = REAL_LAYERS - layers
    peak = peak_rss_gib()
    return {
        "what": "decode 16x16 codes, turbo, 1 step, multiplier 2 (SigVQ + DiT 3840 + VAE), bf16",
        "measured_main_layers": layers,
        "output_shape": list(pixels.shape),
        "seconds_measured": round(seconds, 2),
        "seconds_dit_measured": round(clocks["dit"], 2),
        "seconds_per_main_layer": round(per_layer, 2),
        "seconds_vae": round(clocks["vae"], 2),
        "seconds_scaled_to_30_layers": round(seconds + missing * per_layer, 2),
        "peak_rss_gib_measured": round(peak, 2),
        "peak_rss_gib_scaled_to_30_layers": round(peak + missing * layer_bytes / 2**30, 2),
    }


def _flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _time_module(module, clocks: dict, key: str) -> None:
    started: list[float] = []
    module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def stop(*_):
        clocks[key] += time.perf_counter() - started.pop()

    module.register_forward_hook(stop)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_child(args: list[str]) -> dict:
    command = [sys.executable, "-m", "tests.bench.vision", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3, help="DiT main layers to build (of 30)")
    parser.add_argument("--measure", choices=["tokenize", "decode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "tokenize":
        print(json.dumps(measure_tokenize()))
        return
    if args.measure == "decode":
        print(json.dumps(measure_decode(args.layers)))
        return
    report = {"machine": machine(), "device": "cpu"}
    report["tokenize_512"] = run_child(["--measure", "tokenize"])
    print(json.dumps(report["tokenize_512"]), flush=True)
    report["decode_16x16_turbo_1_step"] = run_child(
        ["--measure", "decode", "--layers", str(args.layers)]
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

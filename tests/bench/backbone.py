"""One denoising step with and without the KV cache, at the real widths, on the CPU.

    python -m tests.bench.backbone [--prompt 1024] [--repeats 3] [--folder DIR]

A random checkpoint with the real backbone widths (hidden 2048, 256 experts of 512, top-8, the
real vocabulary) but 2 layers is written once (about 3 GB) and loaded through load_backbone, in
bf16. The step is the one the sampler runs for the first generated block after a prompt of
`--prompt` tokens: uncached it re-runs the whole prefix, cached it runs the block alone.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.backbone import KVCache, load_backbone
from engine.sampler import Layout
from engine.tiny import write_tiny_checkpoint

BLOCK = 32


def real_width_checkpoint(folder: Path | None) -> Path:
    folder = folder or Path(tempfile.gettempdir()) / "llada-studio-bench-real-2layer"
    if not (folder / "model.safetensors.index.json").exists():
        print(f"writing a real-width 2-layer checkpoint to {folder} ...", flush=True)
        write_tiny_checkpoint(folder, seed=0, widths="real")
    return folder


def load_peak_gib(folder: Path) -> tuple[float, float]:
    """Peak resident memory of a fresh process that only loads the backbone, and weight bytes."""
    code = (
        "import resource, torch; from engine.backbone import load_backbone;"
        f"m = load_backbone({str(folder)!r}, 'cpu', torch.bfloat16);"
        "w = sum(t.numel() * t.element_size() for t in m.state_dict().values());"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, w / 2**30)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, weights = map(float, out.stdout.split())
    return peak, weights


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = real_width_checkpoint(args.folder)
    peak_gib, weights_gib = load_peak_gib(folder)
    start = time.perf_counter()
    model = load_backbone(folder, "cpu", torch.bfloat16)
    load_s = time.perf_counter() - start
    c = model.config
    prompt = torch.randint(0, c.image_token_offset, (args.prompt,)).tolist()
    layout = Layout([prompt], torch.full((BLOCK,), 1), mask_id=1, B=BLOCK)
    P, hi = layout.P, layout.blocks * BLOCK
    lo = hi - BLOCK
    cache = KVCache(c, 1, hi, "cpu", torch.bfloat16)
    with torch.inference_mode():
        model(layout.ids[:, :lo], layout.positions[:, :lo], layout.mask(0, lo, lo), cache,
              store=True, last=0)  # fmt: skip

        def uncached():
            model(layout.ids[:, :hi], layout.positions[:, :hi], layout.mask(0, hi, hi), last=BLOCK)

        def cached():
            model(layout.ids[:, lo:hi], layout.positions[:, lo:hi], layout.mask(lo, hi, hi), cache)

        t_uncached = timed(uncached, args.repeats)
        t_cached = timed(cached, args.repeats)
    result = {
        "bench": "backbone denoising step",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "dtype": "bfloat16",
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "experts": f"{c.num_experts} x {c.moe_intermediate_size}, top-{c.num_experts_per_tok}",
        "prompt_tokens": P,
        "block": BLOCK,
        "load_s": round(load_s, 2),
        "weights_gib": round(weights_gib, 2),
        "load_peak_rss_gib": round(peak_gib, 2),
        "step_uncached_s": round(t_uncached, 4),
        "step_cached_s": round(t_cached, 4),
        "speedup": round(t_uncached / t_cached, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

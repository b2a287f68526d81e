"""One denoising step in three modes, at the real widths, on the CPU.

    python -m tests.bench.backbone [--prompt 1024] [--repeats 3] [--folder DIR]

A random checkpoint with the real backbone widths (hidden 2048, 256 experts of 512, top-8, the
real vocabulary) but 2 layers is written once (about 3 GB) and loaded through load_backbone, in
bf16. The step is the one the sampler runs for the first generated block after a prompt of
`--prompt` tokens, in the rows of tests.bench.tasks: the official baseline re-runs the whole
prefix and computes the full vocabulary's logits; the cache alone runs the block alone; everything
on also computes only the image vocabulary's logits. Forwards per block of 8 steps go beside
(the cache adds none: a finished block is stored by the next block's first pass, which holds it
too, `first_step_s`). `step_rows()` runs the same on any device (tests/bench/gpu.py calls it).
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


def step_rows(model, prompt_tokens: int = 1024, repeats: int = 3, steps: int = 8) -> dict:
    """Seconds per denoising step and forwards per block in the three modes, on the model's
    device: {mode: {"step_s", "first_step_s", "forwards_per_block", "speedup"}}."""
    c = model.config
    device = next(model.parameters()).device
    dtype = model.model.word_embeddings.weight.dtype
    prompt = torch.randint(0, c.image_token_offset, (prompt_tokens,)).tolist()
    layout = Layout([prompt], torch.full((BLOCK,), 1), mask_id=1, B=BLOCK).to(device)
    hi = layout.blocks * BLOCK
    lo = hi - BLOCK
    before = lo - BLOCK  # the first step of a block also stores the block before it
    image_vocab = (c.image_token_offset, c.vocab_size)
    cache = KVCache(c, 1, hi, device, dtype)
    with torch.inference_mode():
        model(layout.ids[:, :before], layout.positions[:, :before],
              layout.mask(0, before, before), cache, store=True, last=0)  # fmt: skip
        two = (layout.ids[:, before:hi], layout.positions[:, before:hi])
        two += (layout.mask(before, hi, hi),)
        block = (layout.ids[:, lo:hi], layout.positions[:, lo:hi], layout.mask(lo, hi, hi))
        prefix = (layout.ids[:, :hi], layout.positions[:, :hi], layout.mask(0, hi, hi))
        first = {
            "official baseline": lambda: model(*prefix, last=BLOCK),
            "cache alone": lambda: model(*two, cache, last=BLOCK),
            "everything on": lambda: model(*two, cache, last=BLOCK, vocab=image_vocab),
        }
        first_s = {mode: timed(_synced(fn, device), repeats) for mode, fn in first.items()}
        model(*two, cache, store=True, last=0)  # the block before is now cached
        cache.length = lo
        runs = {
            "official baseline": first["official baseline"],
            "cache alone": lambda: model(*block, cache),
            "everything on": lambda: model(*block, cache, vocab=image_vocab),
        }
        seconds = {mode: timed(_synced(fn, device), repeats) for mode, fn in runs.items()}
    base = seconds["official baseline"]
    return {
        mode: {
            "step_s": round(t, 4),
            "first_step_s": round(first_s[mode], 4),
            "forwards_per_block": steps,
            "speedup": round(base / t, 2),
        }
        for mode, t in seconds.items()
    }


def _synced(fn, device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


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
    rows = step_rows(model, args.prompt, args.repeats)
    for mode, row in rows.items():
        print(f"{mode:18} {row['step_s']:8.4f} s/step (first of a block {row['first_step_s']:.4f})"
              f"  {row['forwards_per_block']} forwards per block  x{row['speedup']}")  # fmt: skip
    result = {
        "bench": "backbone denoising step: official baseline, cache alone, everything on",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "dtype": "bfloat16",
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "experts": f"{c.num_experts} x {c.moe_intermediate_size}, top-{c.num_experts_per_tok}",
        "prompt_tokens": args.prompt,
        "block": BLOCK,
        "load_s": round(load_s, 2),
        "weights_gib": round(weights_gib, 2),
        "load_peak_rss_gib": round(peak_gib, 2),
        **rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

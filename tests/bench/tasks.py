"""Image tokens and a text answer in three modes, with forward counts beside the times.

    python -m tests.bench.tasks [--grid 16] [--answer 256] [--head-scale 12] [--folder DIR]

Rows (every speed-up is measured against the first):
- official baseline: the official loop, threshold 0.95, the whole prefix every step, the full
  vocabulary's logits (Defaults().official_baseline() without the image-only vocabulary);
- cache alone: the same with the KV cache of completed blocks;
- everything on: the cache, threshold 0.95 and, for image tokens, only the image vocabulary's
  logits (the pipeline's default). For a text answer this equals the cache alone.
Uses the real-width 2-layer random checkpoint of tests.bench.backbone, in bf16 on the CPU. Image
tokens: a text-to-image prompt with CFG (2 rows batched), `--grid`² tokens, 8 steps per block.
Text: a `--answer`-token answer, 32 steps per block. A random model is never confident, so its
head is scaled by `--head-scale`, which makes its choices confident the way a trained model's
mostly are and lets threshold acceptance act; the counts are about the sampler's rule, not about
quality. `rows()` runs the same on any device (tests/bench/gpu.py calls it at real widths).
The last line printed is one JSON object.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from engine import text
from engine.backbone import Backbone, load_backbone
from engine.sampler import cfg, denoise
from engine.text import TextTokenizer
from tests.bench.backbone import real_width_checkpoint

MODES = {  # name: (threshold, use_cache, image-only vocabulary)
    "official baseline": (0.95, False, False),
    "cache alone": (0.95, True, False),
    "everything on": (0.95, True, True),
}


def run_mode(model: Backbone, prompts, init, *, mode: str, steps: int, guidance, mask_id: int):
    """One denoising run; returns its seconds, forward passes and denoising steps. With guidance
    it makes image tokens (the image vocabulary applies), without it text."""
    threshold, use_cache, image_vocab = MODES[mode]
    image_vocab = image_vocab and guidance is not None
    c = model.config
    forwards, steps_done = [], []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    device = next(model.parameters()).device
    try:
        _sync(device)
        start = time.perf_counter()
        denoise(
            model,
            prompts,
            init,
            mask_id=mask_id,
            steps=steps,
            guidance=guidance,
            allowed_vocab=(c.image_token_offset, c.vocab_size) if image_vocab else None,
            threshold=threshold,
            use_cache=use_cache,
            on_step=lambda report: steps_done.append(1),
        )
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return {"seconds": round(seconds, 3), "forwards": len(forwards), "steps": len(steps_done)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rows(
    model: Backbone, tokenizer: TextTokenizer, *, grid: int = 16, answer: int = 256, repeats=1
) -> dict:
    """The three rows for image tokens (CFG, 8 steps per block) and for a text answer (32 steps
    per block, no early stop), as {"image": {mode: {...}}, "text": {mode: {...}}}; each time is
    the best of `repeats` runs (the counts are the same every run)."""
    tok, mask = tokenizer, tokenizer.mask_id
    cond = tok.encode(text.text_to_image("a red fox sitting in the snow at dawn", grid, grid))
    uncond = tok.encode(text.text_to_image_uncond(grid, grid))
    question = tok.encode(text.understanding([("user", "Describe a red fox in the snow.", [])]))
    image_init = torch.full((grid * grid,), mask)
    text_init = torch.full((answer,), mask)
    out: dict = {"image": {}, "text": {}}
    with torch.inference_mode():
        run_mode(model, [question], text_init[:32], mode="cache alone", steps=1, guidance=None,
                 mask_id=mask)  # fmt: skip  # warm-up: the first call pays for lazy set-up
        for mode in MODES:
            image = dict(mode=mode, steps=8, guidance=cfg(2.0), mask_id=mask)
            talk = dict(mode=mode, steps=32, guidance=None, mask_id=mask)
            out["image"][mode] = best(repeats, model, [cond, uncond], image_init, image)
            out["text"][mode] = best(repeats, model, [question], text_init, talk)
    for task in out.values():
        base = task["official baseline"]["seconds"]
        for row in task.values():
            row["speedup"] = round(base / row["seconds"], 2)
    return out


def best(repeats: int, model, prompts, init, options: dict) -> dict:
    runs = [run_mode(model, prompts, init, **options) for _ in range(repeats)]
    return min(runs, key=lambda row: row["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--answer", type=int, default=256)
    parser.add_argument("--head-scale", type=float, default=12.0)
    parser.add_argument("--folder", type=Path, default=None)
    options = parser.parse_args()
    folder = real_width_checkpoint(options.folder)
    model = load_backbone(folder, "cpu", torch.bfloat16)
    c = model.config
    tok = TextTokenizer(folder, c.image_token_offset, c.pad_token_id)
    with torch.no_grad():
        model.lm_head.weight.mul_(options.head_scale)
    result = rows(model, tok, grid=options.grid, answer=options.answer)
    for task, table in result.items():
        for mode, row in table.items():
            print(f"{task:6} {mode:18} {row['seconds']:8.2f} s  {row['forwards']:4d} forwards  "
                  f"{row['steps']:4d} steps  x{row['speedup']}")  # fmt: skip
    summary = {
        "bench": "tasks: official baseline, cache alone, everything on",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "dtype": "bfloat16",
        "layers": c.num_hidden_layers,
        "image_grid": [options.grid, options.grid],
        "image_cfg_rows": 2,
        "answer_tokens": options.answer,
        "head_scale": options.head_scale,
        **result,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

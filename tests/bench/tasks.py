"""Image-token blocks and text answers with acceleration on and off, at the real widths.

    python -m tests.bench.tasks [--grid 16] [--head-scale 12] [--folder DIR]

Uses the real-width 2-layer random checkpoint of tests.bench.backbone, loaded in bf16 on the CPU.
- Image tokens: a text-to-image prompt with CFG (2 rows batched), `--grid`² tokens, 8 steps per
  block. On: KV cache of completed blocks + threshold acceptance (the pipeline's default);
  off: the plain official baseline (whole prefix every step, 4 tokens per step).
- Text: the forward passes a 256-token answer needs (32 steps per block) with threshold
  acceptance on and off. A random model is never confident, so for this count the lm_head is
  scaled by `--head-scale`, which makes the random model's choices confident the way a trained
  model's mostly are; the figure is about the sampler's commit rule, not model quality.
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
from engine.backbone import load_backbone
from engine.sampler import cfg, denoise, generate_text
from engine.text import TextTokenizer
from tests.bench.backbone import real_width_checkpoint


def image_run(model, tok, grid: int, accelerate: bool) -> dict:
    c = model.config
    cond = tok.encode(text.text_to_image("a red fox sitting in the snow at dawn", grid, grid))
    uncond = tok.encode(text.text_to_image_uncond(grid, grid))
    steps = []
    start = time.perf_counter()
    denoise(
        model,
        [cond, uncond],
        torch.full((grid * grid,), tok.mask_id),
        mask_id=tok.mask_id,
        steps=8,
        guidance=cfg(2.0),
        allowed_vocab=(c.image_token_offset, c.vocab_size),
        threshold=0.95 if accelerate else None,
        use_cache=accelerate,
        on_step=lambda r: steps.append(r.block),
    )
    seconds = time.perf_counter() - start
    blocks = len(set(steps))
    return {
        "blocks": blocks,
        "steps_per_block": round(len(steps) / blocks, 2),
        "seconds_per_block": round(seconds / blocks, 3),
    }


def text_forwards(model, tok, threshold: float | None) -> int:
    prompt = tok.encode(text.understanding([("user", "Describe a red fox in the snow.", [])]))
    count = []
    generate_text(
        model,
        prompt,
        mask_id=tok.mask_id,
        eos_id=-1,  # never stop early: the whole 256-token budget is generated
        gen_length=256,
        steps=32,
        threshold=threshold,
        on_step=lambda r: count.append(1),
    )
    return len(count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--head-scale", type=float, default=12.0)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = real_width_checkpoint(args.folder)
    model = load_backbone(folder, "cpu", torch.bfloat16)
    c = model.config
    tok = TextTokenizer(folder, c.image_token_offset, c.pad_token_id)
    with torch.inference_mode():
        on = image_run(model, tok, args.grid, accelerate=True)
        off = image_run(model, tok, args.grid, accelerate=False)
        model.lm_head.weight.mul_(args.head_scale)
        forwards_on = text_forwards(model, tok, 0.95)
        forwards_off = text_forwards(model, tok, None)
    result = {
        "bench": "tasks: acceleration on vs off",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "dtype": "bfloat16",
        "layers": c.num_hidden_layers,
        "image_grid": [args.grid, args.grid],
        "image_cfg_rows": 2,
        "image_on": on,
        "image_off": off,
        "image_block_speedup": round(off["seconds_per_block"] / on["seconds_per_block"], 2),
        "answer_tokens": 256,
        "answer_forwards_threshold_on": forwards_on,
        "answer_forwards_threshold_off": forwards_off,
        "head_scale_for_answer": args.head_scale,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""What the live token preview costs beside the denoising step it rides on, at the real widths.

    python -m tests.bench.token_preview [--grid 32] [--folder DIR] [--device cpu]

One image block of a `--grid`² text-to-image run (2 CFG rows, 8 steps, cache and threshold on)
through the real-width 2-layer random checkpoint of tests.bench.backbone, twice in one run: without
a preview, and with the pipeline's own preview step (tokens to the host, palette lookup, upscaling,
and the Progress frame's encoding). Also the one-off palette build from a real-size SigVQ table
(16384 x 4096). The 2-layer model's step is far shorter than the real 20-layer one's, so the share
printed here is an upper bound for the same device. The last line printed is one JSON object.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engine import text
from engine.backbone import load_backbone
from engine.protocol import Progress, encode
from engine.sampler import cfg, denoise
from engine.text import TextTokenizer
from engine.token_preview import TokenPalette
from tests.bench.backbone import real_width_checkpoint


def step_times(model, tok, grid: int, on_picture) -> list[float]:
    """Seconds between consecutive steps of the first block; `on_picture` runs inside each."""
    c = model.config
    cond = tok.encode(text.text_to_image("a red fox sitting in the snow at dawn", grid, grid))
    uncond = tok.encode(text.text_to_image_uncond(grid, grid))
    stamps = [time.perf_counter()]

    def on_step(report) -> None:
        if report.block == 0:
            if on_picture:
                on_picture(report.tokens)
            stamps.append(time.perf_counter())

    denoise(
        model,
        [cond, uncond],
        torch.full((grid * grid,), tok.mask_id)[:32],  # one block is enough to time a step
        mask_id=tok.mask_id,
        steps=8,
        guidance=cfg(2.0),
        allowed_vocab=(c.image_token_offset, c.vocab_size),
        threshold=0.95,
        use_cache=True,
        on_step=on_step,
    )
    return list(np.diff(stamps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = real_width_checkpoint(args.folder)
    dtype = torch.bfloat16
    model = load_backbone(folder, args.device, dtype)
    tok = TextTokenizer(folder, model.config.image_token_offset, model.config.pad_token_id)

    start = time.perf_counter()
    palette = TokenPalette.from_table(torch.randn(16384, 4096, dtype=dtype))
    build_s = time.perf_counter() - start

    paint_s: list[float] = []
    offset = model.config.image_token_offset

    def picture(tokens) -> None:
        t0 = time.perf_counter()
        grid = torch.full((args.grid * args.grid,), -1, dtype=torch.long)
        grid[: len(tokens)] = tokens.cpu() - offset  # the rest of the grid is still masked
        frame = encode(
            Progress("job", "denoise tokens", 1, 8, palette.paint(grid.view(args.grid, -1).numpy()))
        )
        paint_s.append(time.perf_counter() - t0)
        assert sum(len(part) for part in frame) > 0

    step_times(model, tok, args.grid, None)  # warm-up
    plain = step_times(model, tok, args.grid, None)
    with_preview = step_times(model, tok, args.grid, picture)
    step = float(np.median(plain))
    result = {
        "machine": f"{platform.machine()}, {args.device}",
        "grid": args.grid,
        "step_ms": round(step * 1000, 2),
        "step_with_preview_ms": round(float(np.median(with_preview)) * 1000, 2),
        "preview_ms_per_step": round(float(np.median(paint_s)) * 1000, 3),
        "preview_share_of_step": round(float(np.median(paint_s)) / step, 4),
        "palette_build_s": round(build_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Batch throughput on the tiny checkpoint, and the share of wall time spent outside the model.

    python -m tests.bench.batch [--items 16] [--size 256] [--format png] [--fast]

Runs a `--items`-item text-to-image batch (prompts x seeds) through engine.batch.Runner, the code
`python main.py batch` runs, into a temporary folder, after loading the model once (not timed).
"Outside the model" is the batch's wall time less the time inside the Pipeline calls: naming,
manifest, waiting on the writer thread, progress. Encoding and writing (PNG/JPEG/WebP with the
metadata, fsync, rename) run on the writer thread and overlap the next item's compute; their own
total is printed too. `--fast` uses 1 denoising and 1 decoder step (a harsher test of the
overhead's share). The last line printed is one JSON object.
"""

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from engine import batch
from engine.pipeline import Pipeline
from engine.tiny import write_tiny_checkpoint

PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a paper boat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="token-side size in px (256..1024)")
    parser.add_argument("--format", default="png", choices=("png", "jpeg", "webp"))
    parser.add_argument("--fast", action="store_true", help="1 denoising and 1 decoder step")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = write_tiny_checkpoint(Path(folder) / "LLaDA2.0-Uni", seed=0)
        started = time.perf_counter()
        pipeline = Pipeline.load(root, device="cpu")
        load_s = time.perf_counter() - started
        seeds = (options.items + len(PROMPTS) - 1) // len(PROMPTS)
        spec = {
            "task": "generate",
            "model": str(root),
            "out": str(Path(folder) / "out"),
            "prompts": PROMPTS,
            "seeds": f"1-{seeds}",
            "size": f"{options.size}x{options.size}",
            "format": options.format,
            "options": {"steps": 1, "decoder_steps": 1} if options.fast else {},
        }
        job = batch.build_job(spec)
        job.items = job.items[: options.items]
        pipeline.generate(
            PROMPTS[0], width=options.size, height=options.size, seed=0, **spec["options"]
        )  # fmt: skip  (warm-up: lazy parts load here)
        progress = batch.Progress(len(job.items), stream=io.StringIO())
        report = batch.Runner(job, pipeline, progress).run()
        assert report.exit_status == 0, report.summary()

    outside = (report.wall_s - report.model_s) / report.wall_s
    per_minute = len(report.done) / report.wall_s * 60
    print(f"{len(report.done)} items in {report.wall_s:.1f} s ({per_minute:.1f} images/min)")
    print(f"inside the model {report.model_s:.1f} s; outside {outside:.1%} of wall time")
    print(f"encoding and writing on the writer thread: {report.write_s:.2f} s (overlapped)")
    summary = {
        "bench": "batch",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": "cpu",
        "items": len(report.done),
        "size": options.size,
        "format": options.format,
        "fast": options.fast,
        "load_s": round(load_s, 2),
        "wall_s": round(report.wall_s, 2),
        "model_s": round(report.model_s, 2),
        "write_s": round(report.write_s, 2),
        "images_per_minute": round(per_minute, 2),
        "outside_model_share": round(outside, 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

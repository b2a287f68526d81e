"""The `quantize` and `estimate` commands and the `--precision` / `--vram` flags of every command.

    python main.py quantize --model DIR --bits 4|8 [--decoder-bits 8|16] --out DIR
    python main.py estimate --model DIR --vram 16 [--precision int4] [--size 1024x1024]

Torch-free at import (the CLI's parser is built without torch); the handlers import it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine import args
from engine.errors import BadInput, Cancelled, StudioError

PRECISIONS = ("bf16", "int8", "int4")

args.register(
    args.Rule(
        "precision",
        "choice",
        "The precision",
        choices=PRECISIONS,
        note="the backbone's weights; default: what the memory plan picks",
    ),
    args.Rule(
        "vram",
        "float",
        "The VRAM",
        low=1.0,
        high=4096.0,
        unit="GiB",
        words=(("auto", None),),
        note="or 'auto': the card's free memory",
    ),
    args.Rule("bits", "int", "The bits", low=4, high=8, step=4, note="4 or 8"),
    args.Rule("decoder_bits", "int", "The decoder bits", low=8, high=16, step=8, note="8 or 16"),
)


def add_load_flags(parser) -> None:
    """--precision and --vram, for every command that loads the model."""
    args.add_flag(parser, "precision", help="bf16, int8 or int4 (default: the memory plan's)")
    args.add_flag(parser, "vram", help="GiB the model may use on the GPU, or auto (default)")


def add_command(sub) -> None:
    """The `quantize` and `estimate` subcommands on the CLI's subparsers."""
    quantize = sub.add_parser("quantize", help="write a quantized copy of the model folder")
    args.add_flag(quantize, "model", required=True, help="the bf16 (or FP8) model folder")
    args.add_flag(quantize, "bits", required=True, help="4 or 8: the backbone's weights")
    args.add_flag(
        quantize,
        "decoder_bits",
        default=16,
        help="8: store the decoder transformers in int8 too; 16 (default): link them as they are",
    )
    quantize.add_argument("--out", type=Path, required=True, help="the new folder to write")
    quantize.add_argument(
        "--device", default="cpu", help="where to quantize: cpu (default) or cuda, faster"
    )
    quantize.set_defaults(handler=run_quantize)

    estimate = sub.add_parser("estimate", help="print the memory plan without loading anything")
    args.add_flag(estimate, "model", required=True, help="the model folder")
    add_load_flags(estimate)
    estimate.add_argument("--size", default="1024x1024", help="image size, WxH")
    estimate.add_argument("--rows", type=int, default=3, help="CFG rows (editing: 3)")
    estimate.add_argument("--device", default="auto", help="the GPU whose memory to use")
    estimate.set_defaults(handler=run_estimate)


def _handle(run, options, out) -> int:
    out = out or sys.stdout
    try:
        run(options, out)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("cancelled; nothing was left behind", file=sys.stderr)
        return 130
    return 0


def run_quantize(options, out=None) -> int:
    return _handle(_quantize, options, out)


def _quantize(options, out) -> None:
    from engine.cli import ProgressBar
    from engine.quantize_cmd import quantize_folder

    bar = ProgressBar(sys.stderr)
    try:
        folder = quantize_folder(
            options.model,
            options.out,
            options.bits,
            decoder_bits=options.decoder_bits,
            device=options.device,
            on_progress=lambda done, total: bar("quantize", done, total),
        )
    finally:
        bar.close()
    out.write(f"{folder}\n")


def run_estimate(options, out=None) -> int:
    return _handle(_estimate, options, out)


def _estimate(options, out) -> None:
    plan = plan_for(
        options.model, options.vram, options.precision, options.device, options.size, options.rows
    )
    out.write(plan.text() + "\n")


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise BadInput(f"The size must look like 1024x768, not {text!r}.") from None
    return width, height


def plan_for(model, vram, precision, device="auto", size="1024x1024", rows=3):
    """The residency plan for a model folder: by the given VRAM, or the device's free memory."""
    from engine import quant, residency
    from engine.checkpoint import find_model_folder, read_backbone_config

    root = find_model_folder(model).root
    config = read_backbone_config(root)
    width, height = parse_size(size) if isinstance(size, str) else size
    budget = residency.budget_for(vram) if vram else residency.device_budget(_device(device))
    if budget is None:
        raise BadInput("There is no CUDA GPU here to measure; give its size with --vram N (GiB).")
    stored = quant.folder_precision(root)
    fixed = precision or (stored if stored in ("int8", "int4") else None)
    sizes = {"width": width, "height": height, "rows": rows}
    if fixed is None:
        return residency.choose(config, root, budget, **sizes)
    plans = [
        residency.make_plan(config, root, preset, budget, backbone=fixed, **sizes)
        for preset in residency.PRESETS
    ]
    return next((plan for plan in plans if plan.fits), plans[-1])


def _device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)

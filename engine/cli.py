"""The headless command line: `python main.py generate | edit | ask`, on engine.pipeline directly.

Progress goes to stderr as a bar, answers stream to stdout, PNG outputs carry their metadata in
text chunks, and a bad input ends the command with one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from engine.errors import BadInput, Cancelled, StudioError

COMMANDS = ("generate", "edit", "ask", "download", "doctor")


class ProgressBar:
    """One line on stderr per stage, redrawn in place: `decode  [#####.....]  4/8`."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.stage: str | None = None
        self.last = 0.0

    def __call__(self, stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        if stage == self.stage and step < total and now - self.last < 0.1:
            return
        if stage != self.stage and self.stage is not None:
            self.stream.write("\n")
        self.stage, self.last = stage, now
        filled = int(self.width * step / max(total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{stage:<15} [{bar}] {step}/{total}")
        self.stream.flush()

    def close(self) -> None:
        if self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.stage = None


def parse_size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x768, not {value!r}") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="LLaDA Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", type=Path, required=True, help="the LLaDA2.0-Uni folder")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    common.add_argument("--steps", type=int, default=None, help="denoising steps per block")

    gen = sub.add_parser("generate", parents=[common], help="make an image from text")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--size", type=parse_size, default=(1024, 1024), help="WxH, e.g. 1024x768")
    gen.add_argument("--thinking", action="store_true", help="let the model reason first")
    gen.add_argument("--cfg", type=float, default=None, help="guidance scale (official 2.0)")
    gen.add_argument("--out", type=Path, required=True)

    edit = sub.add_parser("edit", parents=[common], help="edit an image by instruction")
    edit.add_argument("--image", type=Path, required=True)
    edit.add_argument("--mask", type=Path, help="PNG; white or opaque = repaint")
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--cfg-text", type=float, default=None)
    edit.add_argument("--cfg-image", type=float, default=None)
    edit.add_argument("--out", type=Path, required=True)

    ask = sub.add_parser("ask", parents=[common], help="ask a question about images")
    ask.add_argument("--image", type=Path, action="append", default=[], help="repeatable")
    ask.add_argument("--mask", type=Path, help="ask about the masked region of the first image")
    ask.add_argument("--question", required=True)
    ask.add_argument("--max-tokens", type=int, default=None, help="answer length limit")

    from engine import doctor, download  # torch-free; each brings its own handler

    download.add_command(sub)
    doctor.add_command(sub)
    return parser


def read_mask(path: Path) -> np.ndarray:
    """A mask file as [H, W] or [H, W, 4] uint8 (alpha kept for masking.validate_mask)."""
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return np.asarray(image.convert("RGBA" if has_alpha else "L"))
    except FileNotFoundError:
        raise BadInput(f"There is no mask file {path}.") from None
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        raise BadInput(f"The mask {path} is not a readable image.") from None


def save_png(path: Path, image: np.ndarray, metadata: dict[str, str], thinking: str | None):
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    if thinking:
        info.add_itxt("thinking", thinking)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else None
    Image.fromarray(image).save(path, format=fmt, pnginfo=info if fmt else None)


def check_out(path: Path) -> None:
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise BadInput(f"The output {path} must end in .png, .jpg or .webp.")
    if path.parent.exists() and not path.parent.is_dir():
        raise BadInput(f"The output folder {path.parent} is a file.")


def check_request(args: argparse.Namespace) -> None:
    """What can be checked before the (slow) model load."""
    from engine.pipeline import NO_INSTRUCTION, NO_PROMPT, check_size, need_text

    if args.command in ("generate", "edit"):
        check_out(args.out)
    if args.command == "generate":
        need_text(args.prompt, NO_PROMPT)
        check_size(*args.size)
    if args.command == "edit":
        need_text(args.instruction, NO_INSTRUCTION)


def run(args: argparse.Namespace, out=sys.stdout) -> None:
    from engine import vision
    from engine.pipeline import Pipeline, Turn

    bar = ProgressBar()
    try:
        check_request(args)
        if args.command == "edit":
            image = vision.read_image(args.image)
            mask = read_mask(args.mask) if args.mask else None
        if args.command == "ask":
            images = tuple(vision.read_image(p) for p in args.image)
            mask = read_mask(args.mask) if args.mask else None
        pipeline = Pipeline.load(args.model, device=args.device, on_progress=bar)
        if args.command == "generate":
            width, height = args.size
            result = pipeline.generate(
                args.prompt,
                width=width,
                height=height,
                seed=args.seed,
                thinking=args.thinking,
                steps=args.steps,
                cfg_scale=args.cfg,
                on_progress=bar,
            )
        elif args.command == "edit":
            result = pipeline.edit(
                image,
                args.instruction,
                mask=mask,
                seed=args.seed,
                steps=args.steps,
                cfg_text_scale=args.cfg_text,
                cfg_image_scale=args.cfg_image,
                on_progress=bar,
            )
        else:
            bar.close()
            pipeline.understand(
                [Turn("user", args.question, images)],
                seed=args.seed,
                mask=mask,
                steps=args.steps,
                gen_length=args.max_tokens,
                on_text=lambda delta: (out.write(delta), out.flush()),
            )
            out.write("\n")
            return
    finally:
        bar.close()
    save_png(args.out, result.image, result.metadata, result.thinking)
    if result.thinking:
        out.write(result.thinking + "\n")
    out.write(f"{args.out}\n")


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except StudioError as error:  # a value an argument rule refused (engine/args.py)
        print(f"error: {error}", file=sys.stderr)
        return 2
    if hasattr(args, "handler"):  # download and doctor: their own exit statuses
        return args.handler(args)
    try:
        run(args)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("cancelled", file=sys.stderr)
        return 130
    return 0

"""The headless command line: `python main.py generate | edit | ask`, on engine.pipeline directly.

Progress goes to stderr as a bar, answers stream to stdout, PNG outputs carry their metadata in
text chunks, and a bad input ends the command with one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import engine.args as rules
from engine import imagefile
from engine.errors import BadInput, Cancelled, StudioError


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose every refusal is one line, `error: <sentence>`, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self._sentence(message)}\n")

    def _sentence(self, message: str) -> str:
        command = self.prog.removeprefix("main.py").strip()
        if found := re.fullmatch(r"the following arguments are required: (.*)", message):
            *first, last = found[1].split(", ")
            needed = f"{', '.join(first)} and {last}" if first else last
            return f"{self.prog} needs {needed}; see python {self.prog} --help."
        if found := re.fullmatch(r"argument command: invalid choice: '(.*?)' \(.*", message):
            word, commands = found[1], command_names()
            if Path(word).suffix.lower() in rules.IMAGE_EXTENSIONS:
                return f"There is no image {word}; check the path (python main.py PHOTO.png)."
            return (
                f"There is no command {word!r}.{rules.suggest(word, commands)} "
                f"The commands are {', '.join(commands)}; see python main.py --help."
            )
        if found := re.fullmatch(r"unrecognized arguments: (\S+).*", message):
            word = found[1]
            hint = rules.suggest(word, option_names()) if word.startswith("-") else ""
            where = f" for {command}" if command else ""
            return f"{word!r} is not an option{where}.{hint} See python {self.prog} --help."
        if found := re.fullmatch(r"argument (\S+?)(/\S+)?: expected one argument", message):
            return f"{found[1]} needs a value."
        return message[:1].upper() + message[1:].rstrip(".") + "."


def command_names() -> list[str]:
    """Every subcommand the parser has, including those other modules add."""
    return list(_subcommands(build_parser()))


def option_names() -> set[str]:
    return {
        option
        for parser in _subcommands(build_parser()).values()
        for action in parser._actions
        for option in action.option_strings
    }


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse_size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise BadInput(
            f"The size must look like 1024x768 (width x height), not {value!r}."
        ) from None
    return rules.check("width", width), rules.check("height", height)


def parse_device(value: str) -> str:
    return rules.check_device(value)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --seed and the denoising loop's flags, each checked by engine/args.py;
    for every command that runs the model (others add theirs: batch, quantize, ...)."""
    rules.add_flag(parser, "model", required=True, help="the LLaDA2.0-Uni folder")
    parser.add_argument(
        "--device", type=parse_device, default="auto", help="auto, cpu, cuda or cuda:N"
    )
    from engine.quant_commands import add_load_flags  # torch-free

    add_load_flags(parser)  # --precision, --vram
    rules.add_flag(parser, "seed", default=0, help="one seed drives every random draw (default 0)")
    rules.add_flag(parser, "steps", help="denoising steps per block (official: 8 images, 32 text)")
    rules.add_flag(parser, "block_length", help="tokens per block (official 32)")
    rules.add_flag(parser, "threshold", help="commit every token above it (official 0.95; off)")
    rules.add_flag(parser, "use_cache", help="KV cache of completed blocks (exact; default on)")
    rules.add_flag(parser, "temperature", help="0 takes the most likely token (official 0)")
    rules.add_flag(parser, "top_k", help="draw among the k likeliest tokens (default: all)")
    rules.add_flag(parser, "top_p", help="draw within this probability mass (default: all)")


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of commands that make an image: CFG rescale and the decoder's settings."""
    rules.add_flag(parser, "cfg_rescale", help="0..1, pulls guided logits back (default 0)")
    rules.add_flag(parser, "decoder", help="turbo (8 steps, default) or normal (50 steps)")
    rules.add_flag(parser, "decoder_steps", help="decoder steps (default: turbo 8, normal 50)")
    rules.add_flag(parser, "resolution_multiplier", help="px per token / 16, 1..4 (official 2)")
    rules.add_flag(parser, "out", required=True, help="the image to write: .png, .jpg or .webp")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="main.py", description="LLaDA Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make an image from text")
    add_common_flags(gen)
    rules.add_flag(gen, "prompt", required=True, help="what the image shows")
    gen.add_argument("--size", type=parse_size, default=(1024, 1024), help="WxH, e.g. 1024x768")
    gen.add_argument("--thinking", action="store_true", help="let the model reason first")
    rules.add_flag(gen, "thinking_steps", help="thinking steps per block (official 32)")
    rules.add_flag(gen, "thinking_length", help="the most thinking tokens (official 4096)")
    rules.add_flag(gen, "cfg_scale", help="guidance scale (official 2.0; 1 turns it off)")
    add_image_flags(gen)

    edit = sub.add_parser("edit", help="edit an image by instruction")
    add_common_flags(edit)
    rules.add_flag(edit, "image", required=True, help="the image to edit")
    rules.add_flag(edit, "mask", help="PNG; white or opaque = repaint")
    rules.add_flag(edit, "instruction", required=True, help="how to change the image")
    rules.add_flag(edit, "cfg_text_scale", help="text guidance (official 4.0)")
    rules.add_flag(edit, "cfg_image_scale", help="image guidance (official 0.0)")
    add_image_flags(edit)

    ask = sub.add_parser("ask", help="ask a question about images")
    add_common_flags(ask)
    rules.add_flag(ask, "image", action="append", default=[], help="repeatable")
    rules.add_flag(ask, "mask", help="ask about the masked region of the first image")
    ask.add_argument("--question", required=True)
    rules.add_flag(ask, "max_tokens", help="answer length limit (official 2048)")

    from engine import batch, doctor, download, quant_commands  # torch-free; each its handler

    batch.add_command(sub)  # batch JOBFILE | generate | edit | ask
    download.add_command(sub)
    doctor.add_command(sub)
    quant_commands.add_command(sub)  # quantize, estimate
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


def check_request(options: argparse.Namespace) -> None:
    """What the flags' own rules cannot see, checked before the (slow) model load: the steps
    against the block length and an empty question. (The device's memory is the memory plan's
    to judge, engine/residency.py, since a smaller precision or streaming may fit.)"""
    from engine.pipeline import Defaults

    d = Defaults()
    block = options.block_length or d.block_length
    default_steps = {"generate": d.t2i_steps, "edit": d.edit_steps, "ask": d.understand_steps}
    rules.check_steps(options.steps or default_steps[options.command], block)
    if options.command == "generate" and options.thinking:
        steps = options.thinking_steps or d.thinking_steps
        rules.check_steps(steps, block, "The thinking steps per block")
    if options.command == "ask" and not options.question.strip() and not options.image:
        raise BadInput(rules.NO_QUESTION)


def loop_options(options: argparse.Namespace) -> dict:
    names = ("seed", "steps", "block_length", "threshold", "use_cache", "temperature", "top_k")
    names += ("top_p",)
    return {name: getattr(options, name) for name in names}


def image_options(options: argparse.Namespace) -> dict:
    turbo = None if options.decoder is None else options.decoder == "turbo"
    names = ("cfg_rescale", "decoder_steps", "resolution_multiplier")
    return {"turbo": turbo, **{name: getattr(options, name) for name in names}}


def run(options: argparse.Namespace, out=sys.stdout) -> None:
    from engine import vision
    from engine.pipeline import Pipeline, Turn

    bar = ProgressBar()
    try:
        check_request(options)
        if options.command == "edit":
            image = vision.read_image(options.image)
            mask = read_mask(options.mask) if options.mask else None
        if options.command == "ask":
            images = tuple(vision.read_image(p) for p in options.image)
            mask = read_mask(options.mask) if options.mask else None
        pipeline = Pipeline.load(
            options.model,
            device=options.device,
            on_progress=bar,
            precision=options.precision,
            vram=options.vram,
        )
        if options.command == "generate":
            width, height = options.size
            result = pipeline.generate(
                options.prompt,
                width=width,
                height=height,
                thinking=options.thinking,
                thinking_steps=options.thinking_steps,
                thinking_length=options.thinking_length,
                cfg_scale=options.cfg_scale,
                **loop_options(options),
                **image_options(options),
                on_progress=bar,
            )
        elif options.command == "edit":
            result = pipeline.edit(
                image,
                options.instruction,
                mask=mask,
                cfg_text_scale=options.cfg_text_scale,
                cfg_image_scale=options.cfg_image_scale,
                **loop_options(options),
                **image_options(options),
                on_progress=bar,
            )
        else:
            bar.close()
            pipeline.understand(
                [Turn("user", options.question, images)],
                mask=mask,
                gen_length=options.max_tokens,
                **loop_options(options),
                on_text=lambda delta: (out.write(delta), out.flush()),
            )
            out.write("\n")
            return
    finally:
        bar.close()
    imagefile.save_image(options.out, result.image, result.metadata, thinking=result.thinking)
    if result.thinking:
        out.write(result.thinking + "\n")
    out.write(f"{options.out}\n")


def window_paths(argv: list[str]) -> list[Path] | None:
    """The images `python main.py PHOTO.png ...` opens in the window, or None when `argv` is
    for the command line (a command, an option, or a mistake the parser will name)."""
    if not argv or argv[0].startswith("-") or argv[0] in command_names():
        return None
    paths = [Path(arg).expanduser() for arg in argv]
    if all(p.is_file() and p.suffix.lower() in rules.IMAGE_EXTENSIONS for p in paths):
        return paths
    return None


def main(argv: list[str]) -> int:
    try:
        options = build_parser().parse_args(argv)
    except StudioError as error:  # a value an argument rule refused (engine/args.py)
        print(f"error: {error}", file=sys.stderr)
        return 2
    if hasattr(options, "handler"):  # download and doctor: their own exit statuses
        return options.handler(options)
    try:
        run(options)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("cancelled", file=sys.stderr)
        return 130
    return 0

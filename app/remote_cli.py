"""`python main.py generate|edit|ask|batch --backend URL[,URL...] ...`: the headless commands on
SGLang-Omni servers, torch-free. main.py routes a command line with --backend here.

Same flags, rules, progress bar, outputs (PNG with metadata text chunks) and one-line errors as the
local CLI (engine/cli.py); exit status 2 for a refusal, 1 for a remote failure, 130 when
interrupted. The Bearer key comes from LLADA_STUDIO_API_KEY, never from the command line (it
would land in the shell history and the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import engine.args as rules
from app.remote import RemoteBackend, RemoteOptions, api_key, split_urls
from engine import cli as local
from engine import imagefile
from engine.batch import parse_seeds
from engine.errors import BadInput, StudioError
from engine.protocol import (
    TERMINAL,
    ChatTurn,
    Edit,
    Event,
    Failed,
    Generate,
    ImageResult,
    Progress,
    Request,
    TextDelta,
    Understand,
    new_job_id,
)

# Flags of the local engine that a server does not take per request (notes §2.6).
LOCAL_ONLY = (
    "device",
    "precision",
    "vram",
    "block_length",
    "threshold",
    "use_cache",
    "temperature",
    "top_k",
    "top_p",
    "thinking_steps",
    "thinking_length",
    "resolution_multiplier",
)


def local_only_options() -> dict[str, str]:
    found = {"--device": "device", "--precision": "precision", "--vram": "vram"}
    for name in LOCAL_ONLY:
        if name in rules.RULES:
            option = rules.RULES[name].option
            found[option] = name
            found["--no-" + option[2:]] = name
    return found


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", required=True, help="SGLang-Omni server or sgl-router URL[,URL...]"
    )
    parser.add_argument("--ca-file", default="", help="CA certificates for HTTPS (PEM)")
    parser.add_argument("--in-flight", type=int, default=2, help="requests per server at a time")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds of silence allowed")
    parser.add_argument("--model", help="ignored with --backend: the server has its model")
    rules.add_flag(parser, "seed", default=0, help="one seed drives every random draw (default 0)")
    rules.add_flag(parser, "steps", help="denoising steps per block (official: 8 images)")


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    rules.add_flag(parser, "cfg_rescale", help="0..1, pulls guided logits back (server 0.7)")
    rules.add_flag(parser, "decoder", help="turbo (8 steps, default) or normal (50 steps)")
    rules.add_flag(parser, "decoder_steps", help="decoder steps (default: turbo 8, normal 50)")


def build_parser() -> argparse.ArgumentParser:
    parser = local.ArgumentParser(prog="main.py", description="LLaDA Studio on remote servers.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make an image from text")
    add_remote_flags(gen)
    rules.add_flag(gen, "prompt", required=True, help="what the image shows")
    gen.add_argument("--size", type=local.parse_size, default=(1024, 1024), help="WxH")
    gen.add_argument("--thinking", action="store_true", help="let the model reason first")
    rules.add_flag(gen, "cfg_scale", help="guidance scale (official 2.0; 1 turns it off)")
    add_image_flags(gen)
    rules.add_flag(gen, "out", required=True, help="the image to write: .png, .jpg or .webp")

    edit = sub.add_parser("edit", help="edit an image by instruction")
    add_remote_flags(edit)
    rules.add_flag(edit, "image", required=True, help="the image to edit")
    rules.add_flag(edit, "mask", help="PNG; white or opaque = repaint (composited here)")
    rules.add_flag(edit, "instruction", required=True, help="how to change the image")
    rules.add_flag(edit, "cfg_text_scale", help="text guidance (official 4.0)")
    rules.add_flag(edit, "cfg_image_scale", help="image guidance (official 0.0)")
    add_image_flags(edit)
    rules.add_flag(edit, "out", required=True, help="the image to write: .png, .jpg or .webp")

    ask = sub.add_parser("ask", help="ask a question about images")
    add_remote_flags(ask)
    rules.add_flag(ask, "image", action="append", default=[], help="repeatable")
    rules.add_flag(ask, "mask", help="ask about the masked region of the last image")
    ask.add_argument("--question", required=True)
    rules.add_flag(ask, "max_tokens", help="answer length limit (official 2048)")

    batch = sub.add_parser("batch", help="a prompt list x seeds, fanned out over the servers")
    add_remote_flags(batch)
    batch.add_argument("--prompts", type=Path, required=True, help="a text file, one per line")
    batch.add_argument("--seeds", default="0", help="comma-separated seeds for every prompt")
    batch.add_argument("--size", type=local.parse_size, default=(1024, 1024), help="WxH")
    rules.add_flag(batch, "cfg_scale", help="guidance scale (official 2.0)")
    add_image_flags(batch)
    batch.add_argument("--out", type=Path, required=True, help="the output folder")
    return parser


def refuse_local_only(argv: list[str]) -> None:
    options = local_only_options()
    for word in argv:
        name = word.partition("=")[0]
        if name in options:
            raise BadInput(
                f"{name} is not available with --backend: an SGLang-Omni server does not take it "
                "per request; leave it out, or run locally without --backend."
            )


# ------------------------------------------------------------------ running requests


async def run_many(
    backend: RemoteBackend,
    requests: list[Request],
    on_event: Callable[[Event], None] = lambda event: None,
) -> dict[str, Event]:
    """Submit every request at once (the pool bounds what is in flight) and wait for each one's
    Finished or Failed; their terminal events by job id. `on_event` sees every event."""
    waiting = {request.job_id for request in requests}
    ended: dict[str, Event] = {}
    for request in requests:
        backend.submit(request)
    while waiting:
        event = await backend.receive()
        on_event(event)
        if isinstance(event, TERMINAL) and event.job_id in waiting:
            waiting.discard(event.job_id)
            ended[event.job_id] = event
    return ended


def options_for(settings_key: str, options: argparse.Namespace) -> RemoteOptions:
    return RemoteOptions(
        split_urls(options.backend),
        key=api_key(settings_key),
        ca_file=options.ca_file,
        per_server=options.in_flight,
        read_timeout_s=options.timeout,
    )


def image_fields(options: argparse.Namespace) -> dict:
    turbo = None if options.decoder is None else options.decoder == "turbo"
    return {
        "seed": options.seed,
        "steps": options.steps,
        "turbo": turbo,
        "cfg_rescale": options.cfg_rescale,
        "decoder_steps": options.decoder_steps,
    }


def request_for(options: argparse.Namespace) -> Request:
    job = new_job_id()
    if options.command == "generate":
        width, height = options.size
        return Generate(
            job,
            options.prompt,
            width,
            height,
            thinking=options.thinking,
            cfg_scale=options.cfg_scale,
            **image_fields(options),
        )
    if options.command == "edit":
        mask = local.read_mask(options.mask) if options.mask else None
        return Edit(
            job,
            imagefile.read_image(options.image),
            options.instruction,
            mask=mask,
            cfg_text_scale=options.cfg_text_scale,
            cfg_image_scale=options.cfg_image_scale,
            **image_fields(options),
        )
    return ask_request(job, options)


def ask_request(job: str, options: argparse.Namespace) -> Understand:
    if not options.question.strip() and not options.image:
        raise BadInput(rules.NO_QUESTION)
    images = tuple(imagefile.read_image(path) for path in options.image)
    mask = local.read_mask(options.mask) if options.mask else None
    if mask is not None and images:
        from engine.masking import validate_mask

        mask = validate_mask(mask, images[-1].shape)
    turn = ChatTurn("user", options.question, images)
    return Understand(job, (turn,), seed=options.seed, mask=mask, max_tokens=options.max_tokens)


async def run_one(options: argparse.Namespace, out) -> int:
    request = request_for(options)
    bar = local.ProgressBar()
    backend = RemoteBackend(options_for("", options))
    for warning in backend.options.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    answer: list[str] = []

    def show(event: Event) -> None:
        if isinstance(event, Progress):
            bar(event.stage, event.step, event.total)
        elif isinstance(event, TextDelta) and isinstance(request, Understand):
            answer.append(event.text)
            out.write(event.text)
            out.flush()
        elif isinstance(event, ImageResult):
            bar.close()
            imagefile.save_image(options.out, event.image, event.metadata, thinking=event.thinking)
            if event.thinking:
                out.write(event.thinking + "\n")
            out.write(f"{options.out}\n")

    try:
        ended = await run_many(backend, [request], show)
    finally:
        bar.close()
        backend.close()
    code = report(ended[request.job_id])
    if isinstance(request, Understand) and (answer or code == 0):
        out.write("\n")  # the answer's end, as the local CLI writes it
    return code


async def run_batch(options: argparse.Namespace, out) -> int:
    try:
        prompts = [line.strip() for line in options.prompts.read_text("utf-8").splitlines()]
        seeds = parse_seeds(options.seeds)
    except OSError:
        raise BadInput(f"The prompt list {options.prompts} cannot be read.") from None
    prompts = [prompt for prompt in prompts if prompt]
    if not prompts:
        raise BadInput(f"The prompt list {options.prompts} holds no prompts.")
    width, height = options.size
    items = {}
    for number, prompt in enumerate(prompts, 1):
        for seed in seeds:
            fields = {**image_fields(options), "seed": seed}
            request = Generate(
                new_job_id(), prompt, width, height, cfg_scale=options.cfg_scale, **fields
            )
            items[request.job_id] = (request, options.out / f"{number:04d}-seed{seed}.png")
    options.out.mkdir(parents=True, exist_ok=True)
    backend = RemoteBackend(options_for("", options))
    for warning in backend.options.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    def save(event: Event) -> None:
        if isinstance(event, ImageResult) and event.job_id in items:
            path = items[event.job_id][1]
            imagefile.save_image(path, event.image, event.metadata, thinking=event.thinking)
            out.write(f"{path}\n")
            out.flush()

    try:
        ended = await run_many(backend, [item[0] for item in items.values()], save)
    finally:
        backend.close()
    failed = [event for event in ended.values() if isinstance(event, Failed)]
    for event in failed:
        request, path = items[event.job_id]
        print(f"error: {path.name} ({request.prompt[:40]!r}): {event.message}", file=sys.stderr)
    return 1 if failed else 0


def report(event: Event) -> int:
    if isinstance(event, Failed):
        print(f"error: {event.message}", file=sys.stderr)
        return 130 if event.code == "cancelled" else 2 if event.code == "bad_input" else 1
    return 0


def main(argv: list[str], out=sys.stdout) -> int:
    try:
        refuse_local_only(argv)
        options = build_parser().parse_args(argv)
        runner = run_batch if options.command == "batch" else run_one
        return asyncio.run(runner(options, out))
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled (a server may still finish the work it was given)", file=sys.stderr)
        return 130

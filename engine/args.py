"""The one table of argument rules: each number, choice, text and path a task takes, its range and
the sentence that refuses it. The command line's parser and the engine's request checks both read
this table, so the app and the CLI refuse the same things with the same words.

Torch-free (only the device check imports torch, when asked about a GPU), so the GUI may import it.
A rule's name is the request field and the Pipeline keyword; its flag is the CLI option. For a
new command, register its rules once and use them on both sides:

    from engine import args
    args.register(args.Rule("batch_size", "int", "The batch size", low=1, high=64))

    args.add_flag(parser, "batch_size", help="images per batch")  # --batch-size, checked on parse
    args.check("batch_size", request.batch_size)  # engine side: BadInput with the same sentence
    args.check_fields(request)  # every field of a request dataclass that has a rule

A value that breaks a rule raises `BadInput("<sentence>")`, e.g. "The steps per block must be a
whole number between 1 and 1024, not 0." The CLI prints it as `error: <sentence>` with exit 2.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from engine.errors import BadInput

KINDS = ("int", "float", "bool", "choice", "text", "path")
PATH_KINDS = ("file", "folder", "image", "output image")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_SEED = 2**32 - 1
THRESHOLD_OFF = 1.0  # no probability is above 1, so each step commits exactly its scheduled count


@dataclass(frozen=True)
class Rule:
    """What one argument may be. `what` is the sentence's subject ("The steps per block").

    kind "int"/"float": between low and high (low excluded when `above`), in steps of `step`;
    `words` maps CLI words to values ("off" -> 1.0). "choice": one of `choices`. "text": not
    blank (`sentence` says what to type). "path": `path` is one of PATH_KINDS. None always passes:
    it means "the default" in a request and "not given" on the command line.
    """

    name: str
    kind: str
    what: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    step: int | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    words: tuple[tuple[str, Any], ...] = ()
    path: str = ""
    sentence: str = ""  # the whole sentence, for text rules
    note: str = ""  # said after the range, e.g. what a special value means
    flag: str = ""  # the CLI option; default --name-with-dashes

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert self.kind != "path" or self.path in PATH_KINDS, self.path

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def requirement(self) -> str:
        """What a value must be, as the end of a sentence: "a whole number between 1 and 8"."""
        unit = f" {self.unit}" if self.unit else ""
        words = f" ({self.note})" if self.note else ""
        match self.kind:
            case "int" | "float":
                noun = "a whole number " if self.kind == "int" else "a number "
                noun = "" if self.unit else noun  # "between 256 and 1024 px" says enough
                low, high = _num(self.low), _num(self.high)
                if self.above:
                    span = f"above {low}{unit} and at most {high}{unit}"
                else:
                    span = f"between {low} and {high}{unit}"
                steps = f" in steps of {self.step}{unit}" if self.step else ""
                return f"{noun}{span}{steps}{words}"
            case "bool":
                return "on or off"
            case "choice":
                return "one of " + ", ".join(self.choices)
        return "given"

    def refuse(self, value: Any) -> BadInput:
        shown = (
            value
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else repr(value)
        )
        return BadInput(f"{self.what} must be {self.requirement()}, not {shown}.")

    def check(self, value: Any) -> Any:
        """The value if it keeps the rule (None always does), else BadInput."""
        if value is None:
            return None
        match self.kind:
            case "int" | "float":
                return self._check_number(value)
            case "bool":
                if not isinstance(value, bool):
                    raise self.refuse(value)
            case "choice":
                if value not in self.choices:
                    raise self.refuse(value)
            case "text":
                if not isinstance(value, str) or not value.strip():
                    raise BadInput(self.sentence or f"{self.what} is empty.")
            case "path":
                return check_path(self, Path(value))
        return value

    def parse(self, text: str) -> Any:
        """A CLI string as its value, checked; the `type=` of the rule's argparse option."""
        for word, value in self.words:
            if text.strip().lower() == word:
                return value
        match self.kind:
            case "int":
                try:
                    value: Any = int(text)
                except ValueError:
                    raise self.refuse(text) from None
            case "float":
                try:
                    value = float(text)
                except ValueError:
                    raise self.refuse(text) from None
            case "path":
                value = Path(text).expanduser()
            case _:
                value = text
        return self.check(value)

    def _check_number(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.refuse(value)
        if self.kind == "int" and not (isinstance(value, int) or float(value).is_integer()):
            raise self.refuse(value)
        if not math.isfinite(value):
            raise self.refuse(value)
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        high_ok = self.high is None or value <= self.high
        step_ok = not self.step or (value - (self.low or 0)) % self.step == 0
        if not (low_ok and high_ok and step_ok):
            raise self.refuse(value)
        return int(value) if self.kind == "int" else float(value)


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


RULES: dict[str, Rule] = {}


def register(*rules: Rule) -> None:
    """Add rules to the table; a name may be registered once (the same rule again is fine)."""
    for rule in rules:
        if RULES.get(rule.name, rule) != rule:
            raise ValueError(f"a different rule named {rule.name!r} is already registered")
        RULES[rule.name] = rule


def check(name: str, value: Any) -> Any:
    return RULES[name].check(value)


def check_fields(message: Any, skip: Iterable[str] = ()) -> None:
    """Check every field of a request dataclass that has a (non-path) rule of its name."""
    assert is_dataclass(message)
    for f in fields(message):
        rule = RULES.get(f.name)
        if rule is not None and rule.kind != "path" and f.name not in skip:
            rule.check(getattr(message, f.name))


def add_flag(parser, name: str, **options) -> None:
    """The rule's CLI option on an argparse parser, parsed and checked by the rule."""
    rule = RULES[name]
    if rule.kind == "bool":
        import argparse

        options.setdefault("action", argparse.BooleanOptionalAction)
    else:
        options.setdefault("type", rule.parse)
        options.setdefault("metavar", _metavar(rule))
    parser.add_argument(rule.option, dest=name, **options)


def _metavar(rule: Rule) -> str:
    if rule.kind == "choice":
        return "{" + ",".join(rule.choices) + "}"
    return {"int": "N", "float": "X", "path": "PATH", "text": "TEXT"}.get(rule.kind, "VALUE")


def suggest(word: str, options: Iterable[str]) -> str:
    """' Did you mean X?' for the closest option, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------- paths


def check_path(rule: Rule, path: Path) -> Path:
    """A path that keeps the rule: an existing file, folder or readable image, or an image
    file that can be written (its folder exists or can be made, and is writable)."""
    what = rule.what
    if rule.path == "output image":
        return _check_output(what, path)
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist.")
    if rule.path == "folder":
        if not path.is_dir():
            raise BadInput(f"{what} {path} is a file; choose a folder.")
        return path
    if path.is_dir():
        raise BadInput(f"{what} {path} is a folder; choose a file.")
    if rule.path == "image" and path.suffix.lower() not in IMAGE_EXTENSIONS:
        known = ", ".join(IMAGE_EXTENSIONS)
        raise BadInput(f"{what} {path} is not an image file (known endings: {known}).")
    if not os.access(path, os.R_OK):
        raise BadInput(f"{what} {path} cannot be read; check its permissions.")
    return path


def _check_output(what: str, path: Path) -> Path:
    if path.is_dir():
        raise BadInput(f"{what} {path} is an existing folder; give a file name such as out.png.")
    if path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise BadInput(f"{what} {path} must end in .png, .jpg, .jpeg or .webp.")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"{what} {path} exists and cannot be overwritten; check its permissions.")
    folder = path.absolute().parent
    while not folder.exists():  # the nearest existing folder decides whether it can be made
        folder = folder.parent
    if not folder.is_dir():
        raise BadInput(f"{what} {path} cannot be written: {folder} is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {path} cannot be written: the folder {folder} is read-only.")
    return path


# ---------------------------------------------------------------------------------- device

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(spec: str, need_bytes: int | None = None) -> str:
    """The device if it exists (and has `need_bytes` free, where that can be known), else
    BadInput. Asks torch only about GPUs; counting them initialises no model."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.fullmatch(spec):
        raise BadInput(f"The device must be auto, cpu, mps, cuda or cuda:N, not {spec!r}.")
    if spec.startswith("cuda"):
        _check_cuda(spec, need_bytes)
    if spec == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise BadInput("The device mps (Apple GPU) is not available here; use cpu.")
    return spec


def _check_cuda(spec: str, need_bytes: int | None) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.partition(":")[2] or 0)
    if count == 0:
        raise BadInput(f"There is no GPU {spec}: torch finds no CUDA device here; use cpu.")
    if index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        raise BadInput(f"There is no GPU {spec}: this machine has {count} ({have}).")
    if need_bytes:
        free, _ = torch.cuda.mem_get_info(index)
        if free < need_bytes:
            raise BadInput(
                f"{spec} has {free / 2**30:.1f} GiB free, and the model needs about "
                f"{need_bytes / 2**30:.1f} GiB; close other programs on it or use a smaller preset."
            )


def check_steps(steps: int, block_length: int, what: str = "The steps per block") -> None:
    """Steps per block beyond the block length would commit nothing on some steps."""
    if steps > block_length:
        raise BadInput(
            f"{what} ({steps}) cannot be more than the block length ({block_length}); "
            "each step commits at least one token."
        )


# ---------------------------------------------------------------------------------- the table

NO_PROMPT = "Type a prompt that describes the image to make."
NO_INSTRUCTION = "Type an instruction that says how to edit the image."
NO_QUESTION = "Type a question, or add an image to ask about."

register(
    # every task
    Rule("seed", "int", "The seed", low=0, high=MAX_SEED),
    Rule("steps", "int", "The steps per block", low=1, high=1024),
    Rule("block_length", "int", "The block length", low=1, high=1024, unit="tokens"),
    Rule(
        "threshold",
        "float",
        "The threshold",
        low=0.0,
        high=1.0,
        above=True,
        words=(("off", THRESHOLD_OFF),),
        note="1 or 'off': a fixed number of tokens per step",
    ),
    Rule("use_cache", "bool", "The KV cache switch", flag="--cache"),
    Rule("temperature", "float", "The temperature", low=0.0, high=2.0),
    Rule("top_k", "int", "The top-k", low=1, high=1_000_000),
    Rule("top_p", "float", "The top-p", low=0.0, high=1.0, above=True),
    # images out
    Rule("width", "int", "The width", low=256, high=1024, step=32, unit="px"),
    Rule("height", "int", "The height", low=256, high=1024, step=32, unit="px"),
    Rule("cfg_scale", "float", "The CFG scale", low=0.0, high=20.0, flag="--cfg"),
    Rule("cfg_text_scale", "float", "The text CFG scale", low=0.0, high=20.0, flag="--cfg-text"),
    Rule("cfg_image_scale", "float", "The image CFG scale", low=0.0, high=20.0, flag="--cfg-image"),
    Rule("cfg_rescale", "float", "The CFG rescale", low=0.0, high=1.0),
    Rule("thinking", "bool", "The thinking switch"),
    Rule("thinking_steps", "int", "The thinking steps per block", low=1, high=1024),
    Rule("thinking_length", "int", "The thinking length", low=1, high=16384, unit="tokens"),
    Rule("turbo", "bool", "The turbo decoder switch"),
    Rule("decoder", "choice", "The decoder", choices=("turbo", "normal")),
    Rule("decoder_steps", "int", "The decoder steps", low=1, high=100),
    Rule("resolution_multiplier", "int", "The resolution multiplier", low=1, high=4),
    # text out
    Rule("max_tokens", "int", "The answer length", low=1, high=16384, unit="tokens"),
    # texts
    Rule("prompt", "text", "The prompt", sentence=NO_PROMPT),
    Rule("instruction", "text", "The instruction", sentence=NO_INSTRUCTION),
    # paths (command line only)
    Rule("model", "path", "The model folder", path="folder"),
    Rule("image", "path", "The image", path="image"),
    Rule("mask", "path", "The mask", path="image"),
    Rule("out", "path", "The output", path="output image"),
)

"""Batch work: `python main.py batch JOBFILE`, or `batch generate | edit | ask` with flags.

The model loads once; each item runs through the same Pipeline methods as a single job, with the
same defaults and metadata. Outputs are named by a template (engine/naming.py) and written with
engine/imagefile.py by a writer thread, so encoding overlaps the next item's compute. A manifest
(`manifest.jsonl` in the output folder, one fsynced line per finished item with its output's
sha256) lets a rerun skip what is done and redo what is missing or truncated. A bad input fails
its item with one sentence; Ctrl+C stops after the current denoising step; a full disk stops the
batch with a sentence; the summary lists what was done, skipped and failed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import engine.args as rules
from engine import imagefile, naming
from engine.errors import BadInput, Cancelled, StudioError

TASKS = ("generate", "edit", "ask")
MANIFEST = "manifest.jsonl"
ANSWERS = "answers"  # answers.jsonl and answers.csv, for `ask`
TEMPLATES = {
    "generate": "{index:04d}-{slug}-{seed}",
    "edit": "{source}-edit-{seed}",
    "ask": "{source}",
}
LOOP = ("steps", "block_length", "threshold", "use_cache", "temperature", "top_k", "top_p")
IMAGE = ("cfg_rescale", "decoder", "decoder_steps", "resolution_multiplier")
TASK_OPTIONS = {
    "generate": (*LOOP, *IMAGE, "cfg_scale", "thinking_steps", "thinking_length"),
    "edit": (*LOOP, *IMAGE, "cfg_text_scale", "cfg_image_scale"),
    "ask": (*LOOP, "max_tokens"),
}
OUTPUT_KEYS = ("format", "quality", "lossless", "sidecar", "overwrite", "name")
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
rules.register(  # the batch's own arguments, in the one table of argument rules
    rules.Rule("quality", "int", "The quality", low=1, high=100),
    rules.Rule("format", "choice", "The format", choices=("png", "jpeg", "jpg", "webp")),
)
MIN_SOURCE_SIDE = 16  # px: smaller sources (tracking pixels, icons) are reported, not edited


@dataclass(frozen=True)
class Item:
    """One unit of work: a prompt at one seed, or one image with the instruction or question."""

    task: str
    index: int  # 1-based, in the order the batch lists its items
    text: str  # the prompt, instruction or question
    seed: int = 0
    width: int | None = None
    height: int | None = None
    thinking: bool | None = None
    image: str | None = None  # the source image's path (edit, ask)
    mask: str | None = None

    @property
    def key(self) -> str:
        """Stable across runs of the same batch: what the item asks for, not when."""
        data = json.dumps({k: v for k, v in asdict(self).items() if k != "index"}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:20]

    @property
    def source(self) -> str:
        return Path(self.image).stem if self.image else ""

    def label(self) -> str:
        if self.image:
            return Path(self.image).name
        return f"#{self.index} {self.text[:40]!r} seed {self.seed}"


@dataclass
class Output:
    """Where and how results are written."""

    folder: Path
    name: str | None = None  # the naming template; None: the task's default
    format: str = "png"
    quality: int = 95
    lossless: bool = False
    sidecar: bool = False
    overwrite: bool = False

    @property
    def suffix(self) -> str:
        return imagefile.SUFFIXES[imagefile.image_format("", self.format)]


@dataclass
class Job:
    task: str
    model: Path
    items: list[Item]
    output: Output
    options: dict = field(default_factory=dict)  # pipeline options shared by every item
    device: str = "auto"
    precision: str | None = None
    vram: float | None = None


@dataclass
class Report:
    """What a run did; `exit_status` is 0 only when nothing failed or stopped it."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, sentence)
    not_run: int = 0
    stopped: str = ""  # why the batch stopped early, one sentence
    interrupted: bool = False
    model_s: float = 0.0  # time inside pipeline calls
    wall_s: float = 0.0  # from the first item to the last write (after the model load)
    write_s: float = 0.0  # encoding and writing, on the writer thread (overlaps the compute)

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.stopped or self.not_run else 0

    def summary(self) -> str:
        lines = [
            f"Batch: {len(self.done)} done, {len(self.skipped)} skipped (already done), "
            f"{len(self.failed)} failed, {self.not_run} not run."
        ]
        lines += [f"  failed: {item}: {sentence}" for item, sentence in self.failed]
        if self.stopped:
            lines.append(f"Stopped: {self.stopped}")
        elif self.interrupted:
            lines.append("Stopped by Ctrl+C; run the same command again to finish the rest.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading the work: seeds, prompt files, folders, job files


def parse_seeds(text: str | int | list) -> list[int]:
    """`1-4,7` -> [1, 2, 3, 4, 7]; an int or a list of ints as they are."""
    if isinstance(text, bool):
        raise BadInput(f"The seeds must look like 1-4 or 1,5,9, not {text!r}.")
    if isinstance(text, int):
        return [rules.check("seed", text)]
    if isinstance(text, list):
        return [s for part in text for s in parse_seeds(part)]
    seeds = []
    for part in str(text).replace(" ", "").split(","):
        found = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not found:
            raise BadInput(f"The seeds must look like 1-4 or 1,5,9, not {text!r}.")
        low, high = int(found[1]), int(found[2] or found[1])
        if high < low or high - low >= 100_000:
            raise BadInput(f"The seed range {part} must go up, and hold fewer than 100000 seeds.")
        seeds += [rules.check("seed", s) for s in range(low, high + 1)]
    return seeds


def read_prompts(path: Path) -> list[dict]:
    """Rows of a prompt file: plain text (one prompt a line, # comments), CSV with a `prompt`
    column, or JSONL objects; CSV and JSONL rows may give size, seed, count and thinking."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInput(f"There is no prompt file {path}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"The prompt file {path} cannot be read as UTF-8 text ({error}).") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "prompt" not in rows[0]:
            raise BadInput(f"The CSV file {path} needs a 'prompt' column.")
        numbered = [(n + 2, row) for n, row in enumerate(rows)]
    elif suffix in (".jsonl", ".ndjson"):
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise BadInput(f"Line {n} of {path} is not valid JSON.") from None
                if not isinstance(row, dict):
                    raise BadInput(f"Line {n} of {path} must be an object with a 'prompt'.")
                numbered.append((n, row))
    else:
        lines = enumerate(text.splitlines(), 1)
        numbered = [(n, {"prompt": s}) for n, s in lines if s.strip() and not s.startswith("#")]
    return [_prompt_row(row, n, path) for n, row in numbered]


def _prompt_row(row: dict, line: int, path: Path) -> dict:
    where = f"line {line} of {Path(path).name}"
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput(f"The prompt on {where} is empty.")
    out = {"prompt": prompt.strip()}
    try:
        if row.get("size") not in (None, ""):
            out["width"], out["height"] = _size(str(row["size"]))
        for key in ("width", "height"):
            if row.get(key) not in (None, ""):
                out[key] = rules.check(key, int(row[key]))
        if row.get("seed") not in (None, ""):
            out["seed"] = rules.check("seed", int(row["seed"]))
        if row.get("count") not in (None, ""):
            out["count"] = int(row["count"])
            if not 1 <= out["count"] <= 10_000:
                raise BadInput("The count must be between 1 and 10000.")
        if row.get("thinking") not in (None, ""):
            out["thinking"] = _boolean(row["thinking"])
    except (BadInput, ValueError, TypeError) as error:
        message = str(error) if isinstance(error, BadInput) else "a number is not a number"
        raise BadInput(f"On {where}: {message.rstrip('.')}.") from None
    return out


def _size(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not found:
        raise BadInput(f"The size must look like 512x512, not {text!r}.")
    return rules.check("width", int(found[1])), rules.check("height", int(found[2]))


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise BadInput(f"thinking must be true or false, not {value!r}")


def generate_items(rows: list[dict], seeds: list[int], size=None, thinking=None) -> list[Item]:
    """Each row at each of its seeds: the row's own seed (and count) or else `seeds`."""
    items = []
    for row in rows:
        if "seed" in row:
            row_seeds = [row["seed"] + i for i in range(row.get("count", 1))]
        elif "count" in row:
            row_seeds = [seeds[0] + i for i in range(row["count"])]
        else:
            row_seeds = seeds
        width, height = row.get("width"), row.get("height")
        if width is None and size:
            width = size[0]
        if height is None and size:
            height = size[1]
        for seed in row_seeds:
            item = Item("generate", len(items) + 1, row["prompt"], min(seed, rules.MAX_SEED),
                        width, height, row.get("thinking", thinking))  # fmt: skip
            items.append(item)
    return items


def folder_items(task: str, images: Path, text: str, seeds: list[int], masks=None) -> list[Item]:
    """Every file of a folder (not hidden, not in subfolders), sorted, at each seed; a file
    that is no image fails its item when it runs, with its sentence."""
    images = Path(images)
    if not images.is_dir():
        raise BadInput(f"The image folder {images} does not exist or is not a folder.")
    files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise BadInput(f"The image folder {images} holds no files.")
    items = []
    for path in files:
        mask = _matching_mask(path, Path(masks)) if masks else None
        for seed in seeds:
            items.append(Item(task, len(items) + 1, text, seed, image=str(path), mask=mask))
    return items


def _matching_mask(image: Path, masks: Path) -> str | None:
    """The mask with the image's name: same stem, or stem + `_mask`/`-mask`, any image suffix."""
    if not masks.is_dir():
        raise BadInput(f"The mask folder {masks} does not exist or is not a folder.")
    for stem in (image.stem, f"{image.stem}_mask", f"{image.stem}-mask"):
        for suffix in rules.IMAGE_EXTENSIONS:
            for candidate in (masks / f"{stem}{suffix}", masks / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return str(candidate)
    return None


def read_jobfile(path: Path) -> dict:
    """A TOML (.toml) or JSON (.json) job file as a dict."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"There is no job file {path}.") from None
    except OSError as error:
        raise BadInput(f"The job file {path} cannot be read ({error.strerror}).") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8-sig"))
        else:
            import tomllib

            data = tomllib.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise BadInput(f"The job file {path} is not valid {kind}: {error}.") from None
    if not isinstance(data, dict):
        raise BadInput(f"The job file {path} must hold a table of settings.")
    return data


def build_job(spec: dict, base: Path = Path(".")) -> Job:
    """A Job from job-file settings (paths relative to the job file's folder) merged with the
    command line's; unknown keys and bad values are refused with one sentence."""
    known = {"task", "model", "out", "device", "precision", "vram", "seeds", "size", "thinking",
             "prompts", "prompts_file", "items", "images", "masks", "instruction", "question",
             "options", *OUTPUT_KEYS}  # fmt: skip
    if unknown := sorted(set(spec) - known):
        raise BadInput(
            f"The job file has an unknown setting {unknown[0]!r}.{rules.suggest(unknown[0], known)}"
        )
    task = spec.get("task", "generate")
    if task not in TASKS:
        raise BadInput(f"The task must be generate, edit or ask, not {task!r}.")
    if not spec.get("model"):
        raise BadInput("The batch needs a model: give --model or set model in the job file.")
    if not spec.get("out"):
        raise BadInput("The batch needs an output folder: give --out or set out in the job file.")
    seeds = parse_seeds(spec.get("seeds", 0))
    items = _job_items(task, spec, seeds, base)
    output = Output(folder=_path(spec["out"], base))
    for key in OUTPUT_KEYS:
        if spec.get(key) is not None:
            setattr(output, key, spec[key])
    _check_output(output, task)
    return Job(
        task,
        _path(spec["model"], base),
        items,
        output,
        check_options(task, spec.get("options") or {}),
        device=rules.check_device(str(spec.get("device", "auto"))),
        precision=spec.get("precision"),
        vram=spec.get("vram"),
    )


def _job_items(task: str, spec: dict, seeds: list[int], base: Path) -> list[Item]:
    if task == "generate":
        rows = []
        prompts = spec.get("prompts")
        if isinstance(prompts, (str, Path)) or spec.get("prompts_file"):
            rows += read_prompts(_path(spec.get("prompts_file") or prompts, base))
        elif prompts:
            rows += [_prompt_row({"prompt": p}, n, "the job file") for n, p in enumerate(prompts)]
        rows += [_prompt_row(row, n, "the job file") for n, row in enumerate(spec.get("items", []))]
        if not rows:
            raise BadInput("The batch has no prompts: give --prompts FILE or a prompts list.")
        size = _size(str(spec["size"])) if spec.get("size") else None
        return generate_items(rows, seeds, size, spec.get("thinking"))
    if not spec.get("images"):
        raise BadInput(f"batch {task} needs an image folder: give --images DIR.")
    text_key = "instruction" if task == "edit" else "question"
    text = spec.get(text_key)
    if not isinstance(text, str) or not text.strip():
        raise BadInput(rules.NO_INSTRUCTION if task == "edit" else rules.NO_QUESTION)
    masks = _path(spec["masks"], base) if spec.get("masks") and task == "edit" else None
    return folder_items(task, _path(spec["images"], base), text.strip(), seeds, masks)


def _path(value, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    # absolute, so an item's key (which holds its source path) is the same from any folder
    return (path if path.is_absolute() else base / path).absolute()


def _check_output(output: Output, task: str) -> None:
    imagefile.image_format("", output.format)
    rules.check("quality", output.quality)
    naming.check_template(output.name or TEMPLATES[task])
    if output.folder.exists() and not output.folder.is_dir():
        raise BadInput(f"The output {output.folder} is a file; choose a folder.")


def check_options(task: str, options: dict) -> dict:
    """Pipeline options for every item of the task, each checked by its rule in engine/args."""
    allowed = TASK_OPTIONS[task]
    checked = {}
    for name, value in options.items():
        if value is None:
            continue
        if name not in allowed:
            hint = rules.suggest(name, allowed)
            raise BadInput(f"{name!r} is not an option for batch {task}.{hint}")
        if name == "threshold" and isinstance(value, str) and value.lower() == "off":
            value = rules.THRESHOLD_OFF
        checked[name] = rules.check(name, value)
    if "steps" in checked:
        rules.check_steps(checked["steps"], checked.get("block_length") or 32)
    return checked


# ---------------------------------------------------------------------------------------------
# The manifest


class Manifest:
    """`manifest.jsonl`: one line per finished item, appended and fsynced at once, so a crash
    loses at most the line being written (a torn last line is ignored when read)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / MANIFEST
        self.records: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "key" in record:
                    self.records[record["key"]] = record

    def finished(self, item: Item, folder: Path) -> bool:
        """Done before, and its output is still there, whole (same size and sha256)."""
        record = self.records.get(item.key)
        if record is None:
            return False
        if item.task == "ask":
            return "answer" in record
        path = folder / record.get("output", "")
        try:
            if path.stat().st_size != record.get("bytes"):
                return False
            return _sha256(path.read_bytes()) == record.get("sha256")
        except OSError:
            return False

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise imagefile._write_error(error, self.path) from error
        self.records[record["key"]] = record


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Running


class Progress:
    """`batch [#####.....] 5/16  3.2/min  0:03:26 left  1 failed` on stderr, redrawn in place."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.width = total, width
        self.stream = stream if stream is not None else sys.stderr
        self.count = self.computed = self.failed = self.shown = 0
        self.started = time.monotonic()

    def note(self, line: str) -> None:
        self._line(line)
        self.stream.write("\n")
        self.draw()

    def _line(self, text: str) -> None:
        """Replace the current line: an erase code on a terminal, spaces elsewhere."""
        erase = "\x1b[K" if getattr(self.stream, "isatty", lambda: False)() else ""
        pad = "" if erase else " " * max(0, self.shown - len(text))
        self.stream.write(f"\r{erase}{text}{pad}")
        self.shown = len(text)

    def draw(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = self.computed / elapsed * 60 if elapsed > 0 and self.computed else 0.0
        left = self.total - self.count
        eta = _clock(left / rate * 60) if rate else "?"
        filled = int(self.width * self.count / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        failed = f"  {self.failed} failed" if self.failed else ""
        self._line(f"batch [{bar}] {self.count}/{self.total}  {rate:.1f}/min  {eta} left{failed}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Runner:
    """Runs a Job on a loaded Pipeline: compute on this thread, writing on a writer thread."""

    def __init__(self, job: Job, pipeline, progress: Progress | None = None):
        self.job, self.pipeline = job, pipeline
        self.folder = job.output.folder
        self.report = Report()
        self.progress = progress or Progress(len(job.items))
        self.stopping = False  # Ctrl+C: stop after the current step
        self.started = datetime.now()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._names: set[str] = set()

    # -- the loop

    def run(self) -> Report:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.folder)
        writer = threading.Thread(target=self._write_loop, name="batch-writer", daemon=True)
        started = time.perf_counter()
        writer.start()
        previous = _catch_sigint(self._interrupt)
        try:
            self._compute_all()
        finally:
            self._queue.put(None)
            writer.join()
            _restore_sigint(previous)
            if self.job.task == "ask":
                self._write_answers()
            self.report.wall_s = time.perf_counter() - started
            self.progress.close()
        return self.report

    def _compute_all(self) -> None:
        items = self.job.items
        for position, item in enumerate(items):
            if self.stopping or self.report.stopped:
                self.report.not_run = len(items) - position
                # Ctrl+C that landed after the last step of an item (nothing left to cancel)
                # still stops the batch as Ctrl+C: exit 130 and the resume line.
                self.report.interrupted = self.report.interrupted or self.stopping
                return
            if self.manifest.finished(item, self.folder):
                self._count(skipped=item.label())
                continue
            try:
                path = self._target(item)
                result = self._compute(item)
            except Cancelled:
                self.report.interrupted = True
                self.report.not_run = len(items) - position
                return
            except StudioError as error:
                self._count(failed=(item.label(), str(error)))
                continue
            self._queue.put((item, path, result))

    def _compute(self, item: Item):
        from engine.cli import read_mask
        from engine.pipeline import Turn

        options = dict(self.job.options)
        loop = {k: options.pop(k) for k in LOOP if k in options}
        if "decoder" in options:
            options["turbo"] = options.pop("decoder") == "turbo"
        started = time.perf_counter()
        try:
            if item.task == "generate":
                size = {"width": item.width or 1024, "height": item.height or 1024}
                thinking = {"thinking": item.thinking} if item.thinking is not None else {}
                return self.pipeline.generate(
                    item.text, seed=item.seed, **size, **thinking, **loop, **options,
                    on_progress=self._step,
                )  # fmt: skip
            image = imagefile.read_image(item.image)
            if min(image.shape[:2]) < MIN_SOURCE_SIDE:
                height, width = image.shape[:2]
                raise BadInput(f"{Path(item.image).name} is {width}x{height} pixels; batch "
                               f"images need at least {MIN_SOURCE_SIDE} on each side.")  # fmt: skip
            mask = read_mask(Path(item.mask)) if item.mask else None
            if item.task == "edit":
                return self.pipeline.edit(image, item.text, mask=mask, seed=item.seed, **loop,
                                          **options, on_progress=self._step)  # fmt: skip
            if "max_tokens" in options:
                options["gen_length"] = options.pop("max_tokens")
            turns = [Turn("user", item.text, (image,))]
            return self.pipeline.understand(turns, seed=item.seed, **loop, **options,
                                            on_progress=self._step)  # fmt: skip
        finally:
            self.report.model_s += time.perf_counter() - started

    def _step(self, stage: str, step: int, total: int) -> None:
        if self.stopping:
            raise Cancelled()

    def _interrupt(self) -> None:
        if self.stopping:  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        self.stopping = True
        self.progress.note("Stopping after the current step (Ctrl+C again to stop now)...")

    # -- names

    def _target(self, item: Item) -> Path | None:
        """The output path: the manifest's for an item done before (its output is being redone),
        else the template's, made unique in this batch; refused if it exists (no --overwrite)."""
        if item.task == "ask":
            return None
        record = self.manifest.records.get(item.key)
        if record and record.get("output"):
            return self.folder / record["output"]
        template = self.job.output.name or TEMPLATES[item.task]
        fields = {"task": item.task, "prompt": item.text, "seed": item.seed, "index": item.index,
                  "source": item.source, "width": item.width or 0,
                  "height": item.height or 0}  # fmt: skip
        stem = naming.render(template, fields, self.started)
        name, n = stem + self.job.output.suffix, 2
        while name.lower() in self._names:
            name, n = f"{stem}-{n}{self.job.output.suffix}", n + 1
        self._names.add(name.lower())
        path = self.folder / name
        if path.exists() and not self.job.output.overwrite:
            raise BadInput(f"{name} already exists; pass --overwrite to replace it.")
        return path

    # -- writing (the writer thread)

    def _write_loop(self) -> None:
        while (work := self._queue.get()) is not None:
            item, path, result = work
            if self.report.stopped:  # the disk is full: not written, so not run
                with self._lock:
                    self.report.not_run += 1
                continue
            started = time.perf_counter()
            try:
                record = self._write(item, path, result)
                self._record(record, path)
            except imagefile.DiskFull as error:
                self.report.stopped = str(error)
                self._count(failed=(item.label(), str(error)))
                continue
            except StudioError as error:
                self._count(failed=(item.label(), str(error)))
                continue
            finally:
                self.report.write_s += time.perf_counter() - started
            self._count(done=record.get("output") or item.label())

    def _record(self, record: dict, path: Path | None) -> None:
        """Add the manifest line; if that fails, remove the output too, so a rerun makes it
        again rather than finding an unrecorded file it may not overwrite."""
        try:
            self.manifest.append(record)
        except StudioError:
            if path is not None:
                path.unlink(missing_ok=True)
            raise

    def _write(self, item: Item, path: Path | None, result) -> dict:
        record = {"key": item.key, "task": item.task, "index": item.index, "seed": item.seed,
                  "text": item.text, "source": item.image, "finished": datetime.now().isoformat(
                      timespec="seconds")}  # fmt: skip
        if item.task == "ask":
            return {**record, "answer": result}
        out = self.job.output
        data = imagefile.encode_image(
            result.image,
            result.metadata,
            out.format,
            quality=out.quality,
            lossless=out.lossless,
            thinking=result.thinking,
        )
        imagefile.write_atomic(path, data)
        if out.sidecar:
            sidecar = imagefile.sidecar_bytes(result.metadata, result.thinking)
            imagefile.write_atomic(imagefile.sidecar_path(path), sidecar)
        return {**record, "output": path.name, "bytes": len(data), "sha256": _sha256(data)}

    def _write_answers(self) -> None:
        """answers.jsonl and answers.csv: every answered item of this batch, in item order."""
        rows = []
        for item in self.job.items:
            record = self.manifest.records.get(item.key)
            if record and "answer" in record:
                rows.append({"image": item.image, "seed": item.seed, "question": item.text,
                             "answer": record["answer"]})  # fmt: skip
        if not rows:
            return
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        try:
            imagefile.write_atomic(self.folder / f"{ANSWERS}.jsonl", lines.encode("utf-8"))
            imagefile.write_atomic(self.folder / f"{ANSWERS}.csv", table.getvalue().encode("utf-8"))
        except StudioError as error:
            self.report.stopped = self.report.stopped or str(error)

    def _count(self, done: str = "", skipped: str = "", failed: tuple[str, str] | None = None):
        with self._lock:
            if done:
                self.report.done.append(done)
                self.progress.computed += 1
            if skipped:
                self.report.skipped.append(skipped)
            if failed:
                self.report.failed.append(failed)
                self.progress.failed += 1
                self.progress.note(f"failed: {failed[0]}: {failed[1]}")
            self.progress.count += 1
            self.progress.draw()


def _catch_sigint(handler):
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda signum, frame: handler())


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def run_job(job: Job, stream=None) -> Report:
    """Load the model once and run every item; the summary goes to `stream` (stderr)."""
    from engine.pipeline import Pipeline

    stream = stream if stream is not None else sys.stderr
    stream.write(f"Loading {job.model} for {len(job.items)} items...\n")
    pipeline = Pipeline.load(job.model, device=job.device, precision=job.precision, vram=job.vram)
    report = Runner(job, pipeline, Progress(len(job.items), stream)).run()
    stream.write(report.summary() + "\n")
    stream.write(f"Outputs in {job.output.folder}\n")
    return report


# ---------------------------------------------------------------------------------------------
# The command line


def add_command(sub) -> None:
    """`batch JOBFILE` and `batch generate | edit | ask` on the CLI's subparsers."""
    parser = sub.add_parser("batch", help="run many jobs: a job file, or generate/edit/ask")
    parser.add_argument("target", metavar="JOBFILE|generate|edit|ask",
                        help="a .toml or .json job file, or a task for the short form")  # fmt: skip
    parser.add_argument("--model", type=Path, help="the LLaDA2.0-Uni folder")
    parser.add_argument("--out", type=Path, help="the output folder")
    parser.add_argument("--prompts", type=Path, help="generate: .txt, .csv or .jsonl")
    parser.add_argument("--seeds", help="e.g. 1-4 or 1,5,9 (default 0)")
    parser.add_argument("--size", help="generate: WxH for rows without one (default 1024x1024)")
    parser.add_argument("--thinking", action="store_true", default=None, help="generate")
    parser.add_argument("--images", type=Path, help="edit, ask: the folder of images")
    parser.add_argument("--masks", type=Path, help="edit: masks named like the images")
    parser.add_argument("--instruction", help="edit: how to change each image")
    parser.add_argument("--question", help="ask: what to ask of each image")
    parser.add_argument("--name", help="naming template, e.g. '{index:04d}-{slug}-{seed}'")
    rules.add_flag(parser, "format", help="png (default), jpeg or webp")
    rules.add_flag(parser, "quality", help="JPEG and WebP quality 1-100 (default 95)")
    parser.add_argument("--lossless", action="store_true", default=None, help="lossless WebP")
    parser.add_argument("--sidecar", action="store_true", default=None, help="a .json per image")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace files")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    from engine.quant_commands import add_load_flags

    add_load_flags(parser)
    for name in sorted({n for names in TASK_OPTIONS.values() for n in names}):
        rules.add_flag(parser, name)
    parser.set_defaults(handler=run_command)


def job_from_options(options) -> Job:
    """The job a `batch` command line describes (the job file's settings, flags on top)."""
    target = options.target
    if target in TASKS:
        spec, base = {"task": target}, Path(".")
    else:
        path = Path(target).expanduser()
        spec, base = read_jobfile(path), path.parent
    flags = {
        "model": options.model, "out": options.out, "prompts_file": options.prompts,
        "seeds": options.seeds, "size": options.size, "thinking": options.thinking,
        "images": options.images, "masks": options.masks, "instruction": options.instruction,
        "question": options.question, "device": options.device, "precision": options.precision,
        "vram": options.vram, "name": options.name, "format": options.format,
        "quality": options.quality, "lossless": options.lossless, "sidecar": options.sidecar,
        "overwrite": options.overwrite,
    }  # fmt: skip
    for key, value in flags.items():
        if value is not None:  # flags are relative to the working folder, not the job file's
            spec[key] = str(Path(value).absolute()) if isinstance(value, Path) else value
    task = spec.get("task", "generate")
    given = {n: getattr(options, n, None) for n in TASK_OPTIONS.get(task, ())}
    spec["options"] = {
        **(spec.get("options") or {}),
        **{k: v for k, v in given.items() if v is not None},
    }
    if "prompts_file" in spec and spec.get("prompts"):
        spec.pop("prompts")
    return build_job(spec, base)


def run_command(options) -> int:
    try:
        job = job_from_options(options)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = run_job(job)
    except StudioError as error:  # the model folder or device: before any item ran
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report.exit_status

"""BatchQueue: a prompt list or a folder of images fed into the engine's job queue. No widgets.

The settings are a snapshot taken when the batch starts (the request values given to `start`), so
later changes in the panels never reach its items. Items go to the queue two at a time, which
keeps the engine busy without reading a whole folder of photos into memory, and lets "cancel the
rest" drop what was not sent. Results reach the history like every other job's (app/session.py
records each ImageResult); answers of an `ask` batch are kept here, per item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from engine import imagefile
from engine.errors import StudioError
from engine.protocol import (
    ChatTurn,
    Edit,
    Event,
    Failed,
    Finished,
    Generate,
    TextResult,
    Understand,
    new_job_id,
)

WAITING, SENT, DONE, FAILED, CANCELLED = "waiting", "sent", "done", "failed", "cancelled"
IN_FLIGHT = 2  # items in the engine's queue at once


@dataclass
class BatchItem:
    label: str  # the prompt, or the image's file name
    make: Callable[[str], object]  # job id -> the request (reads the image only then)
    state: str = WAITING
    job_id: str = ""
    message: str = ""  # why it failed
    answer: str = ""  # an ask item's answer


def prompt_items(prompts: list[str], seeds: list[int], values: dict) -> list[BatchItem]:
    """Each prompt at each seed, with the generate panel's `values` (Generate's fields)."""
    values = {k: v for k, v in values.items() if k not in ("job_id", "prompt", "seed")}
    return [
        BatchItem(f"{prompt} (seed {seed})", _generate(prompt, seed, values))
        for prompt in prompts
        if prompt.strip()
        for seed in seeds
    ]


def folder_items(folder: Path, task: str, text: str, values: dict) -> list[BatchItem]:
    """Every file of `folder` (sorted, no hidden files): an Edit with `text` as the instruction,
    or an Understand with `text` as the question; `values` are the request's other fields."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    make = _edit if task == "edit" else _ask
    return [BatchItem(path.name, make(path, text, values)) for path in files]


def _generate(prompt: str, seed: int, values: dict):
    return lambda job_id: Generate(job_id, prompt, seed=seed, **values)


def _edit(path: Path, instruction: str, values: dict):
    fields = {f.name for f in dataclasses.fields(Edit)} - {"job_id", "image", "instruction", "mask"}
    options = {k: v for k, v in values.items() if k in fields}
    return lambda job_id: Edit(job_id, imagefile.read_image(path), instruction, **options)


def _ask(path: Path, question: str, values: dict):
    fields = {f.name for f in dataclasses.fields(Understand)} - {"job_id", "turns", "mask"}
    options = {k: v for k, v in values.items() if k in fields}

    def make(job_id: str):
        turn = ChatTurn("user", question, (imagefile.read_image(path),))
        return Understand(job_id, (turn,), **options)

    return make


class BatchQueue(QObject):
    """Sends the items, follows their jobs' events, cancels the rest on request."""

    changed = Signal()  # an item's state changed
    finished = Signal()  # every item has ended

    def __init__(self, submit: Callable, cancel: Callable[[str], None], parent=None):
        super().__init__(parent)
        self._submit, self._cancel = submit, cancel
        self.items: list[BatchItem] = []
        self._by_job: dict[str, BatchItem] = {}

    def start(self, items: list[BatchItem]) -> None:
        self.items = list(items)
        self._by_job.clear()
        self._fill()
        self.changed.emit()

    def cancel_rest(self) -> None:
        """Items not sent end as cancelled; sent ones are cancelled in the engine."""
        for item in self.items:
            if item.state == WAITING:
                item.state = CANCELLED
        for item in list(self.items):
            if item.state == SENT:
                self._cancel(item.job_id)
        self.changed.emit()
        self._check_finished()

    def handle(self, event: Event) -> None:
        """Connect to the client's event signal; other jobs' events are ignored."""
        item = self._by_job.get(event.job_id)
        if item is None:
            return
        match event:
            case TextResult(text=text):
                item.answer = text
            case Finished():
                item.state = DONE
            case Failed(message=message, code=code):
                item.state = CANCELLED if code == "cancelled" else FAILED
                item.message = "" if code == "cancelled" else message
            case _:
                return
        if item.state != SENT:
            self._fill()
            self.changed.emit()
            self._check_finished()

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(i.label, i.message) for i in self.items if i.state == FAILED]

    def counts(self) -> dict[str, int]:
        states = (WAITING, SENT, DONE, FAILED, CANCELLED)
        return {s: sum(i.state == s for i in self.items) for s in states}

    def _fill(self) -> None:
        while sum(i.state == SENT for i in self.items) < IN_FLIGHT:
            item = next((i for i in self.items if i.state == WAITING), None)
            if item is None:
                return
            item.job_id = new_job_id()
            try:
                request = item.make(item.job_id)
            except (StudioError, OSError) as error:  # an unreadable image: its sentence
                item.state, item.message = FAILED, str(error)
                continue
            item.state = SENT
            self._by_job[item.job_id] = item
            self._submit(request)

    def _check_finished(self) -> None:
        if self.items and all(i.state in (DONE, FAILED, CANCELLED) for i in self.items):
            self.finished.emit()

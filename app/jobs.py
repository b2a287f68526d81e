"""JobList: every job the app has sent, as the queue panel and status bar show it. No widgets.

It follows an EngineClient (its queue and events) and steers it: cancel a queued job, interrupt the
running one, move a job to the front, repeat one with the next seeds, pause after the current job.
Time left comes from the measured rate of the earlier steps of the running stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from engine.protocol import (
    Edit,
    Event,
    Failed,
    Finished,
    Generate,
    ImageResult,
    LoadModel,
    LoadProgress,
    Progress,
    Request,
    TextDelta,
    TextResult,
    Understand,
    Unload,
    new_job_id,
)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
KEEP_ENDED = 50  # ended jobs kept in the list, newest last
MAX_SEED = 2**31 - 1

# What a user can do about a failure, by the engine's Failed.code.
ADVICE = {
    "out_of_memory": "Choose a lower VRAM preset or a smaller image in Settings, then try again.",
    "bad_input": "Change what the job was given (the sentence says what), then try again.",
    "bad_checkpoint": "Open Settings and choose a complete model folder.",
    "no_model": "Open Settings and choose the model folder.",
    "engine_stopped": "The engine restarts by itself; run the job again. If it repeats, "
    "use Help > Collect diagnostics.",
    "shutdown": "Run the job again after the engine has started.",
    "internal": "Run it again; if it repeats, use Help > Collect diagnostics and report it.",
}


@dataclass
class Job:
    """One job as the user sees it."""

    id: str
    kind: str  # "edit", "generate", "chat", "load model", "unload"
    label: str  # a short description: the prompt, instruction or question
    request: Request | None
    state: str = QUEUED
    stage: str = ""
    step: int = 0
    total: int = 0
    message: str = ""  # the engine's sentence when it failed
    advice: str = ""  # what to do about the failure
    started: float | None = None
    ended: float | None = None
    seconds_left: float | None = None  # None until two steps of the stage were measured
    _samples: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


def describe(request: Request) -> tuple[str, str]:
    """(kind, short label) of a request."""
    match request:
        case Edit():
            return "edit", request.instruction
        case Generate():
            return "generate", request.prompt
        case Understand():
            return "chat", request.turns[-1].text if request.turns else ""
        case LoadModel():
            return "load model", request.folder.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        case Unload():
            return "unload", ""
    return type(request).__name__.lower(), ""


def short(text: str, length: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


class JobList(QObject):
    """Follows `client` (an EngineClient, or anything with its signals and queue methods)."""

    jobs_changed = Signal()  # a job was added, removed, reordered, or changed state
    progress_changed = Signal(str)  # job id: its stage, step or time left changed
    job_failed = Signal(str)  # job id; its `message` and `advice` say what happened
    repeated = Signal(str, list)  # original job id, the new job ids (their owner should adopt them)
    paused_changed = Signal(bool)

    def __init__(self, client, clock: Callable[[], float] = time.monotonic, parent=None):
        super().__init__(parent)
        self.client = client
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        # How a repeat is sent: (original job id, new request); the app routes it to the
        # original's owner so its results land where the first ones did.
        self.resubmit: Callable[[str, Request], object] = lambda _, r: client.submit(r)
        client.queue_changed.connect(self._sync_queue)
        client.job_started.connect(self._started)
        client.event_received.connect(self.handle)
        self._sync_queue()

    # ------------------------------------------------------------ reading

    @property
    def jobs(self) -> list[Job]:
        """Ended jobs (oldest first), the running one, then the queue in the order it will run."""
        order = {job_id: i for i, job_id in enumerate(self._queue_ids())}
        ended = [j for j in self._jobs.values() if j.state in ENDED]
        ended.sort(key=lambda j: j.ended or 0.0)
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        queued = sorted((j for j in self._jobs.values() if j.state == QUEUED),
                        key=lambda j: order.get(j.id, len(order)))  # fmt: skip
        return ended + running + queued

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def running(self) -> Job | None:
        return next((j for j in self._jobs.values() if j.state == RUNNING), None)

    @property
    def waiting(self) -> list[Job]:
        return [j for j in self.jobs if j.state == QUEUED]

    @property
    def paused(self) -> bool:
        return self.client.paused

    def overall(self) -> tuple[float, str]:
        """(fraction 0..1 of the running job, a one-line summary) for the status bar and title."""
        job = self.running
        waiting = len(self.waiting)
        others = sum(j.state == RUNNING for j in self._jobs.values()) - 1  # remote servers
        more = ", ".join(
            part for part in (f"+{others} running" if others > 0 else "",
                              f"+{waiting} queued" if waiting else "") if part)  # fmt: skip
        more = f" ({more})" if more else ""
        if job is None:
            paused = " — paused" if self.paused and waiting else ""
            return 0.0, (f"{waiting} queued{paused}" if waiting else "")
        left = f", {format_seconds(job.seconds_left)} left" if job.seconds_left is not None else ""
        stage = f" {job.stage}" if job.stage else ""
        return job.fraction, f"{job.kind.capitalize()}{stage} {job.fraction:.0%}{left}{more}"

    # ------------------------------------------------------------ steering

    def cancel(self, job_id: str) -> None:
        """Drop a queued job, or interrupt the running one at its next step."""
        self.client.cancel(job_id)

    def move_to_front(self, job_id: str) -> None:
        self.client.move_to_front(job_id)

    def set_paused(self, paused: bool) -> None:
        """Paused: the running job finishes; queued ones wait until the queue is resumed."""
        if paused != self.client.paused:
            self.client.set_paused(paused)
            self.paused_changed.emit(paused)

    def repeat(self, job_id: str, count: int = 1) -> list[str]:
        """Queue the job again `count` times with the next seeds; returns the new job ids."""
        job = self._jobs.get(job_id)
        if job is None or not hasattr(job.request, "seed"):
            return []
        new_ids = []
        for n in range(1, count + 1):
            seed = (job.request.seed + n) % (MAX_SEED + 1)
            request = dataclasses.replace(job.request, job_id=new_job_id(), seed=seed)
            self.resubmit(job_id, request)
            new_ids.append(request.job_id)
        self.repeated.emit(job_id, new_ids)
        return new_ids

    def clear_ended(self) -> None:
        for job in [j for j in self._jobs.values() if j.state in ENDED]:
            del self._jobs[job.id]
        self.jobs_changed.emit()

    # ------------------------------------------------------------ following the client

    def handle(self, event: Event) -> None:
        job = self._jobs.get(event.job_id)
        if job is None:
            return
        match event:
            case Progress() | LoadProgress():
                self._progress(job, event.stage, event.step, event.total)
            case TextDelta() | TextResult() | ImageResult():
                pass
            case Finished():
                self._end(job, DONE)
            case Failed(message=message, code=code):
                cancelled = code == "cancelled"
                job.message = message
                job.advice = "" if cancelled else ADVICE.get(code, ADVICE["internal"])
                self._end(job, CANCELLED if cancelled else FAILED)
                if not cancelled:
                    self.job_failed.emit(job.id)

    def _queue_ids(self) -> list[str]:
        return [r.job_id for r in self.client.queued]

    def _sync_queue(self) -> None:
        requests = [*self.client.active, *self.client.queued]
        for request in requests:
            if request.job_id not in self._jobs:
                kind, label = describe(request)
                self._jobs[request.job_id] = Job(request.job_id, kind, short(label), request)
        self._forget_old()
        self.jobs_changed.emit()  # the order may have changed even when no job is new

    def _started(self, job_id: str) -> None:
        self._sync_queue()
        job = self._jobs[job_id]
        job.state, job.started = RUNNING, self._clock()
        self.jobs_changed.emit()

    def _progress(self, job: Job, stage: str, step: int, total: int) -> None:
        now = self._clock()
        if stage != job.stage or step < job.step:
            job._samples = []
        job.stage, job.step, job.total = stage, step, total
        job._samples.append((now, step))
        job.seconds_left = _seconds_left(job._samples, total)
        self.progress_changed.emit(job.id)

    def _end(self, job: Job, state: str) -> None:
        job.state, job.ended, job.seconds_left = state, self._clock(), None
        if state == DONE and job.total:
            job.step = job.total
        self._forget_old()
        self.jobs_changed.emit()

    def _forget_old(self) -> None:
        ended = sorted((j for j in self._jobs.values() if j.state in ENDED),
                       key=lambda j: j.ended or 0.0)  # fmt: skip
        for job in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self._jobs[job.id]


def _seconds_left(samples: list[tuple[float, int]], total: int) -> float | None:
    """Remaining steps at the rate measured over this stage's earlier steps (None: too few)."""
    if len(samples) < 2:
        return None
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    if s1 <= s0 or t1 <= t0:
        return None
    return (total - s1) * (t1 - t0) / (s1 - s0)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

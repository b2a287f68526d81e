"""EngineClient: runs the engine process, queues jobs for it, and hands its events to the GUI.

The only code that knows about processes. It lives on the qasync loop, so every signal and handler
call happens on the GUI thread. One job is in the engine at a time; the rest wait here, where they
can be reordered or cancelled without asking the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from PySide6.QtCore import QObject, Signal

import engine.protocol
from app.backend import Backend, as_backend
from engine.protocol import (
    EVENTS,
    TERMINAL,
    VERSION,
    Cancel,
    Event,
    Failed,
    Finished,
    LoadModel,
    ProtocolError,
    Ready,
    Request,
    Shutdown,
    Status,
    StatusReport,
    Unload,
    encode,
    new_job_id,
    read_message_async,
)

log = logging.getLogger(__name__)

LOG_ENV = "LLADA_STUDIO_ENGINE_LOG"  # the same variable `python -m engine` reads
_IMMEDIATE = (Cancel, Status, Shutdown)  # sent at once, never queued


class EngineError(Exception):
    """The engine could not be started or spoke another protocol; the message is a sentence."""


class Transport(Protocol):
    """One running engine: the real process (`EngineProcess`) or `tests.fakes.FakeEngine`."""

    pid: int

    def send(self, request: Request) -> None: ...
    async def receive(self) -> Event: ...  # raises EOFError once the engine is gone
    def close(self) -> None: ...  # close its stdin: the engine finishes up and exits
    def kill(self) -> None: ...
    async def wait(self) -> int | None: ...


def default_log_path() -> Path:
    if env := os.environ.get(LOG_ENV):
        return Path(env)
    from platformdirs import user_log_path

    return user_log_path("LLaDA Studio", appauthor=False) / "engine.log"


class EngineProcess:
    """`python -m engine` as a child process: frames on its stdin and stdout, stderr to the log."""

    def __init__(self, process: asyncio.subprocess.Process):
        self._process = process
        self.pid = process.pid

    @classmethod
    async def start(cls, log_path: Path | None = None, args: Sequence[str] = ()) -> EngineProcess:
        log_path = log_path or default_log_path()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        root = str(Path(engine.protocol.__file__).resolve().parents[1])
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        )
        no_window = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        _watch_children_in_loop()
        with open(log_path, "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engine",
                "--log",
                str(log_path),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                limit=8 << 20,
                creationflags=no_window,
            )
        return cls(process)

    def send(self, request: Request) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(b"".join(encode(request)))

    async def receive(self) -> Event:
        assert self._process.stdout is not None
        return await read_message_async(self._process.stdout, EVENTS)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    async def wait(self) -> int | None:
        return await self._process.wait()


def _watch_children_in_loop() -> None:
    """On Python 3.11 asyncio reaps each child on a thread of its own, which then calls
    `call_soon_threadsafe`; under qasync that crashed. A pidfd watcher waits in the loop
    instead (3.12 does this by default on Linux). Windows' proactor loop needs no watcher."""
    if sys.platform != "linux" or sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    loop = asyncio.get_running_loop()
    watcher = asyncio.get_child_watcher()
    if not isinstance(watcher, asyncio.PidfdChildWatcher):
        watcher = asyncio.PidfdChildWatcher()
        asyncio.set_child_watcher(watcher)
    if watcher._loop is not loop:  # a watcher serves one loop; tests make one loop per test
        watcher.attach_loop(loop)


StartEngine = Callable[[], Awaitable[Transport | Backend]]  # a Transport is wrapped as a Backend


class EngineClient(QObject):
    """Starts the engine, keeps the job queue, restarts the engine after a crash.

    Every job ends with exactly one Finished or Failed, whether the engine sent it or not.
    """

    event_received = Signal(object)  # every Event, engine-made or client-made
    job_started = Signal(str)  # a job went to the engine
    job_ended = Signal(object)  # its Finished or Failed
    queue_changed = Signal()
    state_changed = Signal(str)  # "stopped", "starting", "ready"
    stopped = Signal(str)  # the engine is gone for good: a sentence for the user

    def __init__(
        self,
        start_engine: StartEngine | None = None,
        *,
        max_restarts: int = 3,
        start_timeout_s: float = 60.0,
        kill_after_s: float = 10.0,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self._start_engine = start_engine or EngineProcess.start
        self._max_restarts = max_restarts  # crashes in a row, with no job finishing in between
        self._start_timeout_s = start_timeout_s
        self._kill_after_s = kill_after_s  # a cancelled job that has not stopped by then is killed
        self._transport: Backend | None = None  # app/backend.py: local process or remote
        self._serve_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[Request] = deque()
        # The jobs the backend is running, oldest first: one for the engine process, up to the
        # servers' capacity for a remote backend. A model load or unload runs alone.
        self._active: dict[str, Request] = {}
        self._interrupting: set[str] = set()  # running jobs that were cancelled
        self._force_timers: dict[str, asyncio.TimerHandle] = {}  # kill a job that ignores cancel
        self._model: LoadModel | None = None  # reloaded after a crash
        self._crashes = 0
        self._closing = False
        self._handlers: list[Callable[[Event], None]] = []
        self._collecting: dict[str, tuple[list[Event], asyncio.Future]] = {}
        self._paused = False  # queued jobs wait; see set_paused
        self.state = "stopped"

    # ------------------------------------------------------------ what the app calls

    @property
    def queued(self) -> tuple[Request, ...]:
        return tuple(self._queue)

    @property
    def running(self) -> Request | None:
        """The oldest running job (the only one, on the local engine)."""
        return next(iter(self._active.values()), None)

    @property
    def active(self) -> tuple[Request, ...]:
        """Every running job, oldest first."""
        return tuple(self._active.values())

    @property
    def model(self) -> LoadModel | None:
        return self._model

    def add_handler(self, handler: Callable[[Event], None], *, first: bool = False) -> None:
        """Call `handler(event)` for every event, on the GUI thread (e.g. `Document.handle`);
        `first`: before the handlers added so far (the history saves results before they show)."""
        if first:
            self._handlers.insert(0, handler)
        else:
            self._handlers.append(handler)

    async def start(self) -> None:
        """Start the engine and wait for it to say it is ready; raises EngineError if it cannot."""
        self._closing = False
        self._loop = asyncio.get_running_loop()
        await self._launch()
        self._serve_task = asyncio.ensure_future(self._serve())
        self._serve_task.add_done_callback(self._served)
        self._dispatch()

    def submit(self, request: Request, *, front: bool = False) -> str:
        """Queue a job at the back (or front); returns its job id. The engine runs one at a time."""
        if isinstance(request, _IMMEDIATE):
            raise ValueError(f"{type(request).__name__} is not a job; use the client's methods")
        if front:
            self._queue.appendleft(request)
        else:
            self._queue.append(request)
        self.queue_changed.emit()
        self._dispatch()
        return request.job_id

    async def run(self, request: Request, *, front: bool = False) -> list[Event]:
        """Queue a job and wait for its end; returns its events, the last a Finished or Failed."""
        future = asyncio.get_running_loop().create_future()
        self._collecting[request.job_id] = ([], future)
        self.submit(request, front=front)
        return await future

    def cancel(self, job_id: str) -> None:
        """Drop a queued job, or interrupt the running one at its next step."""
        for request in self._queue:
            if request.job_id == job_id:
                self._queue.remove(request)
                self.queue_changed.emit()
                self._deliver(Failed(job_id, "The job was cancelled.", "cancelled"))
                return
        if job_id in self._active and self._transport:
            self._interrupting.add(job_id)
            self._transport.cancel(job_id)
            assert self._loop is not None
            self._stop_force_timer(job_id)
            self._force_timers[job_id] = self._loop.call_later(
                self._kill_after_s, self._force_stop, job_id
            )

    def cancel_queued(self) -> None:
        for request in list(self._queue):
            self.cancel(request.job_id)

    def move_to_front(self, job_id: str) -> bool:
        """Make a queued job the next to run; False when it is not waiting in the queue."""
        for request in self._queue:
            if request.job_id == job_id:
                self._queue.remove(request)
                self._queue.appendleft(request)
                self.queue_changed.emit()
                return True
        return False

    @property
    def paused(self) -> bool:
        return self._paused

    def set_paused(self, paused: bool) -> None:
        """Paused: the running job finishes, queued jobs wait (model loads still go through)."""
        if paused != self._paused:
            self._paused = paused
            self.queue_changed.emit()
            self._dispatch()

    async def status(self, timeout_s: float = 10.0) -> StatusReport:
        """What the engine has loaded and where; answered even while a job runs."""
        if self._transport is None or self.state != "ready":
            raise EngineError("The engine is not running.")
        job_id = new_job_id()
        future = asyncio.get_running_loop().create_future()
        self._collecting[job_id] = ([], future)
        self._transport.status(job_id)
        try:
            events = await asyncio.wait_for(future, timeout_s)
        finally:
            self._collecting.pop(job_id, None)
        return events[-1]

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the engine; the running and queued jobs end as Failed with code "shutdown"."""
        self._closing = True
        for job_id in list(self._force_timers):
            self._stop_force_timer(job_id)
        queued, self._queue = list(self._queue), deque()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.shutdown()
            transport.close()
            try:
                await asyncio.wait_for(transport.wait(), timeout_s)
            except TimeoutError:
                transport.kill()
                await transport.wait()
        if self._serve_task is not None:
            self._serve_task.cancel()
            self._serve_task = None
        running, self._active = list(self._active.values()), {}
        for request in running + queued:
            message = "The engine was shut down before this job finished."
            self._deliver(Failed(request.job_id, message, "shutdown"))
        self._set_state("stopped")

    # ------------------------------------------------------------ the engine's side

    async def _launch(self) -> None:
        self._set_state("starting")
        try:
            transport = as_backend(await self._start_engine())
        except OSError as error:
            self._set_state("stopped")
            raise EngineError(f"The engine could not be started: {error}.") from error
        try:
            ready = await asyncio.wait_for(transport.receive(), self._start_timeout_s)
        except (TimeoutError, EOFError, ProtocolError) as error:
            transport.kill()
            self._set_state("stopped")
            raise EngineError("The engine did not start; its log file says why.") from error
        if not isinstance(ready, Ready) or ready.version != VERSION:
            transport.kill()
            self._set_state("stopped")
            version = getattr(ready, "version", "unknown")
            raise EngineError(
                f"The engine speaks protocol version {version} but this app needs {VERSION}; "
                "reinstall LLaDA Studio so both parts match."
            )
        log.info("engine %d ready", ready.pid)
        self._transport = transport
        self._set_state("ready")

    async def _serve(self) -> None:
        while not self._closing:
            transport = self._transport
            if transport is None:
                return
            try:
                event = await transport.receive()
            except (EOFError, ProtocolError, ConnectionError) as error:
                if self._closing or transport is not self._transport:
                    return
                log.warning("engine lost: %r", error)
                if not await self._recover(transport):
                    return
                continue
            self._deliver(event)

    def _served(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the engine client failed", exc_info=task.exception())
            self._set_state("stopped")
            self.stopped.emit("The connection to the engine failed; see the log, then restart.")

    async def _recover(self, transport: Backend) -> bool:
        """The engine died: fail its job, start a new one, reload the model. False: gave up."""
        transport.kill()
        code = None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(transport.wait(), 5.0)
        self._transport = None
        self._set_state("starting")
        jobs, self._active = list(self._active.values()), {}
        crashed = False
        for job in jobs:
            self._stop_force_timer(job.job_id)
            if job.job_id in self._interrupting:
                self._deliver(Failed(job.job_id, "The job was cancelled.", "cancelled"))
            else:
                crashed = True
                message = (
                    f"The engine stopped while running this job (exit code {code}); it restarts."
                )
                self._deliver(Failed(job.job_id, message, "engine_stopped"))
        self._interrupting.clear()
        if crashed or not jobs:
            self._crashes += 1
        while self._crashes <= self._max_restarts and not self._closing:
            await asyncio.sleep(0.1 * self._crashes)
            try:
                await self._launch()
                break
            except EngineError as error:
                log.warning("engine restart failed: %s", error)
                self._crashes += 1
        if self._transport is None:
            self._set_state("stopped")
            self.stopped.emit("The engine keeps stopping; see its log file, then start it again.")
            return False
        if self._model is not None:
            self._queue.appendleft(replace(self._model, job_id=new_job_id()))  # same settings
        self._dispatch()
        return True

    def _stop_force_timer(self, job_id: str) -> None:
        timer = self._force_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def _force_stop(self, job_id: str) -> None:
        self._force_timers.pop(job_id, None)
        if job_id in self._active and self._transport:
            log.warning("job %s did not stop when cancelled; stopping the engine", job_id)
            self._transport.kill()

    def _dispatch(self) -> None:
        """Start queued jobs while the backend has room: the engine process runs one at a time,
        remote servers as many as they take. A model load or unload waits for the running jobs
        and runs alone; a paused queue starts only those."""
        while self._queue and self._transport is not None:
            head = self._queue[0]
            alone = isinstance(head, LoadModel | Unload)
            if self._active and (alone or any(
                    isinstance(r, LoadModel | Unload) for r in self._active.values())):  # fmt: skip
                return
            if len(self._active) >= max(1, getattr(self._transport, "capacity", 1)):
                return
            if self._paused and not alone:
                return
            request = self._queue.popleft()
            self._active[request.job_id] = request
            self._interrupting.discard(request.job_id)
            self._transport.submit(request)
            self.queue_changed.emit()
            self.job_started.emit(request.job_id)

    def _deliver(self, event: Event) -> None:
        if event.job_id in self._collecting:
            events, future = self._collecting[event.job_id]
            events.append(event)
            if isinstance(event, (*TERMINAL, StatusReport)) and not future.done():
                future.set_result(events)
                del self._collecting[event.job_id]
        running = self._active.get(event.job_id) if isinstance(event, TERMINAL) else None
        if running is not None:
            del self._active[event.job_id]
            self._interrupting.discard(event.job_id)
            self._stop_force_timer(event.job_id)  # the job it was armed for has ended
            if isinstance(event, Finished):
                self._crashes = 0
            if isinstance(running, LoadModel | Unload):  # the engine unloads before it loads
                loaded = isinstance(event, Finished) and isinstance(running, LoadModel)
                self._model = running if loaded else None
        self.event_received.emit(event)
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:  # a broken handler must not stop the events for the others
                log.exception("event handler %r failed on %r", handler, event)
        if isinstance(event, TERMINAL):
            self.job_ended.emit(event)
            self._dispatch()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

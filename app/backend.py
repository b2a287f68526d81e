"""Backend: what EngineClient needs from whatever runs its jobs, and how the settings pick one.

Two implementations: the local engine process (`ProcessBackend` around app/engine_client's
EngineProcess, the default, unchanged behaviour) and app/remote.py's `RemoteBackend` (SGLang-Omni
servers). Both speak engine/protocol.py's requests and events, so the GUI, batch and the CLI do
not care which one runs a job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from engine.errors import StudioError
from engine.protocol import Cancel, Event, Request, Shutdown, Status

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Runs jobs and reports on them as events; every job ends with one Finished or Failed."""

    pid: int  # the engine process's id; 0 for a remote backend
    capacity: int  # jobs it runs at once: 1 for the engine process, more for remote servers

    def submit(self, request: Request) -> None: ...
    def cancel(self, job_id: str) -> None: ...  # a Failed "cancelled" follows
    def status(self, job_id: str) -> None: ...  # a StatusReport for job_id follows
    def shutdown(self) -> None: ...  # finish up; jobs still running end
    async def receive(self) -> Event: ...  # the event stream; EOFError once the backend is gone
    def close(self) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int | None: ...


class ProcessBackend:
    """A framed-pipe engine (the real process, or tests.fakes.FakeEngine) as a Backend."""

    capacity = 1  # the engine runs one job at a time

    def __init__(self, transport):
        self.transport = transport
        self.pid = transport.pid

    def submit(self, request: Request) -> None:
        self.transport.send(request)

    def cancel(self, job_id: str) -> None:
        self.transport.send(Cancel(job_id))

    def status(self, job_id: str) -> None:
        self.transport.send(Status(job_id))

    def shutdown(self) -> None:
        self.transport.send(Shutdown())

    async def receive(self) -> Event:
        return await self.transport.receive()

    def close(self) -> None:
        self.transport.close()

    def kill(self) -> None:
        self.transport.kill()

    async def wait(self) -> int | None:
        return await self.transport.wait()


def as_backend(engine) -> Backend:
    """`engine` itself when it is a Backend already, else wrapped as one."""
    if all(hasattr(engine, name) for name in ("submit", "cancel", "status", "shutdown")):
        return engine
    return ProcessBackend(engine)


def remote_options(settings, urls: str | None = None):
    """RemoteOptions from the settings' Backend fields (`urls` overrides their list)."""
    from app.keychain import key_of
    from app.remote import RemoteOptions, api_key, split_urls

    return RemoteOptions(
        split_urls(urls if urls is not None else ",".join(settings.backend_urls)),
        key=api_key(key_of(settings)),
        ca_file=settings.backend_ca_file,
        per_server=settings.backend_in_flight,
        read_timeout_s=settings.backend_timeout_s,
    )


def starter(settings) -> Callable[[], Awaitable[Backend]] | None:
    """EngineClient's `start_engine` for the settings: None (the local process) unless the
    Backend page chose remote servers."""
    if getattr(settings, "backend", "local") != "remote":
        return None
    try:
        options = remote_options(settings)
    except StudioError as error:  # no or bad addresses: the app still opens, on the engine
        log.warning("remote backend not used: %s", error)
        return None

    async def start() -> Backend:
        from app.remote import RemoteBackend

        return RemoteBackend(options)

    return start

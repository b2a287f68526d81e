"""ServerPool: many SGLang-Omni servers (or one sgl-router) behind one call.

Each server takes at most `per_server` requests at a time; a request goes to the server with the
fewest in flight. A server whose request failed before any result (refused, 503) leaves the
rotation and is probed again (`/health`) after `probe_interval_s`. A request is retried on
another server only when it failed before any result came back and not by a timeout: every job
we send is seeded, so a retry makes the same image, while after a timeout the first server may
still be working on it (notes §4.3: no per-request cancel, so a retry would double the work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.remote import Capabilities, RemoteError, ServerClient

log = logging.getLogger(__name__)
T = TypeVar("T")


class Server:
    """One server's place in the rotation."""

    def __init__(self, client: ServerClient):
        self.client = client
        self.url = client.url
        self.in_flight = 0
        self.peak = 0  # the most requests it ever had at once (tests check the bound)
        self.done = 0
        self.in_rotation = True
        self.probing = False  # a health probe is under way
        self.retry_at = 0.0  # monotonic time of the next health probe while out of rotation
        self.why = ""

    @property
    def capabilities(self) -> Capabilities:
        return self.client.capabilities

    def describe(self) -> str:
        state = "in rotation" if self.in_rotation else f"out of rotation ({self.why})"
        return f"{state}, {self.in_flight} in flight, {self.done} done"


class ServerPool:
    def __init__(
        self, clients: list[ServerClient], per_server: int = 2, probe_interval_s: float = 10.0
    ):
        if not clients:
            raise ValueError("a pool needs at least one server")
        self.servers = [Server(client) for client in clients]
        self.per_server = max(1, per_server)
        self.probe_interval_s = probe_interval_s
        self._changed = asyncio.Condition()
        self._probed = False

    async def aclose(self) -> None:
        await asyncio.gather(*(s.client.aclose() for s in self.servers), return_exceptions=True)

    async def probe_all(self) -> list[Capabilities]:
        """Probe every server; those not healthy leave the rotation."""
        found = await asyncio.gather(*(s.client.probe() for s in self.servers))
        for server, caps in zip(self.servers, found):
            if caps.reachable and caps.healthy:
                self._restore(server)
            else:
                self._take_out(server, caps.problem)
        self._probed = True
        return list(found)

    async def check_health(self) -> None:
        """Ask `/health` of every server in rotation; one that fails it leaves the rotation (and
        is probed again after `probe_interval_s`), one out of it whose time has come is asked."""
        serving = [s for s in self.servers if s.in_rotation]
        answers = await asyncio.gather(*(s.client.health() for s in serving))
        for server, healthy in zip(serving, answers):
            if not healthy:
                self._take_out(server, f"{server.url} failed its health check")
        await self._probe_due()

    def missing(self, task: str) -> str:
        """A sentence when no server (in rotation or not) can run `task`, else ""."""
        problems = [s.capabilities.missing(task) for s in self.servers]
        return "" if any(not p for p in problems) else problems[0]

    async def call(
        self, task: str, work: Callable[[ServerClient], Awaitable[T]]
    ) -> tuple[T, Server]:
        """Run `work(client)` on a server that offers `task`; (its result, the server)."""
        if not self._probed:
            await self.probe_all()
        if problem := self.missing(task):
            raise RemoteError(problem)
        failures = 0
        while True:
            server = await self._acquire(task)
            try:
                result = await work(server.client)
            except RemoteError as error:
                retry = error.before_result and not error.timed_out
                if retry:
                    self._take_out(server, str(error))
                failures += 1
                if not retry or failures > len(self.servers):
                    raise
                log.info("a seeded request runs again: %s", error)
                continue
            finally:
                await self._release(server)
            server.done += 1
            return result, server

    async def _acquire(self, task: str) -> Server:
        """A server in rotation with room; waits for room, or once for a probe to bring one
        back; raises when every server stays out of the rotation. Probes run outside the lock,
        so a slow health check never holds up the requests that are finishing."""
        waited_for_probe = False
        while True:
            await self._probe_due()
            async with self._changed:
                usable = [
                    s for s in self.servers if s.in_rotation and not s.capabilities.missing(task)
                ]
                ready = [s for s in usable if s.in_flight < self.per_server]
                if ready:
                    server = min(ready, key=lambda s: (s.in_flight, s.done))
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    return server
                if usable or any(s.probing for s in self.servers):
                    await self._changed.wait()
                    continue
                if waited_for_probe:
                    whys = "; ".join(dict.fromkeys(s.why for s in self.servers if s.why))
                    raise RemoteError(f"No server is available: {whys}")
                waited_for_probe = True
                delay = min(s.retry_at for s in self.servers) - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), max(0.0, delay) + 0.01)

    async def _probe_due(self) -> None:
        """Ask `/health` of every server out of rotation whose time has come (one probe each at
        a time); a healthy one returns to the rotation."""
        now = time.monotonic()
        due = [s for s in self.servers if not s.in_rotation and not s.probing and s.retry_at <= now]
        for server in due:
            server.probing = True
        try:
            for server in due:
                if await server.client.health():
                    if not server.capabilities.healthy:
                        await server.client.probe()
                    self._restore(server)
                else:
                    server.retry_at = time.monotonic() + self.probe_interval_s
        finally:
            for server in due:
                server.probing = False
            if due:
                async with self._changed:
                    self._changed.notify_all()

    async def _release(self, server: Server) -> None:
        async with self._changed:
            server.in_flight -= 1
            self._changed.notify_all()

    def _take_out(self, server: Server, why: str) -> None:
        if server.in_rotation:
            log.warning("server %s leaves the rotation: %s", server.url, why)
        server.in_rotation = False
        server.why = why
        server.retry_at = time.monotonic() + self.probe_interval_s

    def _restore(self, server: Server) -> None:
        if not server.in_rotation:
            log.info("server %s is back in the rotation", server.url)
        server.in_rotation, server.why = True, ""

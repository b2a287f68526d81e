"""The Backend interface: EngineClient runs its jobs on a RemoteBackend exactly as on the engine
process (queue, events, status, honest cancel), and the settings choose which."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio

import numpy as np

from app.backend import ProcessBackend, as_backend, starter
from app.engine_client import EngineClient
from app.remote import CANCELLED, RemoteBackend
from app.settings import Settings
from engine import protocol as p
from tests.fakes import FakeEngine
from tests.remote.double import DoubleServer, seeded_image


def test_the_local_engine_stays_the_default():
    assert starter(Settings()) is None  # EngineClient starts the engine process
    fake = FakeEngine()
    wrapped = as_backend(fake)
    assert isinstance(wrapped, ProcessBackend) and wrapped.pid == fake.pid


def test_engine_client_runs_jobs_on_remote_servers(tmp_path):
    async def body(server):
        settings = Settings(backend="remote", backend_urls=[server.url], backend_timeout_s=10.0)
        client = EngineClient(starter(settings), kill_after_s=0.5)
        seen = []
        client.add_handler(seen.append)
        await client.start()
        loaded = await client.run(p.LoadModel("load", str(tmp_path)))
        assert isinstance(loaded[-1], p.Finished)
        events = await client.run(p.Generate("g", "a boat", 48, 32, seed=4))
        image = [e for e in events if isinstance(e, p.ImageResult)][0]
        assert np.array_equal(image.image, seeded_image(4, 48, 32))
        assert image.metadata["server"] == server.url
        report = await client.status()
        assert report.device == "remote: 1 of 1 servers" and server.url in report.details
        server.delay_s = 1.0
        client.submit(p.Generate("slow", "x", 32, 32))
        await asyncio.sleep(0.2)
        client.cancel("slow")
        await asyncio.sleep(0.2)
        ended = [e for e in seen if e.job_id == "slow" and isinstance(e, p.TERMINAL)]
        await client.shutdown()
        return ended

    with DoubleServer() as server:
        ended = asyncio.run(asyncio.wait_for(body(server), 30))
    assert len(ended) == 1 and ended[0].message == CANCELLED


def test_remote_backend_is_a_backend():
    assert all(hasattr(RemoteBackend, name) for name in ("submit", "cancel", "status", "receive"))


def test_remote_servers_need_no_model_folder():
    assert Settings().needs_setup
    assert Settings(backend="remote", backend_urls=["https://gpu:8000"]).needs_setup is False
    assert Settings(backend="remote").needs_setup  # no server yet: the first-run page still shows


def test_the_queue_keeps_every_server_busy_at_once(tmp_path):
    """Two servers taking one request each: two jobs run side by side, the rest wait in order."""

    async def body(first, second):
        settings = Settings(backend="remote", backend_urls=[first.url, second.url],
                            backend_in_flight=1, backend_timeout_s=10.0)  # fmt: skip
        client = EngineClient(starter(settings), kill_after_s=0.5)
        await client.start()
        await client.run(p.LoadModel("load", str(tmp_path)))
        first.delay_s = second.delay_s = 0.5
        done = [asyncio.ensure_future(client.run(p.Generate(n, "x", 32, 32, seed=i)))
                for i, n in enumerate("abcd")]  # fmt: skip
        await asyncio.sleep(0.2)
        side_by_side = [r.job_id for r in client.active]
        waiting = [r.job_id for r in client.queued]
        events = await asyncio.gather(*done)
        await client.shutdown()
        return side_by_side, waiting, events

    with DoubleServer() as first, DoubleServer() as second:
        side_by_side, waiting, events = asyncio.run(asyncio.wait_for(body(first, second), 30))
        urls = {first.url, second.url}
    assert side_by_side == ["a", "b"] and waiting == ["c", "d"]
    results = [e for run in events for e in run if isinstance(e, p.ImageResult)]
    assert len(results) == 4 and {r.metadata["server"] for r in results} == urls

"""app/engine_client.py against FakeEngine: queue order, cancel, crash recovery, shutdown."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import functools
import inspect

import numpy as np
import pytest

from app.engine_client import EngineClient, EngineError
from engine import protocol as p
from tests.fakes import FakeEngine, FakePipeline

IMAGE = np.random.default_rng(2).integers(0, 256, (8, 6, 3), dtype=np.uint8)


@pytest.fixture
def loop(qasync_loop):
    return qasync_loop


def run(loop, coro, timeout: float = 20.0):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def scenario(test):
    """Run `async test(client, tmp_path)` on a started client with a model, in one loop run.

    One run_until_complete per test, as in the app, where the loop runs for good.
    """

    @functools.wraps(test)
    def wrapper(loop, tmp_path):
        async def body():
            start, engines = FakeEngine.starter(step_s=0.005)
            client = EngineClient(start, kill_after_s=0.5)
            client.engines = engines
            client.seen = []
            client.add_handler(client.seen.append)
            await client.start()
            events = await client.run(p.LoadModel("load", str(tmp_path)))
            assert isinstance(events[-1], p.Finished) and client.model.job_id == "load"
            try:
                await test(client, tmp_path)
            finally:
                await client.shutdown()

        run(loop, body())

    wrapper.__signature__ = inspect.signature(lambda loop, tmp_path: None)
    return wrapper


def ended(client, job_id):
    return [e for e in client.seen if e.job_id == job_id and isinstance(e, p.TERMINAL)]


@scenario
async def test_jobs_give_what_the_pipeline_gives(client, tmp_path):
    started, finished = [], []
    client.job_started.connect(started.append)
    client.job_ended.connect(finished.append)
    events = await client.run(p.Generate("g", "fox", 12, 8, seed=3))
    direct = FakePipeline("", 0).generate("fox", width=12, height=8, seed=3)
    assert np.array_equal(events[-2].image, direct.image)
    events = await client.run(p.Edit("e", IMAGE, "invert"))
    assert np.array_equal(events[-2].image, FakePipeline("", 0).edit(IMAGE, "invert").image)
    events = await client.run(p.Understand("u", (p.ChatTurn("user", "hi", (IMAGE,)),)))
    assert events[-2].text == "I see 1 images and 1 turns; seed 0."
    assert started == ["g", "e", "u"] and [e.job_id for e in finished] == started
    assert all(isinstance(e, p.Finished) for e in finished)


@scenario
async def test_queue_runs_in_order_with_front_insertions(client, tmp_path):
    order = []
    client.job_started.connect(order.append)
    for name in "abc":
        client.submit(p.Generate(name, "x", 4, 4))
    assert client.running.job_id == "a"
    client.submit(p.Generate("urgent", "x", 4, 4), front=True)
    assert [r.job_id for r in client.queued] == ["urgent", "b", "c"]
    await client.run(p.Generate("last", "x", 4, 4))
    assert order == ["a", "urgent", "b", "c", "last"]


@scenario
async def test_cancel_a_queued_job_never_reaches_the_engine(client, tmp_path):
    client.submit(p.Generate("a", "x", 4, 4))
    client.submit(p.Generate("b", "x", 4, 4))
    client.cancel("b")
    assert ended(client, "b") == [p.Failed("b", "The job was cancelled.", "cancelled")]
    await client.run(p.Generate("c", "x", 4, 4))
    assert "b" not in [r.job_id for r in client.engines[0].requests]


@scenario
async def test_cancel_the_running_job_and_the_next_runs(client, tmp_path):
    client.submit(p.Generate("long", "x", 4, 4, steps=1000))
    nxt = asyncio.ensure_future(client.run(p.Generate("next", "x", 4, 4)))
    await asyncio.sleep(0.05)
    client.cancel("long")
    assert isinstance((await nxt)[-1], p.Finished)
    assert ended(client, "long")[0].code == "cancelled"
    progress = [e for e in client.seen if isinstance(e, p.Progress) and e.job_id == "long"]
    assert len(progress) < 100 and len(client.engines) == 1


@scenario
async def test_fifty_jobs_with_some_cancelled_all_end_right(client, tmp_path):
    ids = [f"j{i}" for i in range(50)]
    for job_id in ids:
        client.submit(p.Generate(job_id, "x", 4, 4, steps=1))
    cancelled = set(ids[5::7])
    for job_id in cancelled:
        client.cancel(job_id)
    await client.run(p.Generate("end", "x", 4, 4, steps=1))
    for job_id in ids:
        [event] = ended(client, job_id)
        assert isinstance(event, p.Failed if job_id in cancelled else p.Finished), job_id


@scenario
async def test_an_engine_crash_fails_the_job_restarts_and_reloads(client, tmp_path):
    states = []
    client.state_changed.connect(states.append)
    client.submit(p.Generate("doomed", "x", 4, 4, steps=1000))
    rest = [asyncio.ensure_future(client.run(p.Generate(f"r{i}", "x", 4, 4))) for i in range(3)]
    await asyncio.sleep(0.05)
    client.engines[0].crash()
    results = [await future for future in rest]
    [failed] = ended(client, "doomed")
    assert failed.code == "engine_stopped" and "stopped" in failed.message
    assert all(isinstance(events[-1], p.Finished) for events in results)
    assert len(client.engines) == 2 and states[:2] == ["starting", "ready"]
    reload = client.engines[1].requests[0]
    assert isinstance(reload, p.LoadModel) and reload.folder == str(tmp_path)
    assert client.model == reload


@scenario
async def test_a_job_that_ignores_cancel_is_stopped_by_killing_the_engine(client, tmp_path):
    client.submit(p.Generate("stuck", "hang", 4, 4))
    await asyncio.sleep(0.05)
    client.cancel("stuck")
    events = await client.run(p.Generate("next", "x", 4, 4))
    assert isinstance(events[-1], p.Finished)
    assert ended(client, "stuck") == [p.Failed("stuck", "The job was cancelled.", "cancelled")]
    assert len(client.engines) == 2


@scenario
async def test_status_and_echo(client, tmp_path):
    report = await client.status()
    assert (report.device, report.loaded) == ("cpu", "fake backbone, fake decoder")
    events = await client.run(p.Echo("echo", IMAGE, (2, 2, 3)))
    assert events[0].image.shape == (2, 2, 3)


@scenario
async def test_shutdown_ends_every_job(client, tmp_path):
    client.submit(p.Generate("run", "x", 4, 4, steps=1000))
    client.submit(p.Generate("wait", "x", 4, 4))
    await asyncio.sleep(0.02)
    await client.shutdown()
    assert ended(client, "run")[0].code in ("cancelled", "shutdown")
    assert ended(client, "wait")[0].code == "shutdown"
    assert client.state == "stopped" and client.running is None and not client.queued


def test_wrong_protocol_version_is_refused_with_a_sentence(loop):
    start, _ = FakeEngine.starter(version=p.VERSION + 1)
    with pytest.raises(EngineError, match="protocol version .* reinstall"):
        run(loop, EngineClient(start).start())


def test_gives_up_when_the_engine_keeps_dying(loop):
    engines = []

    async def start():
        if engines:
            raise OSError("no python")
        engines.append(FakeEngine())
        return engines[-1]

    client = EngineClient(start, max_restarts=2)
    stopped = []
    client.stopped.connect(stopped.append)

    async def body():
        await client.start()
        engines[0].crash()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if stopped:
                return

    run(loop, body())
    assert client.state == "stopped" and stopped and "log" in stopped[0]
    client.submit(p.Generate("later", "x"))
    assert [r.job_id for r in client.queued] == ["later"]  # kept for the next start


def test_only_jobs_are_queued():
    with pytest.raises(ValueError):
        EngineClient().submit(p.Cancel("x"))


class SlotsBackend:
    """A backend that runs three jobs at once (as remote servers do) and ends them on demand."""

    pid, capacity = 0, 3

    def __init__(self):
        self.events: asyncio.Queue = asyncio.Queue()
        self.events.put_nowait(p.Ready("", p.VERSION, 0))
        self.submitted: list[str] = []

    def submit(self, request):
        self.submitted.append(request.job_id)

    def end(self, job_id):
        self.events.put_nowait(p.Finished(job_id))

    def cancel(self, job_id):
        self.events.put_nowait(p.Failed(job_id, "The job was cancelled.", "cancelled"))

    def status(self, job_id):
        pass

    def shutdown(self):
        pass

    async def receive(self):
        event = await self.events.get()
        if event is None:
            raise EOFError
        return event

    def close(self):
        self.events.put_nowait(None)

    kill = close

    async def wait(self):
        return 0


def test_a_backend_with_room_for_three_runs_three_and_a_model_load_runs_alone(loop):
    async def body():
        backend = SlotsBackend()

        async def start():
            return backend

        client = EngineClient(start)
        await client.start()
        settle = functools.partial(asyncio.sleep, 0.05)
        client.submit(p.LoadModel("load", "/m"))
        for name in "abcde":
            client.submit(p.Generate(name, "x", 8, 8))
        await settle()
        assert backend.submitted == ["load"]  # alone: the jobs wait for the model
        backend.end("load")
        await settle()
        assert backend.submitted[1:] == ["a", "b", "c"]
        assert [r.job_id for r in client.active] == ["a", "b", "c"] and client.running.job_id == "a"
        client.submit(p.LoadModel("reload", "/m2"))
        client.submit(p.Generate("f", "x", 8, 8))
        backend.end("b")
        await settle()
        assert backend.submitted[4:] == ["d"]  # room for one more, taken in queue order
        client.cancel("a")
        await settle()
        assert backend.submitted[5:] == ["e"]
        assert {r.job_id for r in client.active} == {"c", "d", "e"}
        for name in "cde":
            backend.end(name)
        await settle()
        assert backend.submitted[6:] == ["reload"]  # only once nothing else runs
        backend.end("reload")
        await settle()
        assert backend.submitted[7:] == ["f"] and client.model.job_id == "reload"
        await client.shutdown()
        assert not client.active

    run(loop, body())

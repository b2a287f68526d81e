"""The real engine process (`python -m engine`) through EngineClient, on the tiny checkpoint."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import functools
import importlib.util
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from app.engine_client import EngineClient, EngineProcess
from engine import protocol as p

ROOT = Path(__file__).resolve().parents[2]
HAVE_PIPELINE = all(importlib.util.find_spec(m) for m in ("engine.pipeline", "engine.tiny"))
needs_pipeline = pytest.mark.skipif(
    not HAVE_PIPELINE, reason="engine.pipeline and engine.tiny are not written yet"
)
IMAGE = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Engine and test compute on one thread each: equal results, and no oversubscribed cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if "torch" not in sys.modules:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loop(qasync_loop):
    return qasync_loop


def run(loop, coro, timeout: float = 120.0):
    """One loop run per test, as in the app, where the loop runs for good."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def started(tmp_path: Path, model: Path | None, **options) -> EngineClient:
    start = functools.partial(EngineProcess.start, tmp_path / "engine.log")
    client = EngineClient(start, **options)
    client.seen = []
    client.add_handler(client.seen.append)
    await client.start()
    if model is not None:
        events = await client.run(p.LoadModel("load", str(model), "cpu"))
        assert isinstance(events[-1], p.Finished), events[-1]
    return client


def without_time(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k != "elapsed_s"}


def ended(client, job_id):
    return [e for e in client.seen if e.job_id == job_id and isinstance(e, p.TERMINAL)]


@needs_pipeline
def test_generate_edit_ask_match_the_pipeline_and_a_bad_image_fails_alone(
    loop, tmp_path, tiny_checkpoint
):
    from engine.pipeline import Pipeline, Turn

    direct = Pipeline.load(tiny_checkpoint, device="cpu")
    mask = np.zeros(IMAGE.shape[:2], bool)
    mask[10:40, 20:60] = True
    want_gen = direct.generate("a red fox", width=256, height=256, seed=7)
    want_edit = direct.edit(IMAGE, "make it blue", mask=mask, seed=2)
    want_text = direct.understand(
        [Turn("user", "what is this?", (IMAGE,))], seed=1, steps=4, gen_length=64
    )

    async def body():
        client = await started(tmp_path, tiny_checkpoint)
        try:
            report = await client.status()
            assert report.device == "cpu" and "backbone" in report.loaded
            gen = await client.run(p.Generate("g", "a red fox", 256, 256, seed=7))
            assert any(isinstance(e, p.Progress) for e in gen)
            previews = [e.preview for e in gen if isinstance(e, p.Progress) and e.stage == "decode"]
            assert all(x is not None and x.shape == (32, 32, 3) for x in previews)
            assert np.array_equal(gen[-2].image, want_gen.image)
            assert without_time(gen[-2].metadata) == without_time(want_gen.metadata)
            bad = await client.run(p.Edit("bad", np.arange(5, dtype=np.uint8), "x"))
            assert bad[-1].code == "bad_input" and bad[-1].message.endswith(".")
            edit = await client.run(p.Edit("e", IMAGE, "make it blue", mask, seed=2))
            assert np.array_equal(edit[-2].image, want_edit.image)
            turns = (p.ChatTurn("user", "what is this?", (IMAGE,)),)
            ask = await client.run(p.Understand("u", turns, seed=1, steps=4, max_tokens=64))
            assert ask[-2] == p.TextResult("u", want_text)
            deltas = "".join(e.text for e in ask if isinstance(e, p.TextDelta))
            assert deltas.strip() == want_text.strip()
        finally:
            await client.shutdown()

    run(loop, body())


@needs_pipeline
def test_cancel_ends_the_running_job_within_a_step_and_fifty_jobs_end_right(
    loop, tmp_path, tiny_checkpoint
):
    async def body():
        client = await started(tmp_path, tiny_checkpoint)
        try:
            client.submit(p.Generate("long", "a fox", 1024, 1024, steps=32))
            while not any(isinstance(e, p.Progress) for e in client.seen):
                await asyncio.sleep(0.01)
            client.cancel("long")
            ids = [f"j{i}" for i in range(50)]
            for i, job_id in enumerate(ids):  # every fifth job computes; Echo jobs are cheap
                cheap = p.Echo(job_id, IMAGE, (4, 4, 3))
                client.submit(p.Generate(job_id, "owl", 256, 256, steps=1) if i % 5 == 0 else cheap)
            cancelled = set(ids[3::6])
            for job_id in cancelled:
                client.cancel(job_id)
            await client.run(p.Generate("end", "x", 256, 256, steps=1))
            [stop] = ended(client, "long")
            assert stop == p.Failed("long", "The job was cancelled.", "cancelled")
            at = client.seen.index(stop)
            progress = [e for e in client.seen[:at] if e.job_id == "long"]
            last = progress[-1]  # 1,024 steps of denoising: the cancel stopped it well before
            assert isinstance(last, p.Progress) and last.stage == "denoise tokens"
            assert last.step < last.total
            for job_id in ids:
                [event] = ended(client, job_id)
                assert isinstance(event, p.Failed if job_id in cancelled else p.Finished)
        finally:
            await client.shutdown()

    run(loop, body())


@needs_pipeline
def test_sigkill_mid_job_fails_it_restarts_reloads_and_the_queue_goes_on(
    loop, tmp_path, tiny_checkpoint
):
    async def body():
        client = await started(tmp_path, tiny_checkpoint)
        try:
            pid = client._transport.pid
            client.submit(p.Generate("doomed", "a fox", 1024, 1024, steps=32))
            rest = [
                asyncio.ensure_future(client.run(p.Generate(f"r{i}", "x", 256, 256, steps=1)))
                for i in range(3)
            ]
            while not any(isinstance(e, p.Progress) for e in client.seen):
                await asyncio.sleep(0.01)
            kill(pid)
            results = await asyncio.gather(*rest)
            [failed] = ended(client, "doomed")
            assert failed.code == "engine_stopped" and failed.message.endswith(".")
            assert all(isinstance(events[-1], p.Finished) for events in results)
            assert client._transport.pid != pid and client.model.folder == str(tiny_checkpoint)
            report = await client.status()
            assert "backbone" in report.loaded
        finally:
            await client.shutdown()

    run(loop, body())


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)


def test_malformed_frames_and_unknown_requests_get_errors_and_the_engine_stays_up(tmp_path):
    engine = subprocess.Popen(
        [sys.executable, "-m", "engine", "--log", str(tmp_path / "engine.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        events = p.FrameReader(engine.stdout, p.EVENTS)
        assert events.read().version == p.VERSION
        engine.stdin.write(b"this is not a frame")
        bogus = b'{"type":"Explode","data":{"job_id":"x1"},"arrays":[]}'
        engine.stdin.write(p.MAGIC + len(bogus).to_bytes(4, "little") + bogus)
        p.write_message(engine.stdin, p.Status("s"))
        garbage, unknown, status = events.read(), events.read(), events.read()
        assert garbage.code == unknown.code == "bad_request" and unknown.job_id == "x1"
        assert "Explode" in unknown.message
        assert isinstance(status, p.StatusReport) and status.job_id == "s"
        p.write_message(engine.stdin, p.Generate("g", "x"))
        assert events.read().code == "no_model"
        print("stray output", flush=True)  # the test's own stdout: must not matter to the engine
        engine.stdin.close()
        assert engine.wait(10) == 0
        assert "started" in (tmp_path / "engine.log").read_text()
    finally:
        engine.kill()


PARENT = """
import asyncio, functools, os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from pathlib import Path
from PySide6.QtCore import QCoreApplication
import qasync
from app.engine_client import EngineClient, EngineProcess

async def main():
    client = EngineClient(functools.partial(EngineProcess.start, Path(sys.argv[1])))
    await client.start()
    print(client._transport.pid, flush=True)
    await asyncio.sleep(600)

app = QCoreApplication([])
qasync.run(main())
"""


def test_the_engine_exits_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT), str(tmp_path / "engine.log")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    engine_pid = int(parent.stdout.readline())
    assert alive(engine_pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(engine_pid)


def alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # query limited info
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # an unreaped zombie has exited too
    return not (status.exists() and "State:\tZ" in status.read_text())

"""JobList over EngineClient and FakeEngine: cancel, move to front, pause, repeat, failures, and
the time-left estimate."""

import asyncio
import time

import numpy as np
import pytest
from PySide6.QtCore import QObject, Signal

from app.jobs import ADVICE, CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobList, format_seconds
from engine import protocol as p
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)

IMAGE = np.zeros((8, 6, 3), np.uint8)


def edit(job_id, steps=4, instruction="invert", seed=0, image=IMAGE):
    return p.Edit(job_id, image, instruction, steps=steps, seed=seed)


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def ran(client) -> list[str]:
    return [r.job_id for r in client.engines[-1].requests if isinstance(r, p.Edit)]


@scenario
async def test_cancel_a_queued_job_and_move_one_to_the_front(client, tmp_path):
    jobs = JobList(client)
    for job_id, steps in (("a", 30), ("b", 4), ("c", 4), ("d", 4)):
        client.submit(edit(job_id, steps))
    await until(lambda: jobs.get("a").state == RUNNING)
    assert [j.id for j in jobs.waiting] == ["b", "c", "d"]
    jobs.cancel("b")
    jobs.move_to_front("d")
    assert [j.id for j in jobs.waiting] == ["d", "c"]
    assert jobs.get("b").state == CANCELLED and jobs.get("b").advice == ""
    await until(lambda: jobs.get("c").state == DONE)
    assert ran(client) == ["a", "d", "c"]
    assert [j.kind for j in jobs.jobs] == ["edit"] * 4 and jobs.get("a").label == "invert"


@scenario
async def test_interrupt_the_running_job(client, tmp_path):
    jobs = JobList(client)
    client.submit(edit("long", steps=2000))
    client.submit(edit("next"))
    await until(lambda: jobs.get("long").step > 0)
    jobs.cancel("long")
    await until(lambda: jobs.get("next").state == DONE, timeout=5)
    assert jobs.get("long").state == CANCELLED
    assert jobs.get("long").step < 2000


@scenario
async def test_a_failed_job_shows_the_engines_sentence_and_what_to_do(client, tmp_path):
    jobs = JobList(client)
    failed = []
    jobs.job_failed.connect(failed.append)
    client.submit(edit("bad", image=np.zeros((8, 6), np.uint8)))
    client.submit(edit("after"))
    await until(lambda: jobs.get("after").state == DONE)
    bad = jobs.get("bad")
    assert bad.state == FAILED and failed == ["bad"]
    assert bad.message.startswith("The image to edit is not a readable RGB picture")
    assert bad.advice == ADVICE["bad_input"]


@scenario
async def test_pause_after_the_current_job_then_resume(client, tmp_path):
    jobs = JobList(client)
    client.submit(edit("first", steps=20))
    client.submit(edit("second"))
    await until(lambda: jobs.get("first").state == RUNNING)
    jobs.set_paused(True)
    await until(lambda: jobs.get("first").state == DONE)
    await asyncio.sleep(0.05)
    assert jobs.get("second").state == QUEUED and "paused" in jobs.overall()[1]
    jobs.set_paused(False)
    await until(lambda: jobs.get("second").state == DONE)


@scenario
async def test_repeat_with_the_next_seeds(client, tmp_path):
    jobs = JobList(client)
    adopted = []
    jobs.repeated.connect(lambda original, new: adopted.append((original, new)))
    client.submit(edit("seed7", seed=7))
    await until(lambda: jobs.get("seed7").state == DONE)
    new_ids = jobs.repeat("seed7", 3)
    assert adopted == [("seed7", new_ids)] and len(new_ids) == 3
    await until(lambda: all(jobs.get(i).state == DONE for i in new_ids))
    seeds = [r.seed for r in client.engines[-1].requests if r.job_id in new_ids]
    assert seeds == [8, 9, 10]


@scenario
async def test_time_left_on_a_steady_fake_engine_is_within_20_percent(client, tmp_path):
    jobs = JobList(client)
    samples = []  # (when, step, estimate)
    jobs.progress_changed.connect(
        lambda job_id: samples.append((time.monotonic(), jobs.get(job_id).step,
                                       jobs.get(job_id).seconds_left)))  # fmt: skip
    for engine in client.engines:
        engine._worker._pipeline.step_s = 0.03  # a steady 30 ms a step
    client.submit(edit("steady", steps=40))
    await until(lambda: jobs.get("steady").state == DONE)
    end = samples[-1][0]
    errors = [abs(left - (end - when)) / (end - when)
              for when, step, left in samples if 5 <= step <= 30]  # fmt: skip
    assert len(errors) >= 20
    assert sorted(errors)[len(errors) // 2] < 0.2, errors


class StubClient(QObject):
    queue_changed = Signal()
    job_started = Signal(str)
    event_received = Signal(object)
    queued, running, active, paused = (), None, (), False


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_time_left_from_the_rate_of_earlier_steps_of_the_stage(jitter):
    now = [0.0]
    client = StubClient()
    client.queued = (edit("j", steps=50),)
    jobs = JobList(client, clock=lambda: now[0])
    client.queue_changed.emit()
    client.job_started.emit("j")
    rng = np.random.default_rng(0)
    for step in range(1, 51):  # 0.5 s a step, give or take `jitter`
        now[0] += 0.5 * (1 + jitter * rng.uniform(-1, 1))
        client.event_received.emit(p.Progress("j", "tokens", step, 50))
        if 3 <= step <= 45:
            assert jobs.get("j").seconds_left == pytest.approx((50 - step) * 0.5, rel=0.2)
    now[0] += 1.0
    client.event_received.emit(p.Progress("j", "decode", 1, 8))  # a new stage: measured afresh
    assert jobs.get("j").seconds_left is None
    assert format_seconds(75) == "1 min 15 s"


def test_the_status_line_counts_jobs_running_side_by_side_on_remote_servers():
    client = StubClient()
    client.queued = (edit("a"), edit("b"), edit("c"))
    jobs = JobList(client, clock=lambda: 0.0)
    client.queue_changed.emit()
    client.job_started.emit("a")
    client.job_started.emit("b")
    client.queued = (edit("c"),)
    client.queue_changed.emit()
    client.event_received.emit(p.Progress("a", "tokens", 2, 8))
    assert jobs.overall()[1].endswith("(+1 running, +1 queued)")
    client.event_received.emit(p.Finished("b"))
    assert jobs.overall()[1].endswith("(+1 queued)")

"""engine/worker.py with FakePipeline: jobs in order, cancel between steps, failures stay alone."""

import queue
import threading

import numpy as np
import pytest

from engine import protocol as p
from engine.worker import Worker
from tests.fakes import FakePipeline, fake_pipeline

IMAGE = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)


class Run:
    """A Worker on a thread, as in the engine process; events arrive on `events`."""

    def __init__(self, step_s: float = 0.005):
        self.events: queue.Queue = queue.Queue()
        factory = lambda request, on_progress: fake_pipeline(request, on_progress, step_s)  # noqa: E731
        self.worker = Worker(self.events.put, factory)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def until_end(self, job_id: str, timeout: float = 10.0) -> list:
        got = []
        while True:
            event = self.events.get(timeout=timeout)
            if event.job_id == job_id:
                got.append(event)
                if isinstance(event, (*p.TERMINAL, p.StatusReport)):
                    return got

    def job(self, request) -> list:
        self.worker.accept(request)
        return self.until_end(request.job_id)


@pytest.fixture
def run(tmp_path):
    run = Run()
    assert isinstance(run.job(p.LoadModel("load", str(tmp_path)))[-1], p.Finished)
    yield run
    run.worker.stop()
    run.thread.join(5)
    assert not run.thread.is_alive()


def test_load_reports_progress_and_jobs_give_what_the_pipeline_gives(run, tmp_path):
    fresh = Run()
    events = fresh.job(p.LoadModel("l", str(tmp_path)))
    assert [type(e) for e in events] == [p.LoadProgress, p.LoadProgress, p.Finished]
    fresh.worker.stop()

    events = run.job(p.Generate("g", "a fox", 16, 8, seed=5, steps=3))
    assert [type(e) for e in events] == [p.Progress] * 3 + [p.ImageResult, p.Finished]
    assert [(e.step, e.total) for e in events[:3]] == [(1, 3), (2, 3), (3, 3)]
    direct = FakePipeline(str(tmp_path), 0).generate("a fox", width=16, height=8, seed=5)
    assert np.array_equal(events[3].image, direct.image)
    assert events[3].metadata == direct.metadata

    edited = run.job(p.Edit("e", IMAGE, "invert", IMAGE[..., 0] > 128, seed=2))[-2]
    direct = FakePipeline("", 0).edit(IMAGE, "invert", mask=IMAGE[..., 0] > 128, seed=2)
    assert np.array_equal(edited.image, direct.image)


def test_understand_streams_text_that_adds_up_to_the_answer(run):
    turns = (p.ChatTurn("user", "hi", (IMAGE,)), p.ChatTurn("assistant", "yes"))
    turns += (p.ChatTurn("user", "what?"),)
    events = run.job(p.Understand("u", turns, seed=4))
    deltas = "".join(e.text for e in events if isinstance(e, p.TextDelta))
    result = next(e for e in events if isinstance(e, p.TextResult))
    assert deltas == result.text == "I see 1 images and 3 turns; seed 4."
    assert isinstance(events[-1], p.Finished)


def test_thinking_streams_its_reasoning(run):
    events = run.job(p.Generate("t", "owl", 4, 4, thinking=True))
    assert "".join(e.text for e in events if isinstance(e, p.TextDelta)) == "Thinking about owl."
    assert events[-2].thinking == "Thinking about owl."


def test_a_job_without_a_model_fails_with_a_sentence():
    run = Run()
    failed = run.job(p.Generate("g", "x"))[-1]
    assert failed == p.Failed("g", "No model is loaded; choose a model folder first.", "no_model")
    assert run.job(p.Status("s"))[-1].device == ""
    run.worker.stop()


def test_cancel_stops_the_running_job_within_one_step_and_the_next_runs(run):
    run.worker.accept(p.Generate("long", "x", 4, 4, steps=500))
    run.worker.accept(p.Generate("next", "y", 4, 4, steps=2))
    first = run.events.get(timeout=5)
    assert isinstance(first, p.Progress) and first.job_id == "long"
    run.worker.accept(p.Cancel("long"))
    after = run.until_end("long")
    assert len(after) <= 2  # at most the step already under way, then Failed
    assert after[-1] == p.Failed("long", "The job was cancelled.", "cancelled")
    assert isinstance(run.until_end("next")[-1], p.Finished)


def test_previews_ride_on_their_own_steps_and_never_on_the_next_job(run):
    events = run.job(p.Generate("g", "a fox", 4, 4, steps=3))
    assert [int(e.preview[0, 0, 0]) for e in events[:3]] == [1, 2, 3]
    run.worker.accept(p.Generate("long", "x", 4, 4, steps=500))
    while not isinstance(run.events.get(timeout=5), p.Progress):
        pass
    run.worker.accept(p.Cancel("long"))
    assert run.until_end("long")[-1].code == "cancelled"
    turns = (p.ChatTurn("user", "what?"),)
    after = run.job(p.Understand("u", turns))
    assert all(e.preview is None for e in after if isinstance(e, p.Progress))


def test_a_cancelled_queued_job_never_runs(run):
    run.worker.accept(p.Generate("a", "x", 4, 4, steps=5))
    run.worker.accept(p.Generate("b", "x", 4, 4))
    run.worker.accept(p.Cancel("b"))
    assert isinstance(run.until_end("a")[-1], p.Finished)
    assert run.until_end("b") == [p.Failed("b", "The job was cancelled.", "cancelled")]


@pytest.mark.parametrize(
    "request_, code",
    [
        (p.Edit("bad", np.zeros(12, np.uint8), "x"), "bad_input"),
        (p.Edit("bad", np.zeros((4, 4, 3), np.float32), "x"), "bad_input"),
        (p.Edit("bad", IMAGE, "x", mask=np.ones((2, 2), bool)), "bad_input"),
        (
            p.Understand("bad", (p.ChatTurn("user", "?", (np.zeros((4, 4), np.uint8),)),)),
            "bad_input",
        ),
        (p.Generate("bad", "raise", 4, 4), "internal"),
        (p.Generate("bad", "oom", 4, 4), "out_of_memory"),
    ],
)
def test_a_job_that_raises_fails_alone(run, request_, code):
    failed = run.job(request_)[-1]
    assert isinstance(failed, p.Failed) and failed.code == code
    assert failed.message.endswith(".") and "\n" not in failed.message
    assert isinstance(run.job(p.Generate("after", "ok", 4, 4))[-1], p.Finished)


def test_status_is_answered_while_a_job_runs(run):
    run.worker.accept(p.Generate("busy", "x", 4, 4, steps=50))
    assert run.events.get(timeout=5).job_id == "busy"
    run.worker.accept(p.Status("s"))
    [report] = run.until_end("s")
    assert (report.device, report.running) == ("cpu", "busy")
    assert report.loaded == "fake backbone, fake decoder"
    run.worker.accept(p.Cancel("busy"))
    assert run.until_end("busy")[-1].code == "cancelled"


def test_unload_and_a_failed_load_leave_no_model(run, tmp_path):
    assert isinstance(run.job(p.Unload("u"))[-1], p.Finished)
    assert run.job(p.Generate("g", "x"))[-1].code == "no_model"
    assert run.job(p.LoadModel("l", str(tmp_path / "missing")))[-1].code == "bad_input"
    assert run.job(p.Generate("g2", "x"))[-1].code == "no_model"


def test_cancel_reaches_a_load(tmp_path):
    run = Run(step_s=0.2)
    run.worker.accept(p.LoadModel("l", str(tmp_path)))
    assert isinstance(run.events.get(timeout=5), p.LoadProgress)
    run.worker.accept(p.Cancel("l"))
    assert run.until_end("l")[-1].code == "cancelled"


def test_echo_answers_at_once(run):
    events = run.job(p.Echo("e", IMAGE, (3, 2, 3)))
    assert events[0].image.shape == (3, 2, 3) and isinstance(events[1], p.Finished)


def test_a_masked_edit_previews_say_where_they_sit_and_the_next_job_does_not(run):
    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:50] = True
    events = run.job(p.Edit("e", image, "make it red", mask=mask, steps=3))
    previews = [e for e in events if isinstance(e, p.Progress) and e.preview is not None]
    assert previews and all(e.box == (30, 10, 50, 20) for e in previews)
    after = run.job(p.Generate("g", "a fox", 4, 4, steps=2))
    assert all(e.box is None for e in after if isinstance(e, p.Progress))

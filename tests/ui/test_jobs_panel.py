"""JobsPanel and JobProgress: rows follow the queue, their buttons steer it, a failure shows the
engine's sentence, and the running job's percentage reaches the status bar and window title."""

import asyncio
import re

import numpy as np
from PySide6.QtWidgets import QMainWindow

from app.engine_client import EngineClient
from app.jobs import JobList
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)
from tests.app.test_jobs import edit, until
from ui.jobs_panel import JobProgress, JobsPanel


def test_rows_follow_the_queue_and_their_buttons_steer_it(qtbot):
    client = EngineClient()  # not started: jobs wait in its queue
    jobs = JobList(client)
    panel = JobsPanel(jobs)
    qtbot.addWidget(panel)
    assert not panel.empty.isHidden()
    for job_id in ("a", "b", "c"):
        client.submit(edit(job_id, instruction=f"make it {job_id}"))
    assert [j.id for j in jobs.jobs] == ["a", "b", "c"] and panel.empty.isHidden()
    assert panel.rows["a"].title.text() == "Edit: make it a"
    panel.rows["c"].front.click()
    assert [r.job_id for r in client.queued] == ["c", "a", "b"]
    assert [panel.list.itemAt(i).widget().job_id for i in range(3)] == ["c", "a", "b"]
    panel.rows["a"].cancel.click()
    assert [r.job_id for r in client.queued] == ["c", "b"]
    assert panel.rows["a"].state.text() == "Cancelled"
    assert not panel.rows["a"].cancel.isVisibleTo(panel)
    panel.repeat_count.setValue(2)
    panel.rows["b"].again.click()
    assert len(client.queued) == 4
    panel.pause.click()
    assert client.paused
    panel.clear.click()
    assert "a" not in panel.rows and len(panel.rows) == 4


@scenario
async def test_failed_row_shows_the_sentence_and_title_shows_progress(client, tmp_path):
    jobs = JobList(client)
    window = QMainWindow()
    window.setWindowTitle("photo.png — LLaDA Studio")
    panel, progress = JobsPanel(jobs), JobProgress(jobs, window)
    titles = []
    jobs.progress_changed.connect(lambda _: titles.append(window.windowTitle()))
    client.submit(edit("bad", image=np.zeros((8, 6), np.uint8)))
    client.submit(edit("slow", steps=20))
    await until(lambda: jobs.get("slow").state == "done")
    await asyncio.sleep(0)
    row = panel.rows["bad"]
    assert row.message.text().startswith("The image to edit is not a readable RGB picture")
    assert "try again" in row.message.text() and row.state.text() == "Failed"
    assert any(re.fullmatch(r"\[\d+%\] photo.png — LLaDA Studio", t) for t in titles), titles
    assert window.windowTitle() == "photo.png — LLaDA Studio"
    assert progress.text.text() == "" and not progress.bar.isVisibleTo(progress)

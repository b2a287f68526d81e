"""Session over Workspace, EngineClient and FakeEngine: results reach the history before the
document; an autosaved session comes back after a crash with mask, versions, chat and the jobs that
had not run, which then run."""

import numpy as np

from app.session import Session
from app.settings import Settings
from app.workspace import Workspace
from tests.app.test_chat import slow
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)
from tests.app.test_jobs import until

PHOTO = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def start(client, tmp_path) -> tuple[Workspace, Session]:
    settings = Settings(results_folder=str(tmp_path / "results"), autosave_seconds=0.05)
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    session = Session(settings, client, workspace, tmp_path / "data")
    client.add_handler(session.handle)
    client.add_handler(workspace.handle)
    return workspace, session


@scenario
async def test_results_reach_the_history_before_the_document(client, tmp_path):
    workspace, session = start(client, tmp_path)
    document = workspace.open_image(PHOTO, title="photo")
    seen = []
    document.versions_changed.connect(lambda: seen.append(len(session.history)))
    document.edit("invert it", seed=1)
    await until(lambda: len(document.versions) == 2)
    assert seen and seen[0] == 1
    (entry,) = session.history.search("invert")
    assert entry.path.is_file() and entry.version == "v1"
    assert entry.document == session.key_of(document)


@scenario
async def test_a_crashed_session_comes_back_with_its_unfinished_jobs(client, tmp_path):
    workspace, session = start(client, tmp_path)
    document = workspace.open_image(PHOTO, title="photo")
    document.paint_line([(5, 5), (20, 10)], radius=4)
    chat = session.chat_for(document)
    chat.ask("What is it?", document.image, seed=2)
    await until(lambda: not chat.busy)
    slow(client, 0.05)
    document.edit("first edit", seed=1, steps=200)
    document.edit("second edit", seed=2, steps=4)
    await until(lambda: client.running is not None and client.running.instruction == "first edit")
    session.autosave.save_now()
    session.autosave.stop()  # the app "dies" here: nothing of it is saved any more
    mask = document.mask.coverage.copy()
    crashed_pid = "999999999"  # no such process: the app "died"
    (tmp_path / "data" / "autosave" / "running.lock").write_text(crashed_pid)
    client.cancel_queued()
    client.cancel(client.running.job_id)
    await until(lambda: client.running is None)
    slow(client, 0.005)

    workspace2, session2 = start(client, tmp_path)
    assert session2.crashed
    workspace2.open_image(PHOTO, title="opened before the choice")  # saves nothing yet
    session2.autosave.save_now()
    workspace2.close(workspace2.documents[0])
    assert session2.restore() == []
    (restored,) = workspace2.documents
    assert restored.title == "photo" and np.array_equal(restored.mask.coverage, mask)
    assert [v.id for v in restored.versions] == ["v1"]
    messages = session2.chat_for(restored).messages
    assert [m.text for m in messages] == ["What is it?", "I see 1 images and 1 turns; seed 2."]
    assert sorted(j.request.instruction for j in restored.jobs.values()) == [
        "first edit", "second edit"]  # fmt: skip
    await until(lambda: len(restored.versions) == 3, timeout=20)
    assert {v.metadata.get("instruction") for v in restored.versions[1:]} == {
        "first edit", "second edit"}  # fmt: skip
    assert all(v.parent == "v1" for v in restored.versions[1:])

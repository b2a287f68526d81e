"""app/workspace.py: documents as tabs, events routed by job id, a generated image opens as a new
document, recent files."""

import numpy as np

from app.settings import Settings
from app.workspace import MAX_RECENT, Workspace
from engine import protocol as p

IMAGE = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)


def workspace() -> tuple[Workspace, list]:
    sent = []
    return Workspace(Settings(), sent.append, save_settings=lambda: None), sent


def test_documents_open_as_tabs_and_closing_picks_a_neighbour():
    ws, _ = workspace()
    a = ws.open_image(IMAGE, title="a")
    b = ws.open_image(IMAGE, title="b")
    assert ws.documents == [a, b] and ws.current is b
    ws.set_current(a)
    ws.close(a)
    assert ws.documents == [b] and ws.current is b
    ws.close(b)
    assert ws.documents == [] and ws.current is None


def test_events_reach_the_document_that_owns_the_job():
    ws, sent = workspace()
    a = ws.open_image(IMAGE, title="a")
    b = ws.open_image(IMAGE, title="b")
    request = a.edit("make it blue")
    assert sent == [request]
    result = np.zeros_like(IMAGE)
    for event in (
        p.Progress(request.job_id, "denoise tokens", 1, 4),
        p.ImageResult(request.job_id, result, {"task": "edit"}),
        p.Finished(request.job_id),
    ):
        ws.handle(event)
    assert len(a.versions) == 2 and np.array_equal(a.image, result)
    assert len(b.versions) == 1 and not a.jobs


def test_a_generated_image_opens_as_a_new_document_with_its_thinking_streamed():
    ws, sent = workspace()
    ws.form.set_prompt("a lighthouse at dusk")
    ws.form.set_thinking(True)
    [job] = ws.form.generate()
    assert isinstance(sent[0], p.Generate) and job in ws.generating
    ws.handle(p.TextDelta(job, "Dusk is "))
    ws.handle(p.Progress(job, "denoise tokens", 2, 8, np.zeros((4, 4, 3), np.uint8)))
    assert ws.form.thinking_text == "Dusk is " and ws.generating[job].step == 2
    image = np.full((32, 32, 3), 7, np.uint8)
    ws.handle(p.ImageResult(job, image, {"task": "generate", "prompt": "a lighthouse at dusk"}))
    ws.handle(p.Finished(job))
    [document] = ws.documents
    assert ws.current is document and document.title == "a lighthouse at dusk"
    assert document.versions[0].metadata["prompt"] == "a lighthouse at dusk"
    assert job not in ws.generating


def test_a_failed_generate_shows_its_sentence_and_a_cancel_does_not():
    ws, _ = workspace()
    ws.form.set_prompt("x")
    first, second = ws.form.generate(), ws.form.generate()
    ws.handle(p.Failed(first[0], "The job was cancelled.", "cancelled"))
    assert ws.form.error == ""
    ws.handle(p.Failed(second[0], "Out of memory; try a smaller size.", "out_of_memory"))
    assert ws.form.error == "Out of memory; try a smaller size." and not ws.generating


def test_recent_files_newest_first_without_repeats_and_bounded(tmp_path):
    saved = []
    settings = Settings()
    ws = Workspace(settings, lambda r: None, save_settings=lambda: saved.append(1))
    paths = [tmp_path / f"{i}.png" for i in range(MAX_RECENT + 2)]
    for path in paths:
        ws.add_recent(path)
    ws.add_recent(paths[3])
    assert settings.recent_files[0] == str(paths[3].resolve())
    assert len(settings.recent_files) == MAX_RECENT
    assert len(set(settings.recent_files)) == MAX_RECENT and saved

"""Autosave: documents (image, mask, versions, chat, queued jobs) written atomically and read back;
only what changed is rewritten; a crashed session is recognised by its lock."""

import subprocess
import sys

import numpy as np

from app.autosave import Autosave, DocumentState, SessionStore, VersionState
from engine import protocol as p

rng = np.random.default_rng(0)
IMAGE = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def document(key="d1") -> DocumentState:
    mask = np.zeros((24, 32), np.uint8)
    mask[4:9, 5:20] = 255
    edited = 255 - IMAGE
    versions = [
        VersionState("v0", IMAGE, {"source": "photo.png"}),
        VersionState("v1", edited, {"task": "edit", "seed": "3"}, "v0", "job1", True),
    ]
    jobs = [
        p.Edit("job2", edited, "make it blue", mask=mask > 0, seed=4),
        p.Understand("job3", (p.ChatTurn("user", "what?", (IMAGE,)),), mask=mask > 0),
    ]
    chat = {"messages": [{"role": "user", "text": "what is it?", "images": [], "state": "done"}]}
    return DocumentState(key, "photo.png", "/pictures/photo.png", mask, versions, "v1", "v0",
                         chat, jobs)  # fmt: skip


def same(a: DocumentState, b: DocumentState) -> None:
    assert (a.key, a.title, a.path, a.current, a.viewed, a.chat) == (
        b.key, b.title, b.path, b.current, b.viewed, b.chat)  # fmt: skip
    assert np.array_equal(a.mask, b.mask)
    assert [(v.id, v.metadata, v.parent, v.job_id, v.starred) for v in a.versions] == [
        (v.id, v.metadata, v.parent, v.job_id, v.starred) for v in b.versions]  # fmt: skip
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a.versions, b.versions))
    assert [type(j) for j in a.jobs] == [type(j) for j in b.jobs]
    assert (
        np.array_equal(a.jobs[0].mask, b.jobs[0].mask) and a.jobs[0].instruction == "make it blue"
    )
    assert np.array_equal(a.jobs[1].turns[0].images[0], IMAGE)


def test_documents_round_trip_with_versions_chat_and_queued_jobs(tmp_path):
    store = SessionStore(tmp_path)
    original = [document("d1"), document("d2")]
    assert store.write(original) == 2
    restored, problems = SessionStore(tmp_path).read()
    assert problems == [] and len(restored) == 2
    for a, b in zip(original, restored):
        same(a, b)
    assert not list(tmp_path.glob(".*.tmp"))  # every temporary was renamed


def test_only_changed_documents_are_rewritten_and_closed_ones_removed(tmp_path):
    store = SessionStore(tmp_path)
    one, two = document("d1"), document("d2")
    store.write([one, two])
    assert store.write([one, two]) == 0
    one.mask[0, 0] = 255
    assert store.write([one, two]) == 1
    store.write([one])
    assert not list(tmp_path.glob("*d2*"))
    (restored,), _ = store.read()
    assert restored.mask[0, 0] == 255


def test_a_damaged_document_does_not_hide_the_others(tmp_path):
    store = SessionStore(tmp_path)
    store.write([document("d1"), document("d2")])
    (tmp_path / "doc-d1.npz").write_bytes(b"broken")
    restored, problems = store.read()
    assert [d.key for d in restored] == ["d2"] and len(problems) == 1


def test_a_crash_is_recognised_by_the_lock_of_a_dead_process(tmp_path):
    store = SessionStore(tmp_path)
    store.write([document()])
    assert not store.crashed()  # no lock: a clean end
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / "running.lock").write_text(dead)
    assert store.crashed()
    store.claim()  # this process: alive, so not a crash
    assert not store.crashed()


def test_autosave_waits_for_the_delay_then_saves_and_a_clean_quit_releases(qtbot, tmp_path):
    store = SessionStore(tmp_path)
    documents = [document()]
    autosave = Autosave(store, lambda: documents, delay_s=0.05)
    autosave.start()
    autosave.changed()
    assert not (tmp_path / "session.json").exists()
    with qtbot.waitSignal(autosave.saved, timeout=2000):
        pass
    assert (tmp_path / "session.json").exists()
    autosave.finish()
    assert not (tmp_path / "running.lock").exists() and not store.crashed()

"""History: results land as files plus rows; search, star, delete; a lost or damaged database is
rebuilt from the files; an old schema is migrated."""

import sqlite3

import numpy as np

from app import history as history_module
from app.history import DB_NAME, SCHEMA_VERSION, History


def picture(value: int) -> np.ndarray:
    return np.full((8, 12, 3), value, np.uint8)


def fill(history: History, n: int) -> list:
    entries = []
    for i in range(n):
        meta = {"task": "edit" if i % 2 else "generate", "prompt": f"a red fox number {i}",
                "seed": str(i), "steps": "8"}  # fmt: skip
        entries.append(
            history.add(picture(i), meta, document=f"doc{i}", version="v1", job_id=f"j{i}")
        )
    return entries


def rows(history: History) -> list[tuple]:
    return sorted((str(e.path), e.task, e.prompt, e.seed, e.document, e.version,
                   tuple(sorted(e.parameters.items()))) for e in history.search())  # fmt: skip


def test_results_are_files_with_rows_and_can_be_searched(tmp_path):
    history = History(tmp_path)
    entries = fill(history, 6)
    assert all(e.path.is_file() for e in entries)
    assert len(history) == 6
    assert [e.seed for e in history.search("NUMBER 3")] == ["3"]
    assert {e.task for e in history.search(task="edit")} == {"edit"}
    assert history.search("fox", limit=2)[0].seed == "5"  # newest first
    history.star(entries[2].id)
    assert [e.id for e in history.search(starred=True)] == [entries[2].id]
    assert entries[0].parameters["steps"] == "8" and entries[0].document == "doc0"
    assert history.search("100%") == []  # LIKE wildcards are taken literally


def test_delete_removes_the_file_and_the_row(tmp_path):
    history = History(tmp_path)
    entry = fill(history, 3)[1]
    history.delete(entry.id)
    assert not entry.path.exists()
    assert entry.id not in {e.id for e in history.search()}
    assert len(history) == 2


def test_missing_database_is_rebuilt_from_the_files(tmp_path):
    history = History(tmp_path)
    fill(history, 5)
    before = rows(history)
    history.close()
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    reopened = History(tmp_path)
    assert rows(reopened) == before
    assert "missing" in reopened.notice


def test_corrupt_database_is_set_aside_and_rebuilt(tmp_path):
    history = History(tmp_path)
    fill(history, 4)
    before = rows(history)
    history.close()
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    reopened = History(tmp_path)
    assert rows(reopened) == before
    assert "damaged" in reopened.notice
    assert list(tmp_path.glob(DB_NAME + ".damaged-*"))


def test_an_old_schema_is_migrated_keeping_its_rows(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    for statement in history_module.MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO entries (path, task, prompt, seed, parameters, created) "
               "VALUES ('old.png', 'edit', 'make it blue', '7', '{}', 1.0)")  # fmt: skip
    db.close()
    history = History(tmp_path)
    (entry,) = history.search("blue")
    assert (entry.task, entry.seed, entry.document) == ("edit", "7", "")
    version = history._db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 2

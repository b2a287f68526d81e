"""History: every result as an image file with its metadata embedded, plus a row in SQLite.

The file is the truth and the database an index of it: a result is written to disk (image first,
then its row) before the app shows it, and a missing or damaged database is rebuilt from the
metadata inside the files. Stars, which no image file holds, are also kept in a small JSON list
beside them (rewritten atomically at each change), so a rebuild keeps them too. The database
runs in WAL mode, so a crash mid-write loses at most the row being written, never the file. Its
schema carries a version (`PRAGMA user_version`) and each newer version is one migration step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

DB_NAME = "history.sqlite3"
STARS_NAME = "stars.json"  # the starred files (paths in the folder): stars live in no image file
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Keys this module adds to a result's embedded metadata, so a row can be rebuilt from its file.
KEY_DOCUMENT, KEY_VERSION, KEY_CREATED, KEY_JOB = "document", "version", "created", "job"
_ROW_KEYS = {"task", "prompt", "instruction", "seed", KEY_DOCUMENT, KEY_VERSION, KEY_CREATED}

# Each entry turns schema version i into i + 1; a new column or index is one more entry.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            task TEXT NOT NULL,
            prompt TEXT NOT NULL,
            seed TEXT NOT NULL,
            parameters TEXT NOT NULL,
            created REAL NOT NULL,
            starred INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX entries_created ON entries(created)",
    ),
    (
        "ALTER TABLE entries ADD COLUMN document TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE entries ADD COLUMN version TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX entries_task ON entries(task, starred)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
_COLUMNS = "id, path, task, prompt, seed, parameters, created, starred, document, version"


@dataclass(frozen=True)
class Entry:
    """One result in the history."""

    id: int
    path: Path
    task: str  # "generate", "edit", ...
    prompt: str  # the prompt or the edit instruction
    seed: str
    parameters: dict[str, str]  # everything else the engine said about the result
    created: float  # seconds since the epoch
    starred: bool
    document: str  # the document the job started from ("" for a new picture)
    version: str  # the version of that document the job started from


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):
    """All or nothing: the statements inside commit together or not at all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _image_io() -> tuple[Callable, Callable]:
    """engine/imagefile.py's writer and reader (PNG text chunks, EXIF for JPEG and WebP); until
    that module lands, PNG text chunks through PIL, which it reads back the same way."""
    try:
        from engine import imagefile
    except ImportError:
        return _save_png, _read_png
    return imagefile.save_image, imagefile.read_metadata


def _save_png(path: Path, image: np.ndarray, metadata: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    Image.fromarray(image).save(path, format="PNG", pnginfo=info)


def _read_png(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as picture:
        return dict(getattr(picture, "text", {}))


class History(QObject):
    """The history folder and its database. Methods that change it emit `entries_changed`."""

    entries_changed = Signal()
    rebuilt = Signal(str)  # a sentence: the database was rebuilt from the files, and why

    def __init__(self, folder: Path | str, parent: QObject | None = None):
        super().__init__(parent)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self.notice = ""  # the last rebuild's sentence, for a window that opens later
        self._db = self._open()

    # ------------------------------------------------------------ writing

    def add(
        self,
        image: np.ndarray,
        metadata: dict[str, str],
        *,
        document: str = "",
        version: str = "",
        job_id: str = "",
    ) -> Entry:
        """Write the image file (atomically) with its metadata, then its row; return the entry."""
        created = time.time()
        meta = dict(metadata)
        meta.update({KEY_DOCUMENT: document, KEY_VERSION: version, KEY_CREATED: f"{created:.6f}"})
        if job_id:
            meta[KEY_JOB] = job_id
        path = self._new_path(created, meta.get("task", "image"), job_id)
        temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
        save_image, _ = _image_io()
        save_image(temporary, image, meta)
        os.replace(temporary, path)  # a crash leaves no half-written file under a real name
        with _transaction(self._db):
            entry_id = self._insert(path, meta)
        self.entries_changed.emit()
        return self.get(entry_id)

    def star(self, entry_id: int, starred: bool = True) -> None:
        with _transaction(self._db):
            self._db.execute(
                "UPDATE entries SET starred = ? WHERE id = ?", (int(starred), entry_id)
            )
        self._write_stars()
        self.entries_changed.emit()

    def delete(self, entry_id: int) -> None:
        """Remove the file and its row."""
        entry = self.get(entry_id)
        entry.path.unlink(missing_ok=True)
        with _transaction(self._db):
            self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        if entry.starred:
            self._write_stars()
        self.entries_changed.emit()

    # ------------------------------------------------------------ reading

    def get(self, entry_id: int) -> Entry:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE id = ?", (entry_id,))
        found = row.fetchone()
        if found is None:
            raise KeyError(f"no history entry {entry_id}")
        return self._entry(found)

    def search(
        self,
        text: str = "",
        *,
        task: str | None = None,
        starred: bool | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Newest first; `text` matches anywhere in the prompt, ignoring case."""
        clauses, values = [], []
        for word in text.split():
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("prompt LIKE ? ESCAPE '\\'")
            values.append(f"%{escaped}%")
        if task:
            clauses.append("task = ?")
            values.append(task)
        if starred is not None:
            clauses.append("starred = ?")
            values.append(int(starred))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = f" LIMIT {int(limit)}" if limit else ""
        query = f"SELECT {_COLUMNS} FROM entries {where} ORDER BY created DESC, id DESC{tail}"
        return [self._entry(row) for row in self._db.execute(query, values)]

    def tasks(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT task FROM entries ORDER BY 1")]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    # ------------------------------------------------------------ the database itself

    def rebuild(self, reason: str = "") -> int:
        """Drop every row and read them back from the image files; returns how many."""
        _, read_metadata = _image_io()
        count = 0
        with _transaction(self._db):
            self._db.execute("DELETE FROM entries")
            for path in sorted(self._image_files()):
                try:
                    meta = read_metadata(path)
                except Exception as error:  # one unreadable file must not stop the others
                    log.warning("history: cannot read %s: %s", path, error)
                    continue
                self._insert(path, meta)
                count += 1
            self._db.executemany(
                "UPDATE entries SET starred = 1 WHERE path = ?", [(p,) for p in self._read_stars()]
            )
        if reason:
            self.notice = f"{reason} It was rebuilt from {count} image files; nothing is lost."
            self.rebuilt.emit(self.notice)
        self.entries_changed.emit()
        return count

    def close(self) -> None:
        self._db.close()

    def _open(self) -> sqlite3.Connection:
        existed = self.db_path.exists()
        try:
            db = self._connect()
        except sqlite3.DatabaseError as error:
            log.warning("history database unreadable: %s", error)
            self._set_aside()
            db = self._connect()
            self._db = db
            self.rebuild("The history database was damaged, so it was set aside.")
            return db
        self._db = db
        if not existed and any(True for _ in self._image_files()):
            self.rebuild("The history database was missing.")
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, isolation_level=None)  # transactions: _transaction
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps it consistent after a crash
            self._migrate(db)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this app's")
        for step in range(version, SCHEMA_VERSION):
            with _transaction(db):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")

    def _set_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.db_path.with_name(self.db_path.name + suffix)
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.damaged-{stamp}"))

    def _insert(self, path: Path, meta: dict[str, str]) -> int:
        prompt = meta.get("prompt") or meta.get("instruction") or ""
        try:
            created = float(meta.get(KEY_CREATED, ""))
        except ValueError:
            created = path.stat().st_mtime
        parameters = {k: v for k, v in meta.items() if k not in _ROW_KEYS}
        row = (
            str(path.relative_to(self.folder)),
            meta.get("task", ""),
            prompt,
            meta.get("seed", ""),
            json.dumps(parameters, sort_keys=True),
            created,
            meta.get(KEY_DOCUMENT, ""),
            meta.get(KEY_VERSION, ""),
        )
        cursor = self._db.execute(
            "INSERT OR REPLACE INTO entries"
            " (path, task, prompt, seed, parameters, created, document, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        return cursor.lastrowid

    def _write_stars(self) -> None:
        """The starred paths into STARS_NAME, whole and atomically (a crash keeps the old list)."""
        paths = [row[0] for row in self._db.execute(
            "SELECT path FROM entries WHERE starred = 1 ORDER BY path")]  # fmt: skip
        target = self.folder / STARS_NAME
        temporary = target.with_name(f".{STARS_NAME}.partial")
        temporary.write_text(json.dumps(paths, indent=0))
        os.replace(temporary, target)

    def _read_stars(self) -> list[str]:
        try:
            paths = json.loads((self.folder / STARS_NAME).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            log.warning("history: the list of stars is unreadable: %s", error)
            return []
        return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []

    def _entry(self, row: tuple) -> Entry:
        id_, path, task, prompt, seed, parameters, created, starred, document, version = row
        return Entry(
            id_, self.folder / path, task, prompt, seed, json.loads(parameters), created,
            bool(starred), document, version,
        )  # fmt: skip

    def _new_path(self, created: float, task: str, job_id: str) -> Path:
        day = self.folder / time.strftime("%Y-%m-%d", time.localtime(created))
        day.mkdir(exist_ok=True)
        stamp = time.strftime("%H%M%S", time.localtime(created))
        safe_task = "".join(c for c in task if c.isalnum()) or "image"
        base = f"{stamp}-{safe_task}-{job_id or f'{int(created * 1e6) % 10**6:06d}'}"
        path, n = day / f"{base}.png", 1
        while path.exists():
            path, n = day / f"{base}-{n}.png", n + 1
        return path

    def _image_files(self):
        for path in self.folder.rglob("*"):
            name = path.name
            if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield path

"""Autosave: the open documents (image, mask, versions, chat, queued jobs) written to the app's data
folder a few seconds after each change and on quit, and offered back after a crash.

Every file is written to a temporary name and renamed, so a crash leaves the old file or the new
one, never half of one. Version images never change once made, so each is written once
(`v-<id>.npy`); the mask, the chat and the rest go to `doc-<key>.npz` when they change;
`session.json`, written last, names the documents. A lock file holds the running app's process
id; finding it at start-up with that process gone means the last session crashed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from engine.protocol import REQUESTS, FrameReader, Request, encode

log = logging.getLogger(__name__)

SESSION = "session.json"
LOCK = "running.lock"
FORMAT = 1


@dataclass
class VersionState:
    id: str
    image: np.ndarray  # [H, W, 3] uint8
    metadata: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    job_id: str | None = None
    starred: bool = False


@dataclass
class DocumentState:
    """Everything needed to open a document again as it was."""

    key: str  # stable for the document's life; names its files
    title: str
    path: str | None
    mask: np.ndarray  # [H, W] uint8 coverage
    versions: list[VersionState]
    current: str
    viewed: str
    chat: dict = field(default_factory=dict)  # Conversation.to_dict()
    jobs: list[Request] = field(default_factory=list)  # queued and running: not finished yet


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_requests(requests: list[Request]) -> bytes:
    return b"".join(b"".join(bytes(part) for part in encode(r)) for r in requests)


def decode_requests(data: bytes) -> list[Request]:
    return [m for m in FrameReader(io.BytesIO(data), REQUESTS) if not isinstance(m, Exception)]


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would end the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFO
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SessionStore:
    """The autosave folder: write documents, read them back, and the crash lock."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._written: dict[str, str] = {}  # document key -> fingerprint of its last write

    # ------------------------------------------------------------ the lock

    def crashed(self) -> bool:
        """True when the last session did not end cleanly and left documents."""
        lock = self.folder / LOCK
        if not lock.exists() or not (self.folder / SESSION).exists():
            return False
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            return True
        return pid != os.getpid() and not process_alive(pid)

    def claim(self) -> None:
        _atomic_write(self.folder / LOCK, str(os.getpid()).encode())

    def release(self) -> None:
        (self.folder / LOCK).unlink(missing_ok=True)

    # ------------------------------------------------------------ writing

    def write(self, documents: list[DocumentState]) -> int:
        """Write what changed; returns how many document files were (re)written."""
        written = 0
        for document in documents:
            for version in document.versions:
                path = self.folder / f"v-{document.key}-{version.id}.npy"
                if not path.exists():
                    _atomic_write(path, _npy_bytes(version.image))
            fingerprint = _fingerprint(document)
            path = self._doc_path(document.key)
            if self._written.get(document.key) != fingerprint or not path.exists():
                _atomic_write(path, _document_bytes(document))
                self._written[document.key] = fingerprint
                written += 1
        session = {
            "format": FORMAT,
            "saved": time.time(),
            "documents": [d.key for d in documents],
        }
        _atomic_write(self.folder / SESSION, json.dumps(session, indent=1).encode())
        self._remove_stale(documents)
        return written

    def _doc_path(self, key: str) -> Path:
        return self.folder / f"doc-{key}.npz"

    def _remove_stale(self, documents: list[DocumentState]) -> None:
        keep = {self._doc_path(d.key).name for d in documents}
        keep |= {f"v-{d.key}-{v.id}.npy" for d in documents for v in d.versions}
        for path in self.folder.iterdir():
            if path.name.startswith(("doc-", "v-")) and path.name not in keep:
                path.unlink(missing_ok=True)
        for key in [k for k in self._written if k not in {d.key for d in documents}]:
            del self._written[key]

    # ------------------------------------------------------------ reading

    def read(self) -> tuple[list[DocumentState], list[str]]:
        """The saved documents, and a sentence for each that could not be read back."""
        try:
            session = json.loads((self.folder / SESSION).read_text())
        except (OSError, ValueError):
            return [], ["The autosaved session could not be read."]
        documents, problems = [], []
        for key in session.get("documents", []):
            try:
                documents.append(self._read_document(key))
            except Exception as error:  # one damaged document must not hide the others
                log.warning("autosave: cannot read document %s: %s", key, error)
                problems.append(f"One autosaved document could not be read back ({error}).")
        return documents, problems

    def _read_document(self, key: str) -> DocumentState:
        with np.load(self._doc_path(key), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            mask = np.array(data["mask"])
            jobs = decode_requests(bytes(data["jobs"]))
        versions = [
            VersionState(
                v["id"],
                np.load(self.folder / f"v-{key}-{v['id']}.npy"),
                v["metadata"],
                v["parent"],
                v["job_id"],
                v["starred"],
            )  # fmt: skip
            for v in meta["versions"]
        ]
        return DocumentState(
            key, meta["title"], meta["path"], mask, versions, meta["current"], meta["viewed"],
            meta["chat"], jobs,
        )  # fmt: skip

    def clear(self) -> None:
        """Forget the saved session (after a restore was declined, or on a clean quit)."""
        for path in self.folder.iterdir():
            if path.name == SESSION or path.name.startswith(("doc-", "v-")):
                path.unlink(missing_ok=True)
        self._written.clear()


def _document_meta(document: DocumentState) -> dict:
    return {
        "title": document.title,
        "path": document.path,
        "current": document.current,
        "viewed": document.viewed,
        "chat": document.chat,
        "versions": [
            {
                "id": v.id,
                "metadata": v.metadata,
                "parent": v.parent,
                "job_id": v.job_id,
                "starred": v.starred,
            }  # fmt: skip
            for v in document.versions
        ],
    }


def _document_bytes(document: DocumentState) -> bytes:
    buffer = io.BytesIO()
    meta = json.dumps(_document_meta(document)).encode()
    np.savez(
        buffer,
        meta=np.frombuffer(meta, np.uint8),
        mask=np.ascontiguousarray(document.mask),
        jobs=np.frombuffer(encode_requests(document.jobs), np.uint8),
    )
    return buffer.getvalue()


def _fingerprint(document: DocumentState) -> str:
    digest = hashlib.sha1(json.dumps(_document_meta(document), sort_keys=True).encode())
    digest.update(zlib.crc32(np.ascontiguousarray(document.mask)).to_bytes(4, "little"))
    digest.update(",".join(r.job_id for r in document.jobs).encode())
    return digest.hexdigest()


class Autosave(QObject):
    """Saves `collect()` a few seconds after `changed()` is called, and at `finish()`."""

    saved = Signal(int)  # how many documents were written
    failed = Signal(str)  # a sentence: the autosave could not be written

    def __init__(
        self,
        store: SessionStore,
        collect: Callable[[], list[DocumentState]],
        delay_s: float = 3.0,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.store, self._collect = store, collect
        self.timer = QTimer(self, singleShot=True, interval=round(delay_s * 1000))
        self.timer.timeout.connect(self.save_now)
        self.stopped = False

    def changed(self, *_) -> None:
        """Something in a document changed: save after the delay (counted from the first change
        since the last save, so steady painting still saves every few seconds)."""
        if not self.timer.isActive() and not self.stopped:
            self.timer.start()

    def stop(self) -> None:
        """Save nothing more (after `finish`, or when the app is going down)."""
        self.stopped = True
        self.timer.stop()

    def save_now(self) -> None:
        self.timer.stop()
        if self.stopped:
            return
        try:
            count = self.store.write(self._collect())
        except OSError as error:
            self.failed.emit(f"Autosave could not write to {self.store.folder}: {error}.")
            return
        self.saved.emit(count)

    def start(self) -> None:
        self.store.claim()

    def finish(self) -> None:
        """A clean quit: save, then release the lock, so the next start offers no restore."""
        self.save_now()
        self.stop()
        self.store.release()

"""Session: part 2 of the app joined to the workspace and the engine client. No widgets.

- Each document gets a Conversation (`chat_for`), saved and restored with it.
- Every image result is written to the History before any document or tab sees it (this
  session's event handler is added to the client ahead of the workspace's).
- Autosave follows every change of a document, its chat or the queue, and after a crash the next
  start can `restore` what was open: each document with its mask, versions, chat and the jobs that
  had not run, which are queued again.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from app import qt_workaround
from app.autosave import Autosave, DocumentState, SessionStore, VersionState
from app.chat import Conversation
from app.document import Version
from app.history import History
from app.jobs import JobList
from engine.protocol import Event, Generate, ImageResult, Request, Understand


class Session(QObject):
    """Owns the job list, history, chats and autosave for one running app."""

    restored = Signal(int)  # how many documents came back
    notice = Signal(str)  # a sentence for the status bar (history rebuilt, autosave failed...)

    def __init__(self, settings, client, workspace, data_folder: Path | str, parent=None):
        super().__init__(parent)
        qt_workaround.install(self)  # PySide6 6.12 on Python 3.11 loses a ref to True per emit
        self.settings, self.client, self.workspace = settings, client, workspace
        self.jobs = JobList(client, parent=self)
        self.history = History(settings.results_path, parent=self)
        self.store = SessionStore(Path(data_folder) / "autosave")
        self.autosave = Autosave(self.store, self.states, settings.autosave_seconds, parent=self)
        self.autosave.failed.connect(self.notice)
        self.history.rebuilt.connect(self.notice)
        self._chats: dict[int, Conversation] = {}
        self._keys: dict[int, str] = {}
        self._watched: set[int] = set()
        self._origins: dict[str, tuple[object | None, str | None]] = {}
        self.jobs.resubmit = self._resubmit
        client.queue_changed.connect(self._note_origins)
        client.queue_changed.connect(self.autosave.changed)
        workspace.documents_changed.connect(self._documents_changed)
        self.crashed = self.store.crashed()  # read before this session claims the lock
        self.autosave.start()
        # After a crash nothing is written until the user chose: restore() or discard(); an
        # autosave of this session's (empty) workspace would overwrite what crashed.
        self.autosave.stopped = self.crashed
        if self.history.notice:
            self.notice.emit(self.history.notice)

    def handle(self, event: Event) -> None:
        """Add with `client.add_handler` BEFORE the workspace's handler: results reach the disk
        (history file and row) before they reach a document or a new tab."""
        if isinstance(event, ImageResult):
            self._record(event)
        for conversation in list(self._chats.values()):
            conversation.handle(event)

    # ------------------------------------------------------------ chats

    def chat_for(self, document) -> Conversation:
        key = id(document)
        if key not in self._chats:
            chat = Conversation(self.client.submit, self.client.cancel, parent=self)
            chat.answer_tokens = self.settings.answer_tokens
            chat.steps = self.settings.understand_steps
            chat.messages_changed.connect(self.autosave.changed)
            chat.message_updated.connect(self.autosave.changed)
            self._chats[key] = chat
        return self._chats[key]

    # ------------------------------------------------------------ history

    def _record(self, event: ImageResult) -> None:
        document = self.workspace.owner(event.job_id)
        job = document.jobs.get(event.job_id) if document is not None else None
        try:
            self.history.add(
                np.asarray(event.image), dict(event.metadata),
                document=self.key_of(document) if document is not None else "",
                version=(job.source or "") if job is not None else "", job_id=event.job_id,
            )  # fmt: skip
        except OSError as error:
            self.notice.emit(f"The result could not be saved to {self.history.folder}: {error}.")

    # ------------------------------------------------------------ autosave and restore

    def key_of(self, document) -> str:
        return self._keys.setdefault(id(document), uuid.uuid4().hex[:10])

    def states(self) -> list[DocumentState]:
        return [self.state_of(d) for d in self.workspace.documents]

    def state_of(self, document) -> DocumentState:
        versions = [VersionState(v.id, v.image, dict(v.metadata), v.parent, v.job_id, v.starred)
                    for v in document.versions]  # fmt: skip
        queued = {r.job_id for r in self.client.queued}
        running = {r.job_id for r in self.client.active}
        jobs = [j.request for j in document.jobs.values() if j.job_id in queued | running]
        sources = {j.job_id: j.source for j in document.jobs.values()}
        chat = self.chat_for(document).to_dict()
        chat["job_sources"] = {r.job_id: sources.get(r.job_id) for r in jobs}
        return DocumentState(self.key_of(document), document.title, document.path,
                             document.mask.coverage.copy(), versions, document.current,
                             document.viewed, chat, jobs)  # fmt: skip

    def restore(self) -> list[str]:
        """Open the autosaved documents again and queue their unfinished jobs; returns sentences
        for anything that could not be read back."""
        states, problems = self.store.read()
        for state in states:
            self._restore_one(state)
        self.restored.emit(len(states))
        self.autosave.stopped = False
        self.autosave.save_now()
        return problems

    def discard(self) -> None:
        """The user declined the restore: forget the crashed session."""
        self.store.clear()
        self.autosave.stopped = False
        self.autosave.changed()

    def _restore_one(self, state: DocumentState) -> None:
        first = state.versions[0]
        document = self.workspace.open_image(first.image, path=state.path, title=state.title)
        versions = [
            Version(v.id, v.image, dict(v.metadata), v.parent, v.job_id, v.starred)
            for v in state.versions
        ]
        document.restore(versions, state.current, state.viewed, state.mask)
        self._keys[id(document)] = state.key
        chat = self.chat_for(document)
        sources = state.chat.pop("job_sources", {})
        cut_off = chat.load_dict(state.chat)
        for request in state.jobs:
            if isinstance(request, Understand):
                continue  # the chat asks again below, with the turns as they are now
            document.track(request, sources.get(request.job_id))
        if cut_off:
            chat.regenerate()
        document.image_changed.emit()
        document.versions_changed.emit()
        document.mask_changed.emit(0, 0, state.mask.shape[1], state.mask.shape[0])

    # ------------------------------------------------------------ following documents

    def _documents_changed(self) -> None:
        for document in self.workspace.documents:
            if id(document) in self._watched:
                continue
            self._watched.add(id(document))
            for signal in (document.mask_changed, document.versions_changed,
                           document.job_finished):  # fmt: skip
                signal.connect(self.autosave.changed)
        open_ids = {id(d) for d in self.workspace.documents}
        for key in [k for k in self._chats if k not in open_ids]:
            self._chats.pop(key).clear()
        self._watched &= open_ids
        self.autosave.changed()

    def _note_origins(self, *_) -> None:
        """Remember which document (and version) each job came from, for Repeat."""
        requests = [*self.client.queued, *self.client.active]
        for request in requests:
            if request.job_id not in self._origins:
                document = self.workspace.owner(request.job_id)
                job = document.jobs.get(request.job_id) if document is not None else None
                self._origins[request.job_id] = (document, job.source if job else None)

    def _resubmit(self, original: str, request: Request) -> None:
        """A repeat goes where the original went: its document, or the generate path."""
        document, source = self._origins.get(original, (None, None))
        if document is not None and document in self.workspace.documents:
            document.track(request, source)
        elif isinstance(request, Generate):
            self.workspace.submit_generate(request)  # results open as new tabs, as the first did
        else:
            self.client.submit(request)

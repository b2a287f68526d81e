"""Workspace: the open documents (one tab each), the current one, the generate form and the recent
files; routes each engine event to the document or form that owns its job. No widgets."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from app.document import Document
from app.generate import MAX_SEED, GenerateForm
from app.settings import Settings
from app.tools import Tools
from engine.errors import StudioError
from engine.protocol import (
    Event,
    Failed,
    Finished,
    Generate,
    ImageResult,
    Progress,
    Request,
    TextDelta,
)

MAX_RECENT = 10


class Workspace(QObject):
    documents_changed = Signal()  # a document was opened or closed
    current_changed = Signal()  # another document is in front
    recent_changed = Signal()
    generating_changed = Signal()  # a generate job was queued, progressed or ended
    error_changed = Signal(str)

    def __init__(
        self,
        settings: Settings,
        submit: Callable[[Request], object],
        *,
        save_settings: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.settings = settings
        self._submit = submit  # EngineClient.submit, or a fake in tests
        self._save_settings = save_settings or settings.save
        self.documents: list[Document] = []
        self.current: Document | None = None
        self.form = GenerateForm(self.submit_generate, parent=self)
        self.tools = Tools(
            settings.brush_size, settings.brush_hardness, overlay_opacity=settings.mask_opacity
        )
        self.generating: dict[str, Progress | None] = {}  # generate job -> its last progress
        self.prompts: dict[str, str] = {}  # generate job -> its prompt, for the new tab's title
        self.error = ""
        self.saved_paths: dict[int, str] = {}  # id(document) -> where it was last saved

    # ------------------------------------------------------------ documents

    def open_image(
        self,
        image: np.ndarray,
        *,
        path: str | None = None,
        title: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Document:
        """A new document (tab) for these pixels, made the current one."""
        document = Document(image, self._submit, path=path, title=title, metadata=metadata)
        self.documents.append(document)
        self.documents_changed.emit()
        self.set_current(document)
        return document

    def close(self, document: Document) -> None:
        """Close a tab; its running and queued jobs are cancelled by the caller (the window)."""
        index = self.documents.index(document)
        self.documents.remove(document)
        self.documents_changed.emit()
        if document is self.current:
            rest = self.documents
            self.set_current(rest[min(index, len(rest) - 1)] if rest else None)

    def set_current(self, document: Document | None) -> None:
        if document is not self.current:
            self.current = document
            self.current_changed.emit()

    def edit_parameters(self) -> dict:
        """An edit's parameters from the settings' defaults, with a fresh seed each run."""
        s = self.settings
        return dict(
            seed=random.randint(0, MAX_SEED),
            steps=s.edit_steps,
            cfg_text_scale=s.edit_cfg_text,
            cfg_image_scale=s.edit_cfg_image,
            turbo=s.turbo_decoder,
            decoder_steps=s.decoder_steps or None,
        )

    def set_error(self, error: str) -> None:
        self.error = error
        self.error_changed.emit(error)

    # ------------------------------------------------------------ files

    def open_file(self, path: str) -> Document | None:
        """Open an image file as a new tab, by the engine's rules (EXIF orientation; 16-bit, CMYK
        and alpha converted). An image LLaDA Studio made puts its parameters back into the
        generate panel. A file that cannot be read sets `error` to one sentence."""
        imagefile = _imagefile()
        try:
            image = imagefile.read_image(path)
            metadata = imagefile.read_metadata(path)
        except (StudioError, OSError, ValueError) as error:
            self.set_error(_sentence(error, f"{Path(path).name} could not be opened"))
            return None
        document = self.open_image(image, path=path, title=Path(path).name, metadata=metadata)
        self.form.restore(metadata)
        self.add_recent(path)
        return document

    def save_file(self, document: Document, path: str) -> bool:
        """Write the document's current version with its metadata (PNG text chunks, or EXIF
        UserComment for JPEG and WebP); False with `error` set when it cannot be written."""
        version = document.current_version
        try:
            _imagefile().save_image(
                path, version.image, version.metadata, thinking=version.thinking
            )
        except (StudioError, OSError, ValueError) as error:
            self.set_error(_sentence(error, f"{Path(path).name} could not be saved"))
            return False
        self.saved_paths[id(document)] = path
        self.add_recent(path)
        return True

    # ------------------------------------------------------------ recent files

    def add_recent(self, path: str | Path) -> None:
        path = str(Path(path).resolve())
        recent = [p for p in self.settings.recent_files if p != path]
        self.settings.recent_files = [path, *recent][:MAX_RECENT]
        self._save_settings()
        self.recent_changed.emit()

    def clear_recent(self) -> None:
        self.settings.recent_files = []
        self._save_settings()
        self.recent_changed.emit()

    # ------------------------------------------------------------ engine events

    def submit_generate(self, request: Request) -> None:
        """Queue a text-to-image job; its result opens as a new document."""
        assert isinstance(request, Generate)
        self.generating[request.job_id] = None
        self.prompts[request.job_id] = request.prompt
        self._submit(request)
        self.generating_changed.emit()

    def owner(self, job_id: str) -> Document | None:
        return next((d for d in self.documents if job_id in d.jobs), None)

    def handle(self, event: Event) -> None:
        """Apply one engine event (EngineClient calls this on the GUI thread)."""
        if event.job_id in self.generating:
            self._handle_generate(event)
        else:
            any(document.handle(event) for document in self.documents)

    def _handle_generate(self, event: Event) -> None:
        match event:
            case Progress():
                self.generating[event.job_id] = event
            case TextDelta(job_id, text):
                self.form.add_thinking(job_id, text)
            case ImageResult(job_id, image, metadata):
                title = _title(self.prompts.get(job_id, ""))
                self.open_image(np.array(image), title=title, metadata=metadata)
            case Failed(job_id, message, code):
                self._end_generate(job_id)
                if code != "cancelled":
                    self.form.set_error(message)
                return
            case Finished(job_id):
                self._end_generate(job_id)
                return
        self.generating_changed.emit()

    def _end_generate(self, job_id: str) -> None:
        self.generating.pop(job_id, None)
        self.prompts.pop(job_id, None)
        self.generating_changed.emit()


def _title(prompt: str, length: int = 32) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= length else prompt[: length - 1] + "…"


def _sentence(error: Exception, fallback: str) -> str:
    text = str(error).strip()
    return text if isinstance(error, StudioError) and text else f"{fallback}: {text or error!r}."


def _imagefile():
    """engine/imagefile.py (torch-free: PIL, numpy), imported when first needed."""
    from engine import imagefile

    return imagefile

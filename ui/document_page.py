"""DocumentPage: one tab's result area. The canvas (which also compares two versions and shows a
running job's progress), and a badge that says which version is on screen."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from app.document import Document, Version
from app.tools import Tools
from ui.canvas import SIDE, SPLIT, CanvasView
from ui.progress_overlay import STAGE_NAMES

NORMAL = "normal"


class DocumentPage(QWidget):
    def __init__(self, document: Document, tools: Tools, parent: QWidget | None = None):
        super().__init__(parent)
        self.document = document
        self.mode = NORMAL  # or SPLIT / SIDE while comparing
        self.flipped_from: str | None = None  # the version to return to when Tab is released
        self.canvas = CanvasView(document, tools)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.canvas)
        self.badge = QLabel(self, objectName="viewBadge")
        self.badge.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        document.versions_changed.connect(self.refresh)
        document.image_changed.connect(self.refresh)
        document.progress_changed.connect(self.show_progress)
        document.job_finished.connect(self.show_progress)
        self.refresh()

    # ------------------------------------------------------------ compare and flip

    def set_mode(self, mode: str) -> None:
        """NORMAL shows the canvas; SPLIT and SIDE compare the viewed version with its parent."""
        if mode != NORMAL and self.before_version() is None:
            mode = NORMAL
        self.mode = mode
        self.refresh()

    def before_version(self) -> Version | None:
        """What the viewed version is compared with: its parent, else the current version."""
        document = self.document
        viewed = document.viewed_version
        before = document.version(viewed.parent)
        if before is None and document.current != viewed.id:
            before = document.current_version
        return before

    def flip_to_parent(self, held: bool) -> None:
        """While Tab is held, the viewed version's parent is on screen."""
        document = self.document
        if held and self.flipped_from is None:
            parent = document.version(document.viewed_version.parent)
            if parent is not None:
                self.flipped_from = document.viewed
                document.view_version(parent.id)
        elif not held and self.flipped_from is not None:
            back, self.flipped_from = self.flipped_from, None
            document.view_version(back)

    # ------------------------------------------------------------ showing

    def number(self, version_id: str | None) -> int:
        ids = [v.id for v in self.document.versions]
        return ids.index(version_id) + 1 if version_id in ids else 0

    def refresh(self) -> None:
        before = self.before_version() if self.mode != NORMAL else None
        if before is None:
            self.mode = NORMAL
            if self.canvas.compare_mode is not None:
                self.canvas.set_compare(None)
        else:
            labels = (
                self.tr("Before · version {0}").format(self.number(before.id)),
                self.tr("After · version {0}").format(self.number(self.document.viewed)),
            )
            self.canvas.set_compare(before.image, self.mode, labels)
        self.show_badge()

    def show_badge(self) -> None:
        document = self.document
        count = len(document.versions)
        number = self.number(document.viewed)
        if self.mode != NORMAL:
            kind = "compare"
            how = self.tr("split: drag the line") if self.mode == SPLIT else self.tr("side by side")
            text = self.tr("COMPARING · {0}").format(how)
        elif self.flipped_from is not None:
            kind = "other"
            text = self.tr("PARENT · version {0} of {1} · release Tab").format(number, count)
        elif document.viewed == document.current:
            kind = "current"
            text = self.tr("CURRENT · version {0} of {1}").format(number, count)
        else:
            kind = "other"
            text = self.tr("NOT CURRENT · viewing version {0} of {1}").format(number, count)
        self.badge.setText(text)
        self.badge.setProperty("kind", kind)
        self.badge.style().unpolish(self.badge)
        self.badge.style().polish(self.badge)
        self.badge.adjustSize()
        self.badge.move((self.width() - self.badge.width()) // 2, 10)
        self.badge.raise_()

    def show_progress(self, job_id: str = "") -> None:
        """The canvas shows the document's running job; nothing once no job is left."""
        jobs = list(self.document.jobs.values())
        running = next((j for j in jobs if j.progress is not None), None)
        if running is None:
            if jobs:
                self.canvas.set_progress(self.tr("Preview · waiting for the engine"), 0, 0, None)
            else:
                self.canvas.clear_progress()
            return
        p = running.progress
        stage = self.tr(STAGE_NAMES.get(p.stage, p.stage))
        title = self.tr("Preview · {0}").format(stage)
        self.canvas.set_progress(title, p.step, p.total, p.preview, p.box)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.show_badge()


__all__ = ["NORMAL", "SIDE", "SPLIT", "DocumentPage"]

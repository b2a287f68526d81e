"""ProgressOverlay: over the result area while a job runs, its stage, step and live preview (the
image tokens as they commit, then the decoder's picture), with a button to cancel it."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.protocol import Progress
from ui.pixels import to_pixmap
from ui.theme import icon

STAGE_NAMES = {  # engine/pipeline.py's stage names, as the user reads them
    "load model": "Loading the model",
    "encode image": "Reading the image",
    "thinking": "Thinking",
    "denoise tokens": "Painting tokens",
    "decode": "Decoding",
    "composite": "Blending into the image",
}


class ProgressOverlay(QWidget):
    """Paints a dimmed backdrop and the preview; a card at the bottom holds the words."""

    cancel_requested = Signal(str)  # job id

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.job_id = ""
        self.preview: QPixmap | None = None
        self.stage = QLabel()
        self.stage.setStyleSheet("font-weight: 600; font-size: 11pt; background: transparent;")
        self.step = QLabel(objectName="hint")
        self.bar = QProgressBar(textVisible=False)
        self.bar.setFixedWidth(220)
        self.cancel = QPushButton(icon("stop"), self.tr("Cancel"))
        self.cancel.setToolTip(self.tr("Stop this job at its next step"))
        self.cancel.clicked.connect(lambda: self.cancel_requested.emit(self.job_id))
        card = QWidget(objectName="progressCard")
        card.setStyleSheet(
            "#progressCard { background: rgba(22, 24, 29, 225); border: 1px solid #3a404c;"
            " border-radius: 8px; } #progressCard QLabel { color: #e8ebf0; }"
        )
        row = QHBoxLayout(card)
        words = QVBoxLayout()
        words.addWidget(self.stage)
        words.addWidget(self.step)
        row.addLayout(words, 1)
        row.addWidget(self.bar)
        row.addWidget(self.cancel)
        column = QVBoxLayout(self)
        column.addStretch(1)
        column.addWidget(card, 0, Qt.AlignmentFlag.AlignHCenter)
        column.setContentsMargins(24, 24, 24, 24)
        self.hide()

    def show_progress(self, job_id: str, progress: Progress | None, what: str = "") -> None:
        """Show a job's last progress (None: queued or just started)."""
        self.job_id = job_id
        if progress is None:
            self.stage.setText(what or self.tr("Waiting for the engine"))
            self.step.setText(self.tr("queued"))
            self.bar.setRange(0, 0)  # busy
        else:
            stage = STAGE_NAMES.get(progress.stage, progress.stage)
            self.stage.setText(f"{what} · {self.tr(stage)}" if what else self.tr(stage))
            self.step.setText(self.tr("step {0} of {1}").format(progress.step, progress.total))
            self.bar.setRange(0, max(progress.total, 1))
            self.bar.setValue(progress.step)
            if progress.preview is not None:
                self.set_preview(progress.preview)
        self.show()
        self.raise_()
        self.update()

    def set_preview(self, preview: np.ndarray) -> None:
        self.preview = to_pixmap(preview)

    def finish(self) -> None:
        self.job_id = ""
        self.preview = None
        self.hide()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(14, 15, 19, 150))
        if self.preview is None or self.preview.isNull():
            return
        area = QRectF(self.rect()).adjusted(40, 40, -40, -110)
        scale = min(area.width() / self.preview.width(), area.height() / self.preview.height())
        width, height = self.preview.width() * scale, self.preview.height() * scale
        target = QRectF(
            area.center().x() - width / 2, area.center().y() - height / 2, width, height
        )
        # A token preview is a few dozen pixels: nearest-neighbour shows each token as a block.
        smooth = self.preview.width() >= 128
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        painter.drawPixmap(target, self.preview, QRectF(self.preview.rect()))
        painter.setPen(QColor("#3a404c"))
        painter.drawRect(target)
        tag = self.tr("PREVIEW · not a result yet")
        box = painter.fontMetrics().boundingRect(tag).adjusted(-10, -5, 10, 5)
        box.moveTopLeft(target.topLeft().toPoint() + QPoint(10, 10))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#8a5a12"))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor("#fff4e0"))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, tag)

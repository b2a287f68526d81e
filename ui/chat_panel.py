"""ChatPanel: the chat about the open image. Messages render Markdown (headings, lists, code,
tables) through QTextDocument; answers grow as their tokens arrive. Input goes to a Conversation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtGui import QGuiApplication, QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat import ASSISTANT, DONE, FAILED, STOPPED, STREAMING, Conversation, Message

# What the panel asks about: the document's image and, when the region toggle is on, its mask.
Context = Callable[[], tuple[np.ndarray | None, np.ndarray | None]]
# Images the user may add from the other open documents: (title, image) pairs.
Sources = Callable[[], list[tuple[str, np.ndarray]]]


def thumbnail(image: np.ndarray, side: int = 56) -> QPixmap:
    h, w = image.shape[:2]
    data = np.ascontiguousarray(image)
    qimage = QImage(data.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(
        side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


class MessageView(QFrame):
    """One message: who wrote it, its images, its Markdown, and a copy button."""

    def __init__(self, message: Message, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setObjectName("answer" if message.role == ASSISTANT else "question")
        self.who = QLabel()
        self.copy = QToolButton(text=self.tr("Copy"), autoRaise=True)
        self.copy.setToolTip(self.tr("Copy this message's text"))
        self.copy.clicked.connect(self.copy_text)
        self.images = QHBoxLayout()
        self.images.setSpacing(4)
        self.body = QTextBrowser(openExternalLinks=True, frameShape=QFrame.Shape.NoFrame)
        self.body.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.body.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.body.document().setDocumentMargin(2)
        head = QHBoxLayout()
        head.addWidget(self.who, 1)
        head.addWidget(self.copy)
        column = QVBoxLayout(self)
        column.setContentsMargins(6, 4, 6, 4)
        column.addLayout(head)
        column.addLayout(self.images)
        column.addWidget(self.body)
        self.message = message
        for image in message.images:
            label = QLabel(pixmap=thumbnail(image))
            label.setToolTip(self.tr("{0} × {1} px").format(image.shape[1], image.shape[0]))
            self.images.addWidget(label)
        self.images.addStretch()
        self.refresh()

    def refresh(self) -> None:
        message = self.message
        if message.role == ASSISTANT:
            state = {STREAMING: self.tr(" — writing…"), STOPPED: self.tr(" — stopped"),
                     FAILED: self.tr(" — failed")}.get(message.state, "")  # fmt: skip
            self.who.setText(self.tr("LLaDA") + state)
        else:
            region = self.tr(" (about the painted region)") if message.region is not None else ""
            self.who.setText(self.tr("You") + region)
        text = message.text or (message.error if message.state == FAILED else "")
        if not text and message.state == STREAMING:
            text = "…"  # tokens commit out of order; the text shows once its start is settled
        if not text.strip() and message.role == ASSISTANT and message.state == DONE:
            text = self.tr("*(The model gave an empty answer; Regenerate tries another seed.)*")
        self.body.setMarkdown(text)
        self._fit()

    def copy_text(self) -> None:
        QGuiApplication.clipboard().setText(self.message.text)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        document = self.body.document()
        document.setTextWidth(max(self.body.viewport().width(), 50))
        self.body.setFixedHeight(int(document.size().height()) + 6)


class ChatPanel(QWidget):
    """Ask about the image or a region of it; read, stop, regenerate, copy and clear answers."""

    asked = Signal(str)  # the job id of a question just sent

    def __init__(
        self,
        conversation: Conversation,
        context: Context,
        sources: Sources | None = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.conversation = conversation
        self._context, self._sources = context, sources
        self.views: list[MessageView] = []
        self.list = QVBoxLayout()
        self.list.setSpacing(6)
        self.empty = QLabel(self.tr("Ask anything about the open image. Paint a region and tick "
                                    "“Ask about the painted region” to ask about a part of it."),
                            wordWrap=True, alignment=Qt.AlignmentFlag.AlignCenter)  # fmt: skip
        body = QWidget()
        outer = QVBoxLayout(body)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.empty)
        outer.addLayout(self.list)
        outer.addStretch()
        self.scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        self.scroll.setWidget(body)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._follow)
        self.question = QPlainTextEdit(placeholderText=self.tr("Ask about the image…"))
        self.question.setToolTip(self.tr("Your question; Ctrl+Enter sends it"))
        self.question.setMaximumHeight(90)
        self.region = QCheckBox(self.tr("Ask about the painted region"))
        self.region.setToolTip(self.tr("Send the mask: the model sees only the painted part"))
        self.attach = QPushButton(self.tr("Add image…"))
        self.attach.setToolTip(self.tr("Add another open image to the next question"))
        self.attach.clicked.connect(self._attach_menu)
        self.attach.setVisible(sources is not None)
        self.send = self._button(self.tr("Ask"), self.tr("Send the question (Ctrl+Enter)"),
                                 self.ask)  # fmt: skip
        self.stop = self._button(self.tr("Stop"), self.tr("Stop the answer now"),
                                 conversation.stop)  # fmt: skip
        self.regenerate = self._button(self.tr("Regenerate"),
                                       self.tr("Write the last answer again with a new seed"),
                                       conversation.regenerate)  # fmt: skip
        self.clear = self._button(self.tr("Clear"), self.tr("Start a new conversation"),
                                  conversation.clear)  # fmt: skip
        self.error = QLabel(wordWrap=True)
        self.error.setStyleSheet("color: #d9534f")
        self.attached = QLabel()
        options = QHBoxLayout()
        options.addWidget(self.region)
        options.addStretch()
        options.addWidget(self.attached)
        options.addWidget(self.attach)
        buttons = QHBoxLayout()
        for button in (self.clear, self.regenerate):
            buttons.addWidget(button)
        buttons.addStretch()
        buttons.addWidget(self.stop)
        buttons.addWidget(self.send)
        column = QVBoxLayout(self)
        column.addWidget(self.scroll, 1)
        column.addWidget(self.error)
        column.addWidget(self.question)
        column.addLayout(options)
        column.addLayout(buttons)
        self.question.installEventFilter(self)  # Ctrl+Enter sends, before any window shortcut
        conversation.messages_changed.connect(self.rebuild)
        conversation.message_updated.connect(self._updated)
        conversation.busy_changed.connect(self._enable)
        conversation.error_changed.connect(self._error)
        self.rebuild()
        self._error(conversation.error)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        """Ctrl+Enter in the question box sends it; the box claims the key from window-wide
        shortcuts (Generate has the same keys) while it has the focus."""
        if watched is self.question and event.type() in (QEvent.Type.ShortcutOverride,
                                                         QEvent.Type.KeyPress):  # fmt: skip
            send = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and bool(
                event.modifiers() & Qt.KeyboardModifier.ControlModifier
            )
            if send:
                event.accept()
                if event.type() == QEvent.Type.KeyPress:
                    self.ask()
                return True
        return super().eventFilter(watched, event)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(360, 520)

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    def ask(self) -> None:
        image, mask = self._context()
        region = mask if self.region.isChecked() else None
        if self.region.isChecked() and (mask is None or not mask.any()):
            self._error(
                self.tr("Paint the region first, or untick “Ask about the painted region”.")
            )
            return
        job_id = self.conversation.ask(self.question.toPlainText(), image, region=region)
        if job_id:
            self.question.clear()
            self.asked.emit(job_id)

    def rebuild(self) -> None:
        for view in self.views:
            view.deleteLater()
        self.views = []
        for message in self.conversation.messages:
            view = MessageView(message)
            self.list.addWidget(view)
            self.views.append(view)
        self.empty.setVisible(not self.views)
        count = len(self.conversation.attachments)
        self.attached.setText(self.tr("+{0} image(s)").format(count) if count else "")
        self._enable()

    def _updated(self, index: int) -> None:
        if index < len(self.views):
            self.views[index].refresh()

    def _enable(self, *_) -> None:
        busy = self.conversation.busy
        messages = self.conversation.messages
        self.send.setEnabled(not busy)
        self.stop.setEnabled(busy)
        self.regenerate.setEnabled(not busy and bool(messages) and messages[-1].role == ASSISTANT)
        self.clear.setEnabled(bool(messages))

    def _error(self, sentence: str) -> None:
        self.error.setText(sentence)
        self.error.setVisible(bool(sentence))

    def _follow(self, _low: int, high: int) -> None:
        """Keep the newest text in view while an answer streams."""
        self.scroll.verticalScrollBar().setValue(high)

    def _attach_menu(self) -> None:
        menu = QMenu(self)
        for title, image in self._sources() if self._sources else []:
            menu.addAction(title, lambda image=image: self.conversation.attach(image))
        if menu.isEmpty():
            menu.addAction(self.tr("No other open images")).setEnabled(False)
        menu.popup(self.attach.mapToGlobal(self.attach.rect().bottomLeft()))

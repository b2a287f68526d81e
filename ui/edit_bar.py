"""EditBar: the instruction box under the canvas. Enter runs the edit on the current document:
masked where a mask is painted, the whole image otherwise."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from app.workspace import Workspace
from ui.theme import icon


class EditBar(QWidget):
    def __init__(self, workspace: Workspace, parent: QWidget | None = None):
        super().__init__(parent)
        self.workspace = workspace
        self.instruction = QLineEdit()
        self.instruction.setClearButtonEnabled(True)
        self.instruction.setToolTip(
            self.tr(
                "Say how to change the image; Enter runs it on the painted mask, or on the "
                "whole image when nothing is painted"
            )  # fmt: skip
        )
        self.instruction.returnPressed.connect(self.run)
        self.scope = QLabel(objectName="hint")
        self.scope.setToolTip(self.tr("What the edit will change"))
        self.run_button = QPushButton(icon("run"), self.tr("Edit"))
        self.run_button.setObjectName("primary")
        self.run_button.setToolTip(self.tr("Run the edit (Enter)"))
        self.run_button.clicked.connect(self.run)
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 8, 6)
        row.addWidget(self.instruction, 1)
        row.addWidget(self.scope)
        row.addWidget(self.run_button)
        self._document = None
        self._texts: dict[int, str] = {}  # id(document) -> its unsent instruction
        self._scope_timer = QTimer(self, singleShot=True, interval=150)  # not on every dab
        self._scope_timer.timeout.connect(self.show_scope)
        self._mask_painted = lambda *_: self._scope_timer.start()
        workspace.current_changed.connect(self._follow)
        self._follow()

    def _follow(self) -> None:
        if self._document is not None:
            self._document.mask_changed.disconnect(self._mask_painted)
            self._texts[id(self._document)] = self.instruction.text()  # each tab keeps its own
        self._document = self.workspace.current
        if self._document is not None:
            self._document.mask_changed.connect(self._mask_painted)
        enabled = self._document is not None
        if enabled:  # the tab's own text, else the instruction of an edit this app made
            made = self._document.current_version.metadata.get("instruction", "")
            self.instruction.setText(self._texts.get(id(self._document), made))
        self.instruction.setEnabled(enabled)
        self.run_button.setEnabled(enabled)
        self.show_scope()

    def show_scope(self, *_) -> None:
        document = self._document
        if document is None:
            self.instruction.setPlaceholderText(self.tr("Open an image to edit it"))
            self.scope.setText("")
            return
        masked = document.mask.any()
        self.scope.setText(self.tr("masked edit") if masked else self.tr("whole image"))
        self.instruction.setPlaceholderText(
            self.tr("Describe the change inside the mask…")
            if masked
            else self.tr("Describe the change to the whole image, or paint a mask first…")
        )

    def run(self) -> None:
        text = self.instruction.text().strip()
        if self._document is None or not text:
            return
        self._document.edit(text, **self.workspace.edit_parameters())
        self.instruction.selectAll()  # keep it for a retry; typing replaces it

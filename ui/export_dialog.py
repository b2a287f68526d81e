"""The export dialog: write chosen history entries, all starred ones, or a search result as files
named by a template, in PNG, JPEG or WebP with their metadata (app/export.py does the work)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.export import DEFAULT_TEMPLATE, ExportSettings, export_entries
from engine.errors import StudioError
from ui.files import folder_field

SCOPES = (("selected", "The selected images"), ("starred", "All starred images"),
          ("search", "The search result"))  # fmt: skip


class ExportDialog(QDialog):
    """Choose what to export and how; Export snapshots the settings and writes the files."""

    def __init__(self, history, selected=(), search_text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Export images")
        self.history, self.selected, self.search_text = history, list(selected), search_text
        self.report = None
        self.scope = QComboBox()
        for key, label in SCOPES:
            self.scope.addItem(label, key)
        if not self.selected:
            self.scope.setCurrentIndex(self.scope.findData("starred"))
        self.folder = QLineEdit(str(Path.home() / "Pictures" / "LLaDA Studio"))
        self.template = QLineEdit(DEFAULT_TEMPLATE)
        self.template.setToolTip(
            "Fields: {slug} {prompt} {seed} {index} {date} {time} {source} {task}"
        )
        self.format = QComboBox()
        for name in ("png", "jpeg", "webp"):
            self.format.addItem(name.upper(), name)
        self.quality = QSpinBox()
        self.quality.setRange(1, 100)
        self.quality.setValue(95)
        self.lossless = QCheckBox("Lossless (WebP)")
        self.sidecar = QCheckBox("A .json file beside each image")
        self.overwrite = QCheckBox("Replace files that already exist")
        self.format.currentIndexChanged.connect(self._format_changed)
        self.lossless.toggled.connect(self._format_changed)
        self.progress = QProgressBar()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.ActionRole
        )
        self.export_button.clicked.connect(self.export)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Export", self.scope)
        form.addRow("Folder", folder_field(self.folder, "Export to"))
        form.addRow("Names", self.template)
        form.addRow("Format", self.format)
        form.addRow("Quality", self.quality)
        form.addRow("", self.lossless)
        form.addRow("", self.sidecar)
        form.addRow("", self.overwrite)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self._format_changed()

    def entries(self) -> list:
        match self.scope.currentData():
            case "selected":
                return self.selected
            case "starred":
                return self.history.search(starred=True)
        return self.history.search(self.search_text)

    def settings(self) -> ExportSettings:
        """The settings as they are now; the export uses this snapshot throughout."""
        return ExportSettings(
            folder=Path(self.folder.text()).expanduser(),
            template=self.template.text(),
            format=self.format.currentData(),
            quality=self.quality.value(),
            lossless=self.lossless.isChecked(),
            sidecar=self.sidecar.isChecked(),
            overwrite=self.overwrite.isChecked(),
        )

    def export(self) -> None:
        settings, entries = self.settings(), self.entries()
        if not entries:
            self.message.setText("There is nothing to export in this choice.")
            return
        self.export_button.setEnabled(False)
        self.progress.setRange(0, len(entries))
        try:
            self.report = export_entries(entries, settings, self._progress)
        except StudioError as error:
            self.message.setText(str(error))
            return
        finally:
            self.export_button.setEnabled(True)
        self.message.setText(self.report.summary())

    def _progress(self, done: int, total: int) -> None:
        self.progress.setValue(done)
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.processEvents()  # keep the window painting between files

    def _format_changed(self) -> None:
        lossy = self.format.currentData() in ("jpeg", "webp")
        self.quality.setEnabled(lossy and not self.lossless.isChecked())
        self.lossless.setEnabled(self.format.currentData() == "webp")

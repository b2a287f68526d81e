"""AboutDialog: the versions of the app, Qt, Python, torch (as the engine reports it) and the model,
with a button that copies the full diagnostics."""

from __future__ import annotations

import asyncio

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app import diagnostics


class AboutDialog(QDialog):
    """Shows `diagnostics.gui_versions`, the engine's own report and the model's version."""

    def __init__(self, client=None, model_folder: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.client, self.model_folder = client, model_folder
        self.setWindowTitle(self.tr("About LLaDA Studio"))
        intro = QLabel(self.tr(
            "<h3>LLaDA Studio</h3>Edit images and ask about them with LLaDA2.0-Uni, a discrete "
            "diffusion model that runs on this computer."
        ), wordWrap=True)  # fmt: skip
        self.form = QFormLayout()
        for name, value in diagnostics.gui_versions():
            self.form.addRow(name, QLabel(value))
        self.engine = QLabel(self.tr("asking the engine…"), wordWrap=True)
        self.form.addRow(self.tr("Engine"), self.engine)
        for name, value in diagnostics.model_lines(model_folder):
            self.form.addRow(name, QLabel(value, wordWrap=True))
        self.copy = QPushButton(self.tr("Copy diagnostics"))
        self.copy.setToolTip(self.tr("Copy a report for a bug report: versions, GPU, model "
                                     "status and engine log, nothing private"))  # fmt: skip
        self.copy.clicked.connect(self.copy_diagnostics)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        column = QVBoxLayout(self)
        column.addWidget(intro)
        column.addLayout(self.form)
        column.addWidget(buttons)
        self._ask_engine()

    def _ask_engine(self) -> None:
        client = self.client
        if client is None or getattr(client, "state", "") != "ready":
            self.engine.setText(self.tr("not running"))
            return

        async def ask() -> None:
            try:
                report = await client.status(timeout_s=5.0)
            except Exception as error:  # noqa: BLE001 (shown to the user as it is)
                self.engine.setText(str(error))
                return
            lines = diagnostics.engine_lines(report)
            self.engine.setText("\n".join(f"{k}: {v}" for k, v in lines))

        asyncio.ensure_future(ask())

    def copy_diagnostics(self) -> None:
        """Collect (a few seconds: doctor runs in a child process), then copy to the clipboard."""
        self.copy.setEnabled(False)
        self.copy.setText(self.tr("Collecting…"))

        async def run() -> None:
            text = await diagnostics.collect(self.client, self.model_folder)
            QGuiApplication.clipboard().setText(text)
            self.copy.setText(self.tr("Copied"))
            self.copy.setEnabled(True)

        asyncio.ensure_future(run())

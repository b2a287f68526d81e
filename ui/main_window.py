"""MainWindow: for now it shows which model is set and lets the user choose the model folder."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.settings import Settings


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("LLaDA Studio")
        self.resize(900, 600)
        self.message = QLabel(alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.choose = QPushButton("Choose model folder…")
        self.choose.clicked.connect(self.choose_model)
        column = QVBoxLayout()
        column.addStretch()
        column.addWidget(self.message)
        column.addWidget(self.choose, alignment=Qt.AlignmentFlag.AlignCenter)
        column.addStretch()
        body = QWidget()
        body.setLayout(column)
        self.setCentralWidget(body)
        self.show_model()

    def show_model(self) -> None:
        folder = self.settings.model_folder
        self.message.setText(
            f"Model: {folder}"
            if folder
            else "No model is set yet. Choose the folder you "
            "downloaded LLaDA2.0-Uni into (or one written by python -m engine.tiny)."
        )

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "LLaDA2.0-Uni model folder")
        if folder:
            self.settings.model_folder = folder
            self.settings.save()
            self.show_model()

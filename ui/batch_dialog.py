"""The batch dialog: a prompt list at several seeds, or a folder of images to edit or ask about,
queued into the job queue with the settings of the moment Start is pressed (app/batch_queue.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.batch_queue import BatchQueue, folder_items, prompt_items
from engine.batch import parse_seeds  # torch-free
from engine.errors import StudioError
from ui.files import folder_field

MODES = (("generate", "Make images from a prompt list"), ("edit", "Edit every image of a folder"),
         ("ask", "Ask about every image of a folder"))  # fmt: skip


class BatchDialog(QDialog):
    """`values(task)` returns the panels' current request values for that task (a snapshot)."""

    def __init__(
        self, queue: BatchQueue, values: Callable[[str], dict], parent: QWidget | None = None
    ):
        super().__init__(parent)
        self.setWindowTitle("Batch")
        self.queue, self.values = queue, values
        self.mode = QComboBox()
        for key, label in MODES:
            self.mode.addItem(label, key)
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("One prompt a line")
        self.seeds = QLineEdit("1")
        self.seeds.setToolTip("e.g. 1-4 or 1,5,9")
        self.folder = QLineEdit()
        self.text = QLineEdit()
        self.items = QListWidget()
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.start_button = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = self.buttons.addButton(
            "Cancel the rest", QDialogButtonBox.ButtonRole.ActionRole
        )
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(queue.cancel_rest)
        self.buttons.rejected.connect(self.reject)
        queue.changed.connect(self._show)
        self.mode.currentIndexChanged.connect(self._mode_changed)

        form = QFormLayout()
        form.addRow("Batch", self.mode)
        form.addRow("Prompts", self.prompts)
        form.addRow("Folder", folder_field(self.folder, "Images"))
        self.text_label = QLabel("Instruction")
        form.addRow(self.text_label, self.text)
        form.addRow("Seeds", self.seeds)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.items)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self._mode_changed()
        self._show()

    def start(self) -> None:
        """Snapshot the settings and queue the items; a mistake is one sentence, nothing sent."""
        task = self.mode.currentData()
        try:
            seeds = parse_seeds(self.seeds.text().strip() or "0")
            values = dict(self.values(task))
            if task == "generate":
                prompts = [p.strip() for p in self.prompts.toPlainText().splitlines() if p.strip()]
                if not prompts:
                    raise StudioError("Type at least one prompt, one a line.")
                items = prompt_items(prompts, seeds, values)
            else:
                folder = Path(self.folder.text()).expanduser()
                if not self.text.text().strip():
                    what = "instruction" if task == "edit" else "question"
                    raise StudioError(f"Type the {what} for every image.")
                if not folder.is_dir():
                    raise StudioError(f"The folder {folder} does not exist.")
                text = self.text.text().strip()
                items = []
                for seed in seeds:
                    items += folder_items(folder, task, text, {**values, "seed": seed})
        except StudioError as error:
            self.message.setText(str(error))
            return
        self.message.setText("")
        self.queue.start(items)

    def _show(self) -> None:
        self.items.clear()
        for item in self.queue.items:
            extra = (
                f": {item.message}" if item.message else (f": {item.answer}" if item.answer else "")
            )
            self.items.addItem(f"{item.state:<9} {item.label}{extra}")
        counts = self.queue.counts()
        running = counts["waiting"] + counts["sent"]
        self.cancel_button.setEnabled(running > 0)
        self.start_button.setEnabled(running == 0)
        if self.queue.items:
            failed = self.queue.failures
            text = f"{counts['done']} done, {running} to go, {len(failed)} failed"
            if failed:
                text += ": " + "; ".join(f"{label}: {message}" for label, message in failed)
            self.message.setText(text)

    def _mode_changed(self) -> None:
        task = self.mode.currentData()
        self.prompts.setEnabled(task == "generate")
        self.folder.setEnabled(task != "generate")
        self.text.setEnabled(task != "generate")
        self.text_label.setText("Question" if task == "ask" else "Instruction")

"""HistoryBrowser: every saved result as a thumbnail, searchable by prompt and filtered by task and
star; open one as a document, show it in the file manager, star it, or delete it (file and row)."""

from __future__ import annotations

import subprocess
import sys

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QIcon, QImageReader, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.history import Entry, History

THUMB = 128
SHOWN = 500  # newest matches shown; the search narrows the rest
THUMBS_PER_TICK = 24  # thumbnails read per event-loop turn, so the window never stalls


def reveal(path) -> None:
    """Show the file selected in the platform's file manager (its folder where that is all)."""
    if sys.platform == "win32":
        subprocess.Popen(["explorer", "/select,", str(path)])
    elif sys.platform == "darwin":
        subprocess.Popen(["open", "-R", str(path)])
    else:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent)))


def read_thumbnail(path) -> QPixmap:
    reader = QImageReader(str(path))
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(size.scaled(THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio))
    return QPixmap.fromImage(reader.read())


class HistoryBrowser(QWidget):
    """The history as a grid of thumbnails with search and filters."""

    open_requested = Signal(object)  # the Entry to open as a document

    def __init__(self, history: History, parent: QWidget | None = None):
        super().__init__(parent)
        self.history = history
        self.search = QLineEdit(placeholderText=self.tr("Search prompts…"), clearButtonEnabled=True)
        self.search.setToolTip(self.tr("Shows results whose prompt or instruction has every word"))
        self.task = QComboBox()
        self.task.setToolTip(self.tr("Show one kind of result"))
        self.starred = QCheckBox(self.tr("Starred"))
        self.starred.setToolTip(self.tr("Show only starred results"))
        self.grid = QListWidget(viewMode=QListWidget.ViewMode.IconMode, uniformItemSizes=True,
                                movement=QListWidget.Movement.Static, wordWrap=True, spacing=6,
                                resizeMode=QListWidget.ResizeMode.Adjust)  # fmt: skip
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.grid.itemDoubleClicked.connect(
            lambda item: self.open_requested.emit(self._entry(item))
        )
        self.grid.itemSelectionChanged.connect(self._selection)
        self.open = self._button(self.tr("Open"), self.tr("Open as a new document"), self._open)
        self.star = self._button(self.tr("Star"), self.tr("Star or unstar"), self._star)
        self.show_file = self._button(self.tr("Show file"), self.tr("Show it in the file manager"),
                                      self._reveal)  # fmt: skip
        self.delete = self._button(self.tr("Delete"), self.tr("Delete the file and its entry"),
                                   self._delete)  # fmt: skip
        self.count = QLabel()
        self.details = QLabel(wordWrap=True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        filters = QHBoxLayout()
        filters.addWidget(self.search, 1)
        filters.addWidget(self.task)
        filters.addWidget(self.starred)
        actions = QHBoxLayout()
        for button in (self.open, self.star, self.show_file, self.delete):
            actions.addWidget(button)
        actions.addStretch()
        actions.addWidget(self.count)
        column = QVBoxLayout(self)
        column.addLayout(filters)
        column.addWidget(self.grid, 1)
        column.addWidget(self.details)
        column.addLayout(actions)
        self._pending: list[QListWidgetItem] = []
        self._thumbs = QTimer(self, interval=0)
        self._thumbs.timeout.connect(self._load_some)
        self._debounce = QTimer(self, singleShot=True, interval=150)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(self._debounce.start)
        self.task.currentIndexChanged.connect(self.refresh)
        self.starred.toggled.connect(self.refresh)
        history.entries_changed.connect(self._debounce.start)
        self._fill_tasks()
        self.refresh()

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    def refresh(self) -> None:
        self._fill_tasks()
        entries = self.history.search(
            self.search.text(),
            task=self.task.currentData() or None,
            starred=True if self.starred.isChecked() else None,
            limit=SHOWN,
        )
        self.grid.clear()
        self._pending = []
        for entry in entries:
            item = QListWidgetItem(("★ " if entry.starred else "") + _short(entry.prompt))
            item.setData(Qt.ItemDataRole.UserRole, entry)
            item.setToolTip(f"{entry.task}: {entry.prompt}\nseed {entry.seed}")
            item.setSizeHint(QSize(THUMB + 16, THUMB + 40))
            self.grid.addItem(item)
            self._pending.append(item)
        self._thumbs.start()
        total = len(self.history)
        self.count.setText(self.tr("{0} of {1}").format(len(entries), total))
        self._selection()

    def selected(self) -> list[Entry]:
        return [self._entry(item) for item in self.grid.selectedItems()]

    # ------------------------------------------------------------ inside

    def _fill_tasks(self) -> None:
        tasks = self.history.tasks()
        shown = [self.task.itemData(i) for i in range(1, self.task.count())]
        if self.task.count() and shown == tasks:
            return
        current = self.task.currentData()
        self.task.blockSignals(True)
        self.task.clear()
        self.task.addItem(self.tr("All tasks"), "")
        for task in tasks:
            self.task.addItem(task, task)
        self.task.setCurrentIndex(max(0, self.task.findData(current)))
        self.task.blockSignals(False)

    def _load_some(self) -> None:
        batch, self._pending = self._pending[:THUMBS_PER_TICK], self._pending[THUMBS_PER_TICK:]
        for item in batch:
            item.setIcon(QIcon(read_thumbnail(self._entry(item).path)))
        if not self._pending:
            self._thumbs.stop()

    def _entry(self, item: QListWidgetItem) -> Entry:
        return item.data(Qt.ItemDataRole.UserRole)

    def _selection(self) -> None:
        chosen = self.selected()
        for button in (self.open, self.star, self.show_file, self.delete):
            button.setEnabled(bool(chosen))
        if len(chosen) == 1:
            e = chosen[0]
            p = e.parameters
            size = f"{p['width']}×{p['height']}" if "width" in p and "height" in p else ""
            shown = [e.task, f"seed {e.seed}", size, f"{p['steps']} steps" if "steps" in p else "",
                     e.path.name]  # fmt: skip
            self.details.setText(" · ".join(x for x in shown if x) + f"\n{e.prompt}")
            self.details.setToolTip("\n".join(f"{k}: {v}" for k, v in sorted(p.items())))
        else:
            self.details.setText("")

    def _open(self) -> None:
        for entry in self.selected():
            self.open_requested.emit(entry)

    def _star(self) -> None:
        chosen = self.selected()
        starred = not all(e.starred for e in chosen)
        for entry in chosen:
            self.history.star(entry.id, starred)

    def _reveal(self) -> None:
        for entry in self.selected()[:1]:
            reveal(entry.path)

    def _delete(self) -> None:
        chosen = self.selected()
        if not chosen:
            return
        answer = QMessageBox.question(
            self, self.tr("Delete results"),
            self.tr("Delete {0} result(s)? The image files are deleted too.").format(len(chosen)),
        )  # fmt: skip
        if answer == QMessageBox.StandardButton.Yes:
            for entry in chosen:
                self.history.delete(entry.id)


def _short(text: str, length: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"

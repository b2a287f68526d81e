"""HelpDialog: every keyboard shortcut, read from the window's actions and shortcuts (so the list
is never out of date), plus the keys widgets handle themselves, which they `register` here."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLineEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

# Keys a widget handles in its own key or mouse events: (keys, what they do, where).
_REGISTERED: list[tuple[str, str, str]] = []


def register(keys: str, description: str, area: str) -> None:
    """Name a key a widget handles itself (e.g. the canvas's Space-drag), once at import."""
    if (keys, description, area) not in _REGISTERED:
        _REGISTERED.append((keys, description, area))


def shortcuts(window: QWidget) -> list[tuple[str, str, str]]:
    """(keys, description, area) for every action and shortcut under `window`, then registered
    ones; sorted by area and keys."""
    found = []
    for action in window.findChildren(QAction):
        for sequence in action.shortcuts():
            text = action.text().replace("&", "").rstrip("…. ")
            found.append((sequence.toString(QKeySequence.SequenceFormat.NativeText),
                          action.toolTip() if not text else text, _area(action)))  # fmt: skip
    for shortcut in window.findChildren(QShortcut):
        keys = shortcut.key().toString(QKeySequence.SequenceFormat.NativeText)
        what = shortcut.whatsThis() or shortcut.parent().toolTip() or shortcut.objectName()
        if keys:
            found.append((keys, what, _area(shortcut)))
    found += _REGISTERED
    return sorted(set(found), key=lambda row: (row[2], row[0]))


def _area(obj) -> str:
    """The panel or menu a shortcut belongs to: the nearest named parent's title."""
    parent = obj.parent()
    while parent is not None:
        title = parent.property("helpArea") or getattr(parent, "title", lambda: "")()
        if isinstance(title, str) and title:
            return title.replace("&", "")
        if parent.windowTitle() and parent.isWindow():
            return "Window"
        parent = parent.parent()
    return "Window"


class HelpDialog(QDialog):
    """The shortcuts as a searchable table."""

    def __init__(self, window: QWidget, parent: QWidget | None = None):
        super().__init__(parent or window)
        self.setWindowTitle(self.tr("Keyboard shortcuts"))
        self.resize(560, 520)
        self.filter = QLineEdit(placeholderText=self.tr("Filter…"), clearButtonEnabled=True)
        self.filter.setToolTip(self.tr("Show the shortcuts whose keys or description match"))
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels([self.tr("Keys"), self.tr("Does"), self.tr("Where")])
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.rows = shortcuts(window)
        self.table.setRowCount(len(self.rows))
        for row, cells in enumerate(self.rows):
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.filter.textChanged.connect(self._filter)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        column = QVBoxLayout(self)
        column.addWidget(self.filter)
        column.addWidget(self.table)
        column.addWidget(buttons)

    def _filter(self, text: str) -> None:
        words = text.lower().split()
        for row, cells in enumerate(self.rows):
            haystack = " ".join(cells).lower()
            self.table.setRowHidden(row, not all(w in haystack for w in words))


register("Ctrl+Enter", "Send the chat question", "Chat")

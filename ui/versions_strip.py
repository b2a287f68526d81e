"""VersionsStrip: the current document's versions as thumbnails; click one to view it, and make it
current, star it or delete it from its buttons or its context menu."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.document import Document
from app.workspace import Workspace
from ui.pixels import to_pixmap
from ui.theme import icon

THUMB = 88  # px, the long side of a thumbnail
CURRENT_COLOUR, VIEWED_COLOUR, STAR_COLOUR = "#5cc98a", "#7aa2ff", "#f0c75a"


class VersionsStrip(QWidget):
    def __init__(self, workspace: Workspace, parent: QWidget | None = None):
        super().__init__(parent)
        self.workspace = workspace
        self.document: Document | None = None
        self._thumbs: dict[tuple[int, str], QPixmap] = {}  # (document id, version id) -> thumb
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setFlow(QListWidget.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setMovement(QListWidget.Movement.Static)
        self.list.setIconSize(QSize(THUMB + 8, THUMB + 8))
        self.list.setFixedHeight(THUMB + 44)
        self.list.setSpacing(4)
        self.list.setToolTip(self.tr("Versions: click to view; hold Tab to see the parent"))
        self.list.itemClicked.connect(self._clicked)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.make_current_button = self._button("current", self.tr("Make this version current"))
        self.star_button = self._button("star", self.tr("Star or unstar this version"))
        self.delete_button = self._button("delete", self.tr("Delete this version"))
        self.make_current_button.clicked.connect(self.make_current)
        self.star_button.clicked.connect(self.toggle_star)
        self.delete_button.clicked.connect(self.delete)
        buttons = QVBoxLayout()
        for button in (self.make_current_button, self.star_button, self.delete_button):
            buttons.addWidget(button)
        buttons.addStretch()
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 2, 4, 2)
        row.addWidget(self.list, 1)
        row.addLayout(buttons)
        workspace.current_changed.connect(self._follow)
        self._follow()

    def _button(self, name: str, tip: str) -> QToolButton:
        button = QToolButton(icon=icon(name))
        button.setToolTip(tip)
        return button

    def _follow(self) -> None:
        if self.document is not None:
            self.document.versions_changed.disconnect(self.refresh)
            self.document.image_changed.disconnect(self.refresh)
        self.document = self.workspace.current
        if self.document is not None:
            self.document.versions_changed.connect(self.refresh)
            self.document.image_changed.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------ showing

    def refresh(self) -> None:
        self.list.clear()
        document = self.document
        for button in (self.make_current_button, self.star_button, self.delete_button):
            button.setEnabled(document is not None)
        if document is None:
            return
        for number, version in enumerate(document.versions, 1):
            item = QListWidgetItem(self._icon(version), self._label(number, version))
            item.setData(Qt.ItemDataRole.UserRole, version.id)
            item.setToolTip(_tooltip(version.metadata))
            self.list.addItem(item)
            if version.id == document.viewed:
                self.list.setCurrentItem(item)
        self.delete_button.setEnabled(len(document.versions) > 1)

    def _label(self, number: int, version) -> str:
        star = "★ " if version.starred else ""
        current = self.tr(" · current") if version.id == self.document.current else ""
        return f"{star}#{number}{current}"

    def _icon(self, version) -> QIcon:
        key = (id(self.document), version.id)
        if key not in self._thumbs:
            self._thumbs[key] = to_pixmap(version.image, THUMB)
        thumb = self._thumbs[key]
        framed = QPixmap(THUMB + 8, THUMB + 8)
        framed.fill(Qt.GlobalColor.transparent)
        painter = QPainter(framed)
        x, y = (framed.width() - thumb.width()) // 2, (framed.height() - thumb.height()) // 2
        painter.drawPixmap(x, y, thumb)
        colour = None
        if version.id == self.document.current:
            colour = CURRENT_COLOUR
        elif version.id == self.document.viewed:
            colour = VIEWED_COLOUR
        if colour:
            painter.setPen(QPen(QColor(colour), 3))
            painter.drawRect(x - 2, y - 2, thumb.width() + 3, thumb.height() + 3)
        painter.end()
        return QIcon(framed)

    # ------------------------------------------------------------ actions

    def selected(self) -> str | None:
        item = self.list.currentItem()
        if item is not None:
            return item.data(Qt.ItemDataRole.UserRole)
        return self.document.viewed if self.document else None

    def _clicked(self, item: QListWidgetItem) -> None:
        self.document.view_version(item.data(Qt.ItemDataRole.UserRole))

    def make_current(self) -> None:
        if self.document and (version := self.selected()):
            self.document.make_current(version)

    def toggle_star(self) -> None:
        if self.document and (version := self.selected()):
            starred = next(v.starred for v in self.document.versions if v.id == version)
            self.document.star_version(version, not starred)

    def delete(self) -> None:
        if self.document and (version := self.selected()) and len(self.document.versions) > 1:
            self.document.delete_version(version)

    def _menu(self, position) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        self.list.setCurrentItem(item)
        menu = QMenu(self)
        menu.addAction(self.tr("View"), lambda: self._clicked(item))
        menu.addAction(icon("current"), self.tr("Make current"), self.make_current)
        menu.addAction(icon("star"), self.tr("Star / unstar"), self.toggle_star)
        menu.addSeparator()
        delete = menu.addAction(icon("delete"), self.tr("Delete"), self.delete)
        delete.setEnabled(len(self.document.versions) > 1)
        menu.exec(self.list.mapToGlobal(position))


def _tooltip(metadata: dict[str, str]) -> str:
    keys = ("task", "prompt", "instruction", "seed", "steps", "width", "height", "seconds")
    lines = [f"{k}: {metadata[k]}" for k in keys if k in metadata]
    return "\n".join(lines) or "original"

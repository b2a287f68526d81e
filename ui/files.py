"""Opening and saving from the window: file dialogs, dropped files, the clipboard. Reading and
writing go through the Workspace (the engine's image rules and metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QMimeData
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from ui.pixels import from_qimage

if TYPE_CHECKING:
    from ui.main_window import MainWindow

OPEN_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SAVE_FILTERS = {"PNG (*.png)": ".png", "JPEG (*.jpg *.jpeg)": ".jpg", "WebP (*.webp)": ".webp"}


def tr(text: str) -> str:
    return QCoreApplication.translate("files", text)


def open_dialog(window: MainWindow) -> None:
    patterns = " ".join(f"*{s}" for s in OPEN_SUFFIXES)
    start = (
        str(Path(window.settings.recent_files[0]).parent) if window.settings.recent_files else ""
    )
    paths, _ = QFileDialog.getOpenFileNames(
        window, tr("Open images"), start, f"{tr('Images')} ({patterns});;{tr('All files')} (*)"
    )
    for path in paths:
        open_path(window, path)


def open_path(window: MainWindow, path: str | Path) -> None:
    """Open one image file as a new tab; a file that cannot be read says why in one sentence."""
    window.workspace.open_file(str(path))


def dropped_images(mime: QMimeData) -> list[str]:
    """The local image files among dropped or pasted URLs."""
    if not mime.hasUrls():
        return []
    paths = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
    return [p for p in paths if Path(p).suffix.lower() in OPEN_SUFFIXES]


def paste(window: MainWindow) -> None:
    """Open the clipboard's image (or image files copied in a file manager) as new documents."""
    mime = QGuiApplication.clipboard().mimeData()
    if paths := dropped_images(mime):
        for path in paths:
            open_path(window, path)
        return
    image = QGuiApplication.clipboard().image()
    if isinstance(image, QImage) and not image.isNull():
        window.workspace.open_image(from_qimage(image), title=tr("Pasted image"))
    else:
        window.show_error(tr("The clipboard holds no image to paste."))


def save(window: MainWindow) -> None:
    """Save the current version where this document was last saved, else ask where."""
    document = window.workspace.current
    if document is None:
        return
    if (path := window.workspace.saved_paths.get(id(document))) is not None:
        window.workspace.save_file(document, path)
    else:
        save_as(window)


def save_as(window: MainWindow) -> None:
    document = window.workspace.current
    if document is None:
        return
    path, chosen = QFileDialog.getSaveFileName(
        window, tr("Save the current version"), str(suggested_path(window)), ";;".join(SAVE_FILTERS)
    )
    if not path:
        return
    if Path(path).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        path += SAVE_FILTERS.get(chosen, ".png")
    window.workspace.save_file(document, path)


def suggested_path(window: MainWindow) -> Path:
    """Beside the opened file as NAME-edit.png, or in the results folder as TITLE.png."""
    document = window.workspace.current
    if document.path:
        source = Path(document.path)
        return source.with_name(f"{source.stem}-edit.png")
    safe = "".join(c if c.isalnum() or c in " -_" else "_" for c in document.title).strip()
    return window.settings.results_path / f"{safe or 'image'}.png"


def folder_field(line: QLineEdit, title: str, button: str = "") -> QWidget:
    """`line` with a button beside it (Browse… by default) that opens a folder chooser at the
    folder typed there and puts the chosen one in."""
    browse = QPushButton(button or tr("Browse…"))
    browse.setToolTip(tr("Choose the folder"))

    def choose() -> None:
        folder = QFileDialog.getExistingDirectory(line.window(), title, line.text())
        if folder:
            line.setText(folder)

    browse.clicked.connect(choose)
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(line, 1)
    row.addWidget(browse)
    box = QWidget()
    box.setLayout(row)
    return box

"""numpy <-> Qt image conversion at the edge of the UI: [H, W, 3] uint8 RGB on our side."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPainter, QPixmap


def to_qimage(image: np.ndarray) -> QImage:
    """A QImage that owns a copy of the [H, W, 3] uint8 pixels."""
    image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    view = QImage(image.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return view.copy()  # the view borrows numpy's memory; the copy owns its own


def to_pixmap(image: np.ndarray, size: int | None = None) -> QPixmap:
    """A pixmap, scaled to fit a `size` square when given (for thumbnails)."""
    pixmap = QPixmap.fromImage(to_qimage(image))
    if size is None:
        return pixmap
    return pixmap.scaled(
        size,
        size,
        Qt.AspectRatioMode.KeepAspectRatio,
        Qt.TransformationMode.SmoothTransformation,
    )


def from_qimage(image: QImage) -> np.ndarray:
    """[H, W, 3] uint8 RGB from any QImage (alpha is composited over white, as the engine does)."""
    if image.hasAlphaChannel():
        flat = QImage(image.size(), QImage.Format.Format_RGB888)
        flat.fill(0xFFFFFF)
        painter = QPainter(flat)
        painter.drawImage(0, 0, image)
        painter.end()
        image = flat
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    rows = np.frombuffer(image.constBits(), np.uint8, count=stride * height).reshape(height, stride)
    return rows[:, : 3 * width].reshape(height, width, 3).copy()

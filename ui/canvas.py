"""CanvasView: a Document's viewed version with its mask as a tinted overlay; the mouse paints.

Navigation: the wheel zooms about the cursor (Alt+wheel sizes the brush), a pinch zooms and a
touchpad's two-finger scroll pans, Esc fits the image, `1` shows it at 100 %, `+` and `-` zoom
about the middle, space-drag and the middle button pan.

Painting: the left button paints with the brush (or erases when the eraser is on, `E`), the right
button erases, Shift+click paints a straight line from where the last stroke ended. With the
rectangle (`M`) or lasso (`L`) tool a drag adds to the mask; with Alt or Ctrl held at release, or
with the right button, it subtracts. `[` and `]` size the brush, `B` picks it, `H` hides the mask's
tint. The tool state lives in an app.tools.Tools, which a tool-options bar shares.

Fast on a 24-MP photo: the version is converted once to QImages, full size and halved down a few
times, and each repaint draws only the part inside the dirty region from the level nearest the zoom.
The mask overlay is a dict of 256-px ARGB tiles (and coarser ones for zoomed-out views), made
only where the mask has coverage and updated only inside the rect each stroke segment reports
(Document.mask_changed); the widget repaints only that rect. Both live in ui/canvas_layers.py; the
brush itself runs in app/mask.py.

Hooks for the window: `set_progress(...)` shows a job's stage, step and preview over the image,
`set_compare(other, mode)` shows another version beside this one (a split slider dragged with the
left button, or side by side with one zoom and pan for both). A badge says when the viewed version
is not the current one.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QCursor,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPolygonF,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QWidget

from app import qt_workaround
from app.document import Document
from app.tools import BRUSH, LASSO, RECT, Tools
from ui.canvas_layers import TILE, ImagePyramid, MaskOverlay, to_qimage

MIN_ZOOM, MAX_ZOOM = 1 / 64, 32.0
WHEEL_STEP = 2 ** (1 / 4)  # one wheel notch (120 units) zooms by this factor
SMOOTH_BELOW = 2.0  # zooms below this are filtered; above, pixels show as squares
BACKGROUND = QColor(38, 38, 42)
SPLIT, SIDE = "split", "side"
PYRAMIDS_KEPT = 3  # converted versions kept, so Tab between two versions converts nothing
THUMBNAIL = 160  # side of a preview that cannot be placed over the image, in screen pixels


class CanvasView(QWidget):
    """Shows a Document's viewed version and its mask; forwards the mouse to the Document."""

    zoom_changed = Signal(float)  # the zoom factor, 1.0 = 100 %

    def __init__(self, document: Document, tools: Tools, parent: QWidget | None = None):
        super().__init__(parent)
        self.tools = tools
        self.document: Document | None = None
        self.zoom = 1.0
        self.offset = QPointF(0, 0)  # where image pixel (0, 0) lands, in pane coordinates
        self._fitting = True  # keep fitting on resize until the user zooms or pans
        self._pyramid: ImagePyramid | None = None
        self._pyramids: list[ImagePyramid] = []  # most recently shown first
        self._overlay: MaskOverlay | None = None
        self._cursor: QPointF | None = None  # last mouse position, for the brush outline
        self._drag: dict | None = None  # the gesture under way: pan, stroke, rect, lasso, split
        self._space = False
        self._progress: dict | None = None
        self._compare: dict | None = None
        self._badge = True
        self._stroke_end: QPointF | None = None  # image point where the last stroke ended
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.grabGesture(Qt.GestureType.PinchGesture)
        self.setMinimumSize(120, 90)
        self.setToolTip(
            self.tr(
                "Paint the area to change. Wheel: zoom, Space or middle button: pan, Esc: fit, "
                "1: 100 %, + -: zoom, [ ]: brush size, E: eraser, B/M/L: brush, rectangle, "
                "lasso, H: hide the mask, Shift+click: straight line."
            )
        )
        tools.overlay_changed.connect(self._overlay_colour_changed)
        tools.size_changed.connect(lambda _: self._update_outline())
        tools.tool_changed.connect(self._tool_changed)
        self.set_document(document)

    # ------------------------------------------------------------ the document

    def set_document(self, document: Document) -> None:
        """Show another document (a tab switch); the view fits it."""
        if self.document is not None:
            self.document.image_changed.disconnect(self._image_changed)
            self.document.mask_changed.disconnect(self._mask_changed)
            self.document.versions_changed.disconnect(self.update)
        self.document = document
        self._overlay = None
        document.image_changed.connect(self._image_changed)
        document.mask_changed.connect(self._mask_changed)
        document.versions_changed.connect(self.update)
        self._drag = None
        self._image_changed()
        self.fit()

    def _image_changed(self) -> None:
        old = self._pyramid
        self._pyramid = self._pyramid_of(self.document.image)
        self._check_overlay()
        if old is not None and (old.width, old.height) != self.image_size() and self._fitting:
            self.fit()
        self.update()

    def _pyramid_of(self, image: np.ndarray) -> ImagePyramid:
        """The image's pyramid, from a small cache so flipping between versions stays instant."""
        for pyramid in self._pyramids:
            if pyramid.source is image:
                self._pyramids.remove(pyramid)
                break
        else:
            pyramid = ImagePyramid(image)
        self._pyramids = [pyramid, *self._pyramids][:PYRAMIDS_KEPT]
        return pyramid

    def _check_overlay(self) -> None:
        """A fresh overlay for a new document or a mask of another size."""
        shape = self.document.mask.shape
        if self._overlay is None or self._overlay.shape != shape:
            colour, opacity = self.tools.overlay_color, self.tools.overlay_opacity
            self._overlay = MaskOverlay(shape, colour, opacity)

    def _mask_changed(self, x: int, y: int, w: int, h: int) -> None:
        self._check_overlay()
        self._overlay.mark(x, y, w, h)
        for rect in self.screen_rects(x, y, w, h):
            self.update(rect)

    def _overlay_colour_changed(self) -> None:
        self._overlay.set_colour(self.tools.overlay_color, self.tools.overlay_opacity)
        self.update()

    # ------------------------------------------------------------ view transform

    def image_size(self) -> tuple[int, int]:
        return self._pyramid.width, self._pyramid.height

    def to_image(self, pos: QPointF) -> QPointF:
        """Widget position -> image pixel coordinates (in the right pane when side by side)."""
        pane = self._pane_at(pos)
        return (pos - pane.topLeft() - self.offset) / self.zoom

    def to_widget(self, point: QPointF) -> QPointF:
        return point * self.zoom + self.offset + self._panes()[-1].topLeft()

    def fit(self) -> None:
        """The whole image in view, centred (Esc)."""
        pane = self._panes()[-1]
        width, height = self.image_size()
        zoom = min(pane.width() / width, pane.height() / height) * 0.98
        self._set_view(zoom, QPointF((pane.width() - width * zoom) / 2,
                                     (pane.height() - height * zoom) / 2))  # fmt: skip
        self._fitting = True

    def actual_size(self) -> None:
        """100 %, keeping the image point at the pane's centre where it is (`1`)."""
        pane = self._panes()[-1]
        self.zoom_at(1.0 / self.zoom, QPointF(pane.width() / 2, pane.height() / 2) + pane.topLeft())

    def set_zoom(self, zoom: float) -> None:
        pane = self._panes()[-1]
        self.zoom_at(
            zoom / self.zoom, QPointF(pane.width() / 2, pane.height() / 2) + pane.topLeft()
        )

    def zoom_at(self, factor: float, pos: QPointF) -> None:
        """Zoom by `factor`, keeping the image point under widget position `pos` where it is."""
        zoom = min(max(self.zoom * factor, MIN_ZOOM), MAX_ZOOM)
        local = pos - self._pane_at(pos).topLeft()
        anchor = (local - self.offset) / self.zoom
        self._set_view(zoom, local - anchor * zoom)

    def pan(self, delta: QPointF) -> None:
        self._set_view(self.zoom, self.offset + delta)

    def _set_view(self, zoom: float, offset: QPointF) -> None:
        changed = zoom != self.zoom
        self.zoom, self.offset = zoom, offset
        self._fitting = False
        self.update()
        if changed:
            self.zoom_changed.emit(zoom)

    def _panes(self) -> list[QRectF]:
        """Where images are drawn: the whole widget, or two halves when side by side."""
        full = QRectF(self.rect())
        if self._compare and self._compare["mode"] == SIDE:
            half = full.width() / 2
            return [QRectF(0, 0, half, full.height()), QRectF(half, 0, half, full.height())]
        return [full]

    def _pane_at(self, pos: QPointF) -> QRectF:
        panes = self._panes()
        return panes[0] if len(panes) > 1 and pos.x() < panes[1].left() else panes[-1]

    def screen_rects(self, x: float, y: float, w: float, h: float) -> list[QRect]:
        """Where an image rect shows in the widget (once per pane), with a margin for smoothing."""
        return [self._widget_rect(QRectF(x, y, w, h), pane) for pane in self._panes()]

    def _widget_rect(self, image_rect: QRectF, pane: QRectF) -> QRect:
        top_left = image_rect.topLeft() * self.zoom + self.offset + pane.topLeft()
        rect = QRectF(top_left, image_rect.size() * self.zoom)
        return rect.toAlignedRect().adjusted(-2, -2, 2, 2)

    def resizeEvent(self, event: QResizeEvent) -> None:
        if self._fitting:
            self.fit()
        super().resizeEvent(event)

    # ------------------------------------------------------------ hooks for the window

    def set_progress(
        self,
        text: str,
        step: int,
        total: int,
        preview: np.ndarray | None,
        box: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Show a job's stage text, step of total, and its preview.

        The preview covers `box` (x0, y0, x1, y1 in image pixels) when given, else the whole
        image when it has the image's shape. A masked edit's previews show its context crop,
        whose box the engine reports (Progress.box); a preview of another shape without a box
        shows as a thumbnail above the progress bar instead of stretched over the wrong pixels.
        """
        old = self._progress
        picture = None
        if preview is not None:
            picture = old["picture"] if old and old["source"] is preview else to_qimage(preview)
        self._progress = {"text": text, "step": step, "total": total, "box": box}
        self._progress |= {"source": preview, "picture": picture}
        self.update()

    def clear_progress(self) -> None:
        if self._progress is not None:
            self._progress = None
            self.update()

    def set_compare(
        self, other: np.ndarray | None, mode: str = SPLIT, labels: tuple[str, str] = ("", "")
    ) -> None:
        """Compare the viewed version with `other` (left or left pane); None ends comparing."""
        if other is None:
            self._compare = None
        else:
            if mode not in (SPLIT, SIDE):
                raise ValueError(f"The compare mode must be {SPLIT!r} or {SIDE!r}, not {mode!r}.")
            old = self._compare
            self._compare = {
                "mode": mode,
                "pyramid": self._pyramid_of(other),
                "split": old["split"] if old else 0.5,
                "labels": (labels[0] or self.tr("Before"), labels[1] or self.tr("After")),
            }
        self._pyramid = self._pyramid_of(self.document.image)  # keep the viewed one cached
        self._drag = None
        if self._fitting:
            self.fit()
        self._update_cursor()
        self.update()

    @property
    def compare_mode(self) -> str | None:
        return self._compare["mode"] if self._compare else None

    @property
    def split(self) -> float:
        return self._compare["split"] if self._compare else 0.5

    def set_split(self, fraction: float) -> None:
        """Where the split line sits, as a fraction of the widget's width."""
        if self._compare:
            self._compare["split"] = min(max(fraction, 0.0), 1.0)
            self.update()

    # ------------------------------------------------------------ painting

    def paintEvent(self, event: QPaintEvent) -> None:
        # PySide6 6.12 on Python 3.11 loses a reference to None per void Qt call (about 20 per
        # painted mouse move) and one to True per emit: put them back before they run out
        qt_workaround.check()
        painter = QPainter(self)
        clip = QRectF(event.rect())
        painter.fillRect(event.rect(), BACKGROUND)
        smooth = self.zoom < SMOOTH_BELOW
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        if self._compare is None:
            self._draw_pane(painter, self._panes()[0], clip, self._pyramid, with_mask=True)
        else:
            self._draw_compare(painter, clip)
        self._draw_progress(painter)
        self._draw_gesture(painter)
        self._draw_badge(painter)
        self._draw_outline(painter)
        painter.end()

    def _draw_pane(self, painter, pane: QRectF, clip: QRectF, pyramid, with_mask: bool) -> None:
        width, height = pyramid.width, pyramid.height
        placed = QRectF(
            self.offset + pane.topLeft(), QRectF(0, 0, width, height).size() * self.zoom
        )
        visible = placed.intersected(clip).intersected(pane)
        if visible.isEmpty():
            return
        level = pyramid.pick(self.zoom * self.devicePixelRatioF())  # sharp on high-DPI screens
        scale = level.width() / width
        source = QRectF(
            (visible.topLeft() - placed.topLeft()) / self.zoom * scale,
            visible.size() / self.zoom * scale,
        )
        painter.drawImage(visible, level, source)
        if with_mask:
            self._draw_preview(painter)  # under the mask, so painting on during a job shows
            if self.tools.overlay_visible and self.document.mask.shape == (height, width):
                self._draw_mask(painter, placed, visible)

    def _draw_mask(self, painter, placed: QRectF, visible: QRectF) -> None:
        step = self._overlay.step_for(self.zoom * self.devicePixelRatioF())
        scale = self.zoom * step  # screen pixels per overlay pixel
        x0 = (visible.left() - placed.left()) / scale
        y0 = (visible.top() - placed.top()) / scale
        x1 = (visible.right() - placed.left()) / scale
        y1 = (visible.bottom() - placed.top()) / scale
        coverage = self.document.mask.coverage
        for row in range(max(int(y0) // TILE, 0), int(np.ceil(y1 / TILE))):
            for col in range(max(int(x0) // TILE, 0), int(np.ceil(x1 / TILE))):
                image = self._overlay.tile(step, (row, col), coverage)
                if image is None:
                    continue
                # rounded shared edges: neighbouring tiles meet without a seam at any zoom
                left = round(placed.left() + col * TILE * scale)
                top = round(placed.top() + row * TILE * scale)
                right = round(placed.left() + (col * TILE + image.width()) * scale)
                bottom = round(placed.top() + (row * TILE + image.height()) * scale)
                painter.drawImage(QRect(left, top, right - left, bottom - top), image)

    def _draw_compare(self, painter, clip: QRectF) -> None:
        compare = self._compare
        panes = self._panes()
        labels = compare["labels"]
        if compare["mode"] == SIDE:
            self._draw_pane(painter, panes[0], clip, compare["pyramid"], with_mask=False)
            self._draw_pane(painter, panes[1], clip, self._pyramid, with_mask=False)
            painter.setPen(QPen(QColor(20, 20, 20), 2))
            painter.drawLine(panes[1].topLeft(), panes[1].bottomLeft())
            self._draw_label(painter, labels[0], panes[0].topLeft() + QPointF(10, 10))
            self._draw_label(painter, labels[1], panes[1].topLeft() + QPointF(10, 10))
            return
        line = self.width() * compare["split"]
        pane = panes[0]
        left, right = (
            QRectF(0, 0, line, self.height()),
            QRectF(line, 0, self.width() - line, self.height()),
        )
        self._draw_pane(painter, pane, clip.intersected(left), compare["pyramid"], False)
        self._draw_pane(painter, pane, clip.intersected(right), self._pyramid, False)
        painter.setPen(QPen(QColor(255, 255, 255), 2))
        painter.drawLine(QPointF(line, 0), QPointF(line, self.height()))
        painter.setBrush(QColor(255, 255, 255))
        painter.drawEllipse(QPointF(line, self.height() / 2), 7, 7)
        self._draw_label(painter, labels[0], QPointF(10, 10))
        right_label = QPointF(self.width() - 10 - self._label_width(labels[1]), 10)
        self._draw_label(painter, labels[1], right_label)

    def _label_width(self, text: str) -> float:
        return self.fontMetrics().horizontalAdvance(text) + 16

    def _draw_label(self, painter, text: str, at: QPointF) -> None:
        box = QRectF(
            at, QRectF(0, 0, self._label_width(text), self.fontMetrics().height() + 8).size()
        )
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor(240, 240, 240))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _draw_preview(self, painter) -> None:
        """A running job's preview over the image (when it has the image's shape or a box)."""
        place = self._preview_place() if self._progress is not None else None
        if place is not None:
            smooth = painter.testRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(place, self._progress["picture"])
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)

    def _draw_progress(self, painter) -> None:
        progress = self._progress
        if progress is None:
            return
        picture, place = progress["picture"], self._preview_place()
        total = max(progress["total"], 1)
        text = progress["text"]
        if progress["total"]:
            text = f"{text}  {progress['step']}/{progress['total']}"
        width = max(self._label_width(text), 220)
        box = QRectF((self.width() - width) / 2, self.height() - 64, width, 44)
        if picture is not None and place is None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            scale = min(THUMBNAIL / picture.height(), THUMBNAIL / picture.width())
            size = QPointF(picture.width(), picture.height()) * scale
            corner = QPointF(self.width() / 2 - size.x() / 2, box.top() - 8 - size.y())
            painter.drawImage(QRectF(corner, corner + size), picture)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 180))
        painter.drawRoundedRect(box, 6, 6)
        painter.setPen(QColor(240, 240, 240))
        painter.drawText(box.adjusted(8, 4, -8, -18), Qt.AlignmentFlag.AlignCenter, text)
        bar = QRectF(box.left() + 10, box.bottom() - 14, box.width() - 20, 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(90, 90, 90))
        painter.drawRect(bar)
        painter.setBrush(QColor(90, 160, 255))
        fraction = min(max(progress["step"] / total, 0.0), 1.0)
        painter.drawRect(QRectF(bar.topLeft(), QRectF(0, 0, bar.width() * fraction, 6).size()))

    def set_badge_visible(self, visible: bool) -> None:
        """Whether the canvas itself says when the viewed version is not the current one (a
        window with its own indicator may turn this off)."""
        self._badge = visible
        self.update()

    def _preview_place(self) -> QRectF | None:
        """Where the preview goes on screen over the image; None: as a thumbnail."""
        progress = self._progress
        picture = progress["picture"]
        if picture is None:
            return None
        width, height = self.image_size()
        x0, y0, x1, y1 = progress["box"] or (0, 0, width, height)
        if progress["box"] is None:
            same_shape = (
                abs(picture.width() / picture.height() - width / height) < 0.02 * width / height
            )
            if not same_shape:
                return None
        top_left = QPointF(x0, y0) * self.zoom + self.offset + self._panes()[-1].topLeft()
        return QRectF(top_left, QPointF(x1 - x0, y1 - y0) * self.zoom + top_left)

    def _draw_badge(self, painter) -> None:
        doc = self.document
        if self._badge and self._compare is None and doc.viewed != doc.current:
            text = self.tr("Viewing {0}, not the current version").format(doc.viewed)
            self._draw_label(painter, text, QPointF(10, 10))

    def _draw_gesture(self, painter) -> None:
        drag = self._drag
        if drag is None or drag["kind"] not in (RECT, LASSO):
            return
        points = [self.to_widget(p) for p in drag["points"]]
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for colour, style in ((QColor(0, 0, 0), Qt.PenStyle.SolidLine),
                              (QColor(255, 255, 255), Qt.PenStyle.DashLine)):  # fmt: skip
            painter.setPen(QPen(colour, 1, style))
            if drag["kind"] == RECT:
                painter.drawRect(QRectF(points[0], points[-1]).normalized())
            else:
                painter.drawPolyline(QPolygonF(points))

    def _outline_rect(self) -> QRect | None:
        if self._cursor is None or self.tools.tool != BRUSH or self._compare is not None:
            return None
        r = max(self.tools.radius * self.zoom, 3) + 3
        return QRectF(self._cursor - QPointF(r, r), self._cursor + QPointF(r, r)).toAlignedRect()

    def _draw_outline(self, painter) -> None:
        if self._outline_rect() is None or (self._drag and self._drag["kind"] == "pan"):
            return
        radius = self.tools.radius * self.zoom
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        for colour, width in ((QColor(0, 0, 0, 200), 3), (QColor(255, 255, 255), 1)):
            painter.setPen(QPen(colour, width))
            if radius >= 3:
                painter.drawEllipse(self._cursor, radius, radius)
            if self.tools.eraser or radius < 3:
                cross = QPointF(4, 0)
                painter.drawLine(self._cursor - cross, self._cursor + cross)
                if not self.tools.eraser:
                    painter.drawLine(
                        self._cursor - cross.transposed(), self._cursor + cross.transposed()
                    )

    def _update_outline(self, old: QRect | None = None) -> None:
        for rect in (old, self._outline_rect()):
            if rect is not None:
                self.update(rect)

    # ------------------------------------------------------------ mouse

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos, button = event.position(), event.button()
        if button == Qt.MouseButton.MiddleButton or (
            self._space and button == Qt.MouseButton.LeftButton
        ):
            self._drag = {"kind": "pan", "last": pos}
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        elif self._compare is not None:
            if self._compare["mode"] == SPLIT and button == Qt.MouseButton.LeftButton:
                self._drag = {"kind": "split"}
                self.set_split(pos.x() / max(self.width(), 1))
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            self._start_tool(pos, right=button == Qt.MouseButton.RightButton, line=shift)
        event.accept()

    def _start_tool(self, pos: QPointF, right: bool, line: bool = False) -> None:
        """Start the current tool at `pos`. With `line` (Shift), a brush stroke starts with a
        straight line from where the last stroke ended, as in Krita and Photoshop."""
        if self.document.mask.shape != self.document.image.shape[:2]:
            return  # viewing a version of another size: the mask belongs to the current one
        point = self.to_image(pos)
        tool = self.tools.tool
        if tool == BRUSH:
            erase = right or self.tools.eraser
            start = self._stroke_end if line and self._stroke_end is not None else point
            self._drag = {"kind": BRUSH}
            self.document.begin_stroke(start.x(), start.y(), self.tools.radius,
                                       self.tools.hardness, erase)  # fmt: skip
            if start is not point:
                self.document.stroke_to(point.x(), point.y())
            self._stroke_end = point
        else:
            self._drag = {"kind": tool, "points": [point], "right": right}

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        old = self._outline_rect()
        self._cursor = pos
        drag = self._drag
        if drag is None:
            pass
        elif drag["kind"] == "pan":
            self.pan(pos - drag["last"])
            drag["last"] = pos
        elif drag["kind"] == "split":
            self.set_split(pos.x() / max(self.width(), 1))
        elif drag["kind"] == BRUSH:
            point = self.to_image(pos)
            self.document.stroke_to(point.x(), point.y())
            self._stroke_end = point
        else:
            self._extend_selection(drag, self.to_image(pos))
        self._update_outline(old)
        event.accept()

    def _extend_selection(self, drag: dict, point: QPointF) -> None:
        before = self._gesture_rect(drag)
        if drag["kind"] == RECT:
            drag["points"][1:] = [point]
        elif (point - drag["points"][-1]).manhattanLength() * self.zoom >= 2:
            drag["points"].append(point)  # a point per 2 screen pixels is smooth enough
        for rect in (before, self._gesture_rect(drag)):
            self.update(rect)

    def _gesture_rect(self, drag: dict) -> QRect:
        xs = [p.x() for p in drag["points"]]
        ys = [p.y() for p in drag["points"]]
        box = QRectF(QPointF(min(xs), min(ys)), QPointF(max(xs), max(ys)))
        return self._widget_rect(box, self._panes()[-1])

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        drag, self._drag = self._drag, None
        if drag is not None and drag["kind"] == BRUSH:
            self.document.end_stroke()
        elif drag is not None and drag["kind"] in (RECT, LASSO):
            subtract = drag["right"] or bool(
                event.modifiers()
                & (Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.ControlModifier)
            )
            self._finish_selection(drag, subtract)
        self._update_cursor()
        event.accept()

    def _finish_selection(self, drag: dict, subtract: bool) -> None:
        points = [(p.x(), p.y()) for p in drag["points"]]
        self.update(self._gesture_rect(drag))
        if drag["kind"] == RECT and len(points) == 2:
            (x0, y0), (x1, y1) = points
            self.document.select_rect(x0, y0, x1, y1, subtract)
        elif drag["kind"] == LASSO:
            self.document.select_lasso(points, subtract)

    def leaveEvent(self, event: QEvent) -> None:
        old = self._outline_rect()
        self._cursor = None
        self._update_outline(old)
        super().leaveEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        """A mouse wheel zooms about the cursor (Alt: sizes the brush). A touchpad's two-finger
        scroll, which comes with pixel deltas and scroll phases, pans; with Ctrl it zooms."""
        modifiers = event.modifiers()
        touchpad = (
            not event.pixelDelta().isNull()
            and event.phase() != Qt.ScrollPhase.NoScrollPhase
            and not modifiers
            & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier)
        )
        if touchpad:
            self.pan(QPointF(event.pixelDelta()))
            event.accept()
            return
        delta = event.angleDelta().y() or event.angleDelta().x()  # Alt turns y into x on some OSes
        if not delta:
            return
        if modifiers & Qt.KeyboardModifier.AltModifier:
            old = self._outline_rect()
            self.tools.set_size(self.tools.size * WHEEL_STEP ** (delta / 120))
            self._update_outline(old)
        else:
            self.zoom_at(WHEEL_STEP ** (delta / 120), event.position())
        event.accept()

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.NativeGesture:
            if event.gestureType() == Qt.NativeGestureType.ZoomNativeGesture:
                self.zoom_at(1 + event.value(), event.position())
                return True
        if event.type() == QEvent.Type.Gesture:
            pinch = event.gesture(Qt.GestureType.PinchGesture)
            if pinch is not None:
                centre = self.mapFromGlobal(pinch.centerPoint().toPoint())
                self.zoom_at(pinch.scaleFactor(), QPointF(centre))
                event.accept()
                return True
        return super().event(event)

    # ------------------------------------------------------------ keys

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        old = self._outline_rect()
        if key == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self._space = True
                self._update_cursor()
        elif key == Qt.Key.Key_BracketLeft:
            self.tools.shrink()
        elif key == Qt.Key.Key_BracketRight:
            self.tools.grow()
        elif key == Qt.Key.Key_E:
            self.tools.toggle_eraser()
        elif key == Qt.Key.Key_B:
            self.tools.set_tool(BRUSH)
        elif key == Qt.Key.Key_M:
            self.tools.set_tool(RECT)
        elif key == Qt.Key.Key_L:
            self.tools.set_tool(LASSO)
        elif key == Qt.Key.Key_H:
            self.tools.toggle_overlay()
        elif key == Qt.Key.Key_Escape:
            if self._drag is not None and self._drag["kind"] in (RECT, LASSO):
                self.update(self._gesture_rect(self._drag))
                self._drag = None
            else:
                self.fit()
        elif key == Qt.Key.Key_1:
            self.actual_size()
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal, Qt.Key.Key_Minus):
            factor = WHEEL_STEP**2 if key != Qt.Key.Key_Minus else WHEEL_STEP**-2
            self.set_zoom(self.zoom * factor)
        else:
            super().keyPressEvent(event)
            return
        self._update_outline(old)
        event.accept()

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self._update_cursor()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def _tool_changed(self, _tool: str) -> None:
        self._update_cursor()
        self.update()  # the brush outline shows only with the brush

    def _update_cursor(self) -> None:
        if self._space:
            shape = Qt.CursorShape.OpenHandCursor
        elif self._compare is not None:
            shape = (
                Qt.CursorShape.SplitHCursor
                if self.compare_mode == SPLIT
                else Qt.CursorShape.ArrowCursor
            )
        else:
            shape = Qt.CursorShape.CrossCursor
        self.setCursor(QCursor(shape))

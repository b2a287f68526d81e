"""CanvasView: strokes land where the cursor went at any zoom, with no gaps; navigation keeps the
point under the cursor; selections, eraser, overlay, progress and compare show what they should."""

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from app.document import Document
from app.tools import LASSO, RECT, Tools
from ui.canvas import SIDE, SPLIT, CanvasView

LEFT, RIGHT, MIDDLE = (
    Qt.MouseButton.LeftButton,
    Qt.MouseButton.RightButton,
    Qt.MouseButton.MiddleButton,
)
NONE = Qt.KeyboardModifier.NoModifier


def mouse(widget, kind, pos, button=LEFT, held=None, modifiers=NONE):
    held = button if held is None else held
    pos = QPointF(pos)
    event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, held, modifiers)
    QApplication.sendEvent(widget, event)


def drag(widget, points, button=LEFT, modifiers=NONE):
    """Press at the first point, jump to each next one in a single move, release at the last."""
    mouse(widget, QEvent.Type.MouseButtonPress, points[0], button)
    for point in points[1:]:
        mouse(widget, QEvent.Type.MouseMove, point, Qt.MouseButton.NoButton, button)
    mouse(widget, QEvent.Type.MouseButtonRelease, points[-1], button, Qt.MouseButton.NoButton,
          modifiers)  # fmt: skip


@pytest.fixture
def canvas(qtbot):
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[..., 1] = 120
    document = Document(image, [].append)
    view = CanvasView(document, Tools(size=6, hardness=1.0))
    view.resize(800, 600)
    qtbot.addWidget(view)
    view.show()
    return view


def distance_to_segment(ys, xs, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    p = np.stack([xs + 0.5, ys + 0.5], axis=-1)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=-1)


@pytest.mark.parametrize("zoom", [0.25, 1.0, 4.0])
def test_fast_drag_paints_where_the_cursor_went_without_gaps(canvas, zoom):
    canvas.set_zoom(zoom)
    screen = [QPointF(60, 80), QPointF(740, 120), QPointF(400, 560)]  # two long, fast jumps
    drag(canvas, screen)
    image = [canvas.to_image(p) for p in screen]
    path = [(p.x(), p.y()) for p in image]
    painted = canvas.document.mask.as_bool()
    for a, b in zip(path, path[1:]):
        steps = int(np.hypot(b[0] - a[0], b[1] - a[1])) + 1
        xs = np.linspace(a[0], b[0], steps).astype(int)
        ys = np.linspace(a[1], b[1], steps).astype(int)
        assert painted[ys, xs].all(), f"gap along {a} -> {b} at zoom {zoom}"
    ys, xs = np.nonzero(painted)
    near = np.minimum(distance_to_segment(ys, xs, path[0], path[1]),
                      distance_to_segment(ys, xs, path[1], path[2]))  # fmt: skip
    assert near.max() <= canvas.tools.radius + 1.5  # nothing painted away from the path
    assert len(canvas.document.history) == 1  # one drag, one undo step


def test_right_button_and_e_key_erase(canvas, qtbot):
    canvas.document.fill_mask()
    drag(canvas, [QPointF(100, 100), QPointF(300, 100)], button=RIGHT)
    centre = canvas.to_image(QPointF(200, 100))
    assert not canvas.document.mask.as_bool()[int(centre.y()), int(centre.x())]
    qtbot.keyClick(canvas, Qt.Key.Key_E)
    assert canvas.tools.eraser
    drag(canvas, [QPointF(100, 300), QPointF(300, 300)])
    centre = canvas.to_image(QPointF(200, 300))
    assert not canvas.document.mask.as_bool()[int(centre.y()), int(centre.x())]


def test_bracket_keys_and_alt_wheel_size_the_brush(canvas, qtbot):
    size = canvas.tools.size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.tools.size > size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.tools.size < size


def wheel(widget, pos, delta, modifiers=NONE, pixels=None, phase=Qt.ScrollPhase.NoScrollPhase):
    pos = QPointF(pos)
    event = QWheelEvent(
        pos, widget.mapToGlobal(pos), pixels or QPoint(), QPoint(0, delta), Qt.MouseButton.NoButton,
        modifiers, phase, False,
    )  # fmt: skip
    QApplication.sendEvent(widget, event)


def test_wheel_zooms_about_the_cursor_and_esc_fits_and_1_is_100_percent(canvas, qtbot):
    at = QPointF(200, 150)
    before = canvas.to_image(at)
    zoom = canvas.zoom
    wheel(canvas, at, 240)
    assert canvas.zoom > zoom
    after = canvas.to_image(at)
    assert abs(after.x() - before.x()) < 1e-6 and abs(after.y() - before.y()) < 1e-6
    qtbot.keyClick(canvas, Qt.Key.Key_1)
    assert canvas.zoom == 1.0
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)
    assert canvas.zoom == pytest.approx(min(800 / 4000, 600 / 3000) * 0.98)
    wheel(canvas, at, 120, Qt.KeyboardModifier.AltModifier)
    assert canvas.tools.size > 6


def test_middle_button_and_space_drag_pan_without_painting(canvas, qtbot):
    start = canvas.offset
    drag(canvas, [QPointF(100, 100), QPointF(150, 130)], button=MIDDLE)
    assert canvas.offset - start == QPointF(50, 30)
    qtbot.keyPress(canvas, Qt.Key.Key_Space)
    drag(canvas, [QPointF(100, 100), QPointF(90, 100)])
    qtbot.keyRelease(canvas, Qt.Key.Key_Space)
    assert canvas.offset - start == QPointF(40, 30)
    assert not canvas.document.mask.any()


def test_rectangle_and_lasso_tools_add_and_subtract(canvas, qtbot):
    canvas.set_zoom(1.0)
    canvas.tools.set_tool(RECT)
    drag(canvas, [QPointF(100, 100), QPointF(300, 250)])
    a, b = canvas.to_image(QPointF(100, 100)), canvas.to_image(QPointF(300, 250))
    mask = canvas.document.mask.as_bool()
    assert mask.sum() == pytest.approx(200 * 150, abs=400)
    assert mask[int(a.y()) + 2 : int(b.y()) - 2, int(a.x()) + 2 : int(b.x()) - 2].all()
    drag(canvas, [QPointF(150, 0), QPointF(200, 590)], modifiers=Qt.KeyboardModifier.AltModifier)
    mid = canvas.to_image(QPointF(175, 175))
    assert not canvas.document.mask.as_bool()[int(mid.y()), int(mid.x())]
    qtbot.keyClick(canvas, Qt.Key.Key_L)
    assert canvas.tools.tool == LASSO
    drag(canvas, [QPointF(400, 300), QPointF(600, 300), QPointF(600, 500), QPointF(400, 500)])
    inside = canvas.to_image(QPointF(500, 400))
    assert canvas.document.mask.as_bool()[int(inside.y()), int(inside.x())]
    drag(canvas, [QPointF(450, 350), QPointF(550, 350), QPointF(550, 450)], button=RIGHT)
    inside = canvas.to_image(QPointF(540, 360))
    assert not canvas.document.mask.as_bool()[int(inside.y()), int(inside.x())]


def pixel(canvas, pos):
    return canvas.grab().toImage().pixelColor(pos)


def test_overlay_tints_the_mask_with_the_chosen_colour_and_opacity(canvas):
    canvas.tools.set_overlay_color((0, 0, 255))
    canvas.tools.set_overlay_opacity(1.0)
    canvas.tools.set_size(60)  # 12 screen pixels wide at fit
    drag(canvas, [QPointF(200, 200), QPointF(400, 200)])
    assert pixel(canvas, QPoint(300, 200)).getRgb()[:3] == (0, 0, 255)
    assert pixel(canvas, QPoint(300, 300)).getRgb()[:3] == (0, 120, 0)
    canvas.tools.set_overlay_opacity(0.5)
    r, g, b, _ = pixel(canvas, QPoint(300, 200)).getRgb()
    assert abs(g - 60) <= 2 and abs(b - 128) <= 2
    canvas.document.undo()
    assert pixel(canvas, QPoint(300, 200)).getRgb()[:3] == (0, 120, 0)


def test_painting_after_an_edit_leaves_its_mask_snapshot_alone(canvas):
    sent = []
    canvas.document._submit = sent.append
    drag(canvas, [QPointF(100, 100), QPointF(200, 100)])
    request = canvas.document.edit("make it blue")
    snapshot = request.mask.copy()
    drag(canvas, [QPointF(100, 300), QPointF(700, 300)])
    canvas.document.fill_mask()
    assert sent == [request] and np.array_equal(request.mask, snapshot)


def test_progress_preview_covers_the_image_and_clears(canvas):
    preview = np.full((12, 16, 3), 255, np.uint8)  # the image's 4:3 shape
    canvas.set_progress("Denoising", 3, 8, preview)
    assert pixel(canvas, QPoint(400, 100)).getRgb()[:3] == (255, 255, 255)
    canvas.tools.set_overlay_color((0, 0, 255))
    canvas.tools.set_overlay_opacity(1.0)
    canvas.document.fill_mask()  # painting on during a job shows over the preview
    assert pixel(canvas, QPoint(400, 100)).getRgb()[:3] == (0, 0, 255)
    canvas.document.clear_mask()
    canvas.clear_progress()
    assert pixel(canvas, QPoint(400, 100)).getRgb()[:3] == (0, 120, 0)


def test_compare_split_and_side_by_side_show_both_versions(canvas):
    other = np.zeros((3000, 4000, 3), np.uint8)
    other[..., 0] = 200
    canvas.set_compare(other, SPLIT)
    canvas.set_split(0.5)
    assert pixel(canvas, QPoint(200, 300)).getRgb()[:3] == (200, 0, 0)
    assert pixel(canvas, QPoint(600, 300)).getRgb()[:3] == (0, 120, 0)
    drag(canvas, [QPointF(400, 300), QPointF(700, 300)])
    assert canvas.split == pytest.approx(700 / 800)
    assert not canvas.document.mask.any()  # comparing never paints
    assert pixel(canvas, QPoint(600, 300)).getRgb()[:3] == (200, 0, 0)
    canvas.set_compare(other, SIDE)
    canvas.fit()
    assert pixel(canvas, QPoint(200, 300)).getRgb()[:3] == (200, 0, 0)
    assert pixel(canvas, QPoint(600, 300)).getRgb()[:3] == (0, 120, 0)
    canvas.set_compare(None)
    assert canvas.compare_mode is None


def test_badge_when_the_viewed_version_is_not_current(canvas):
    from engine.protocol import Finished, ImageResult

    document = canvas.document
    job = document.edit("x").job_id
    document.handle(ImageResult(job, np.full((3000, 4000, 3), 50, np.uint8), {}))
    document.handle(Finished(job))
    assert pixel(canvas, QPoint(400, 300)).getRgb()[:3] == (50, 50, 50)
    document.view_version("v1")
    assert pixel(canvas, QPoint(400, 300)).getRgb()[:3] == (0, 120, 0)
    top_left = pixel(canvas, QPoint(14, 14)).getRgb()[:3]
    assert top_left != (0, 120, 0)  # the badge is drawn there


def test_overlay_tiles_follow_every_change_at_every_step():
    """After any change, each drawn tile equals a fresh colouring of the mask, at any step."""
    from app.mask import MaskLayer
    from ui.canvas_layers import TILE as OVERLAY_TILE
    from ui.canvas_layers import MaskOverlay, pooled

    mask = MaskLayer(700, 900)
    overlay = MaskOverlay(mask.shape, (10, 200, 30), 0.7)
    rng = np.random.default_rng(2)

    def check():
        for step in (1, 2, 8):
            h, w = int(np.ceil(700 / step)), int(np.ceil(900 / step))  # overlay pixels
            for key in np.ndindex(int(np.ceil(h / OVERLAY_TILE)), int(np.ceil(w / OVERLAY_TILE))):
                image = overlay.tile(step, key, mask.coverage)
                r, c = key
                box = (c * OVERLAY_TILE, r * OVERLAY_TILE,
                       min((c + 1) * OVERLAY_TILE, w), min((r + 1) * OVERLAY_TILE, h))  # fmt: skip
                expected = overlay.lut[pooled(mask.coverage, step, box)]
                if image is None:
                    assert not expected.any()
                else:
                    assert np.array_equal(overlay.tiles[step][key][0], expected)

    check()
    for _ in range(6):
        x, y = rng.uniform(0, 900), rng.uniform(0, 700)
        rect = mask.dab(x, y, rng.uniform(2, 90), 0.5, erase=bool(rng.integers(2)))
        if rect is not None:
            overlay.mark(*rect)
        check()
    mask.set_region((0, 0, 900, 700), 0)
    overlay.mark(0, 0, 900, 700)
    check()


def test_pooling_keeps_thin_strokes_and_steps_follow_zoom():
    from ui.canvas_layers import MaskOverlay, pooled

    coverage = np.zeros((10, 10), np.uint8)
    coverage[9, 3] = 200  # a one-pixel stroke in the partial last block
    assert pooled(coverage, 4, (0, 0, 3, 3))[2, 0] == 200
    assert MaskOverlay.step_for(1.0) == 1 and MaskOverlay.step_for(0.5) == 2
    assert MaskOverlay.step_for(0.26) == 2 and MaskOverlay.step_for(0.25) == 4
    assert MaskOverlay.step_for(4.0) == 1 and MaskOverlay.step_for(0.001) == 32


def test_long_painting_session_does_not_abort_the_interpreter():
    """PySide6 6.12.0 on Python 3.11 drops a reference to None per void call; without the canvas's
    guard, 30,000 such calls (a minute or two of painting) abort the process with none_dealloc."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import numpy as np\n"
        "from PySide6.QtCore import QRect\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from app.document import Document\n"
        "from app.tools import Tools\n"
        "from ui.canvas import CanvasView\n"
        "app = QApplication([])\n"
        "view = CanvasView(Document(np.zeros((64, 64, 3), np.uint8), [].append), Tools())\n"
        "view.resize(100, 100)\n"
        "view.show()\n"
        "app.processEvents()\n"
        "rect = QRect()\n"
        "for i in range(300):\n"
        "    view.repaint()\n"
        "    for _ in range(100):\n"
        "        rect.setX(1)\n"
        "print('alive')\n"
    )
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "alive", run.stderr[-500:]


def test_pinch_gesture_zooms_about_its_centre(canvas):
    from PySide6.QtGui import QNativeGestureEvent, QPointingDevice

    at = QPointF(300, 200)
    before, zoom = canvas.to_image(at), canvas.zoom
    event = QNativeGestureEvent(
        Qt.NativeGestureType.ZoomNativeGesture, QPointingDevice.primaryPointingDevice(), 2,
        at, at, canvas.mapToGlobal(at), 0.5, QPointF(), 0,
    )  # fmt: skip
    QApplication.sendEvent(canvas, event)
    assert canvas.zoom == pytest.approx(zoom * 1.5)
    after = canvas.to_image(at)
    assert abs(after.x() - before.x()) < 1e-6 and abs(after.y() - before.y()) < 1e-6


def test_brush_outline_follows_the_cursor_at_the_brush_size(canvas):
    canvas.set_zoom(1.0)
    canvas.tools.set_size(80)  # a 40-px radius on screen at 100 %
    mouse(canvas, QEvent.Type.MouseMove, QPointF(400, 300), Qt.MouseButton.NoButton,
          Qt.MouseButton.NoButton)  # fmt: skip
    shot = canvas.grab().toImage()
    ring = [shot.pixelColor(400 + dx, 300 + dy).getRgb()[:3] for dx, dy in ((40, 0), (0, -40))]
    assert all(colour != (0, 120, 0) for colour in ring)  # the outline is drawn there
    assert shot.pixelColor(400 + 20, 300).getRgb()[:3] == (0, 120, 0)  # not filled inside
    assert not canvas.document.mask.any()  # hovering never paints


def test_h_hides_and_shows_the_mask_tint(canvas, qtbot):
    canvas.tools.set_overlay_opacity(1.0)
    canvas.document.fill_mask()
    tinted = pixel(canvas, QPoint(400, 300)).getRgb()[:3]
    assert tinted != (0, 120, 0)
    qtbot.keyClick(canvas, Qt.Key.Key_H)
    assert not canvas.tools.overlay_visible
    assert pixel(canvas, QPoint(400, 300)).getRgb()[:3] == (0, 120, 0)
    qtbot.keyClick(canvas, Qt.Key.Key_H)
    assert pixel(canvas, QPoint(400, 300)).getRgb()[:3] == tinted


def test_shift_click_paints_a_straight_line_from_the_last_stroke(canvas):
    canvas.set_zoom(1.0)
    drag(canvas, [QPointF(100, 100), QPointF(110, 100)])
    mouse(
        canvas,
        QEvent.Type.MouseButtonPress,
        QPointF(500, 400),
        modifiers=Qt.KeyboardModifier.ShiftModifier,
    )
    mouse(canvas, QEvent.Type.MouseButtonRelease, QPointF(500, 400), held=Qt.MouseButton.NoButton)
    a, b = canvas.to_image(QPointF(110, 100)), canvas.to_image(QPointF(500, 400))
    xs = np.linspace(a.x(), b.x(), 600).astype(int)
    ys = np.linspace(a.y(), b.y(), 600).astype(int)
    assert canvas.document.mask.as_bool()[ys, xs].all()
    assert len(canvas.document.history) == 2


def test_plus_and_minus_keys_zoom(canvas, qtbot):
    zoom = canvas.zoom
    qtbot.keyClick(canvas, Qt.Key.Key_Plus)
    assert canvas.zoom == pytest.approx(zoom * 2**0.5)
    qtbot.keyClick(canvas, Qt.Key.Key_Minus)
    assert canvas.zoom == pytest.approx(zoom)


def test_preview_of_another_shape_shows_as_a_thumbnail_or_in_its_box(canvas):
    crop = np.full((16, 32, 3), 255, np.uint8)  # 2:1, the image is 4:3
    canvas.set_progress("Denoising", 1, 8, crop)
    assert pixel(canvas, QPoint(400, 100)).getRgb()[:3] == (0, 120, 0)  # not over the image
    assert pixel(canvas, QPoint(400, 600 - 64 - 8 - 20)).getRgb()[:3] == (255, 255, 255)
    canvas.set_progress("Denoising", 2, 8, crop, box=(0, 0, 2000, 1000))
    top_left = canvas.to_widget(QPointF(100, 100)).toPoint()
    assert pixel(canvas, top_left).getRgb()[:3] == (255, 255, 255)
    below = canvas.to_widget(QPointF(100, 1100)).toPoint()
    assert pixel(canvas, below).getRgb()[:3] == (0, 120, 0)


def test_document_actions_show_on_tiles_already_drawn(canvas):
    canvas.tools.set_overlay_opacity(1.0)
    canvas.tools.set_size(60)
    drag(canvas, [QPointF(100, 100), QPointF(700, 500)])  # makes overlay tiles all over
    canvas.grab()
    inside = canvas.to_image(QPointF(400, 150))
    canvas.document.select_rect(inside.x() - 50, inside.y() - 50, inside.x() + 50, inside.y() + 50)
    assert pixel(canvas, QPoint(400, 150)).getRgb()[:3] != (0, 120, 0)
    canvas.document.clear_mask()
    assert pixel(canvas, QPoint(400, 150)).getRgb()[:3] == (0, 120, 0)
    assert pixel(canvas, QPoint(400, 300)).getRgb()[:3] == (0, 120, 0)  # the stroke too


def test_touchpad_scroll_pans_and_ctrl_scroll_zooms(canvas):
    offset, zoom = canvas.offset, canvas.zoom
    wheel(canvas, QPointF(300, 300), 30, pixels=QPoint(0, 25), phase=Qt.ScrollPhase.ScrollUpdate)
    assert canvas.zoom == zoom and canvas.offset - offset == QPointF(0, 25)
    wheel(canvas, QPointF(300, 300), 30, Qt.KeyboardModifier.ControlModifier, QPoint(0, 25),
          Qt.ScrollPhase.ScrollUpdate)  # fmt: skip
    assert canvas.zoom > zoom


def test_a_stroke_repaints_only_around_its_dabs(canvas, monkeypatch):
    canvas.set_zoom(1.0)
    regions = []
    monkeypatch.setattr(canvas, "update", lambda *rect: regions.append(rect))
    drag(canvas, [QPointF(300, 300), QPointF(310, 300), QPointF(320, 305)])
    assert regions and all(len(r) == 1 for r in regions)  # never the whole widget
    assert max(r[0].width() * r[0].height() for r in regions) < 40 * 40

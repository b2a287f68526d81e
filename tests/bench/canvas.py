"""Benchmark of the canvas on a 6000x4000 photo: `python -m tests.bench.canvas` (offscreen Qt).

A 1600x1000 CanvasView shows a Document of a 24-MP image. Measured, each a median:
- opening: converting the version into its pyramid of QImages (once per version);
- a dab: one brush dab through the Document (`stroke_to` one spacing on), with and without the
  repaint of the dirty region that the event loop then does;
- a stroke segment: the mouse moving 100 screen pixels in one event (dabs every 15 % of the
  radius along it) and its repaint, at 100 % and at fit with a small brush;
- closing a stroke (its undo tiles) and undoing it;
- a full repaint of the widget at fit and at 100 %, with a painted mask, and at fit with the
  whole mask covered (every overlay tile drawn);
- whole-mask actions: a 3,000-point lasso, growing by 8 px, a fill and its undo.
The last line printed is one JSON object.
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6.QtCore import QPointF  # noqa: E402
from PySide6.QtGui import QRegion  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app import qt_workaround  # noqa: E402
from app.document import Document  # noqa: E402
from app.tools import Tools  # noqa: E402
from ui.canvas import CanvasView  # noqa: E402

WIDTH, HEIGHT = 6000, 4000
VIEW = (1600, 1000)
BRUSH = 40.0  # diameter in image pixels
REPEATS = 60


def photo() -> np.ndarray:
    """A photo-like 24-MP image: smooth gradients plus noise (no constant areas to cheat on)."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :]
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    for c, (a, b) in enumerate(((180, 60), (120, 90), (60, 150))):
        noise = rng.integers(0, 24, (HEIGHT, WIDTH), dtype=np.uint8)
        image[..., c] = (a * y + b * x).astype(np.uint8) + noise
    return image


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def repaint_dirty(canvas: CanvasView, dirty: list[tuple[int, int, int, int]]) -> float:
    """Repaint now what the mask changes reported (the event loop does it a few ms later)."""
    region = QRegion()
    for rect in dirty:
        for screen in canvas.screen_rects(*rect):
            region += screen
    dirty.clear()
    return timed(canvas.repaint, region)


def measure_dabs(app, canvas: CanvasView, document: Document, dirty: list) -> dict:
    """Dabs one spacing apart along a row, at 100 % and at fit."""
    result = {}
    for name, place in (("100pct", canvas.actual_size), ("fit", canvas.fit)):
        place()
        canvas.repaint()
        start = canvas.to_image(QPointF(200, 300))
        spacing = 0.15 * BRUSH / 2
        document.begin_stroke(start.x(), start.y(), BRUSH / 2, 0.8, False)
        canvas.repaint()
        dirty.clear()
        dab, dab_repaint = [], []
        for i in range(1, REPEATS + 1):
            x = start.x() + i * spacing
            dab.append(timed(document.stroke_to, x, start.y()))
            dab_repaint.append(dab[-1] + repaint_dirty(canvas, dirty))
        end_stroke = timed(document.end_stroke)
        undo = timed(document.undo)
        canvas.repaint()
        result |= {
            f"dab_{name}_ms": median_ms(dab),
            f"dab_and_repaint_{name}_ms": median_ms(dab_repaint),
            f"dab_and_repaint_{name}_max_ms": round(max(dab_repaint) * 1e3, 3),
        }
    result["end_stroke_ms"] = round(end_stroke * 1e3, 3)
    result["undo_stroke_ms"] = round(undo * 1e3, 3)
    return result


def measure_segments(app, canvas: CanvasView, document: Document, dirty: list) -> dict:
    """The cursor jumping 100 screen pixels per mouse event: at 100 % with the 40-px brush, and
    at fit with a 6-px brush (about 500 image pixels per event, the most dabs per event)."""
    result = {}
    for name, place, brush in (("100pct", canvas.actual_size, BRUSH), ("fit_6px", canvas.fit, 6.0)):
        place()
        canvas.repaint()
        at = QPointF(100, 500)
        point = canvas.to_image(at)
        document.begin_stroke(point.x(), point.y(), brush / 2, 0.8, False)
        segment, with_repaint = [], []
        for i in range(1, 13):
            point = canvas.to_image(at + QPointF(100 * i, 30 * (i % 2)))
            segment.append(timed(document.stroke_to, point.x(), point.y()))
            with_repaint.append(segment[-1] + repaint_dirty(canvas, dirty))
        document.end_stroke()
        result[f"segment_100px_{name}_ms"] = median_ms(segment)
        result[f"segment_100px_{name}_and_repaint_ms"] = median_ms(with_repaint)
    return result


def measure_full_repaints(app, canvas: CanvasView, document: Document) -> dict:
    result = {}
    for name, place in (("fit", canvas.fit), ("100pct", canvas.actual_size)):
        place()
        app.processEvents()
        result[f"full_repaint_{name}_ms"] = median_ms([timed(canvas.repaint) for _ in range(20)])
    document.fill_mask()
    canvas.fit()
    app.processEvents()  # builds every overlay tile once
    samples = [timed(canvas.repaint) for _ in range(20)]
    result["full_repaint_fit_whole_mask_ms"] = median_ms(samples)
    document.undo()
    app.processEvents()
    return result


def measure_mask_actions(document: Document) -> dict:
    """Whole-mask actions on the 24-MP mask: a 3,000-point lasso, grow by 8 px, fill, undo."""
    angles = np.linspace(0, 2 * np.pi, 3000, endpoint=False)
    lasso = np.stack([3000 + 2500 * np.cos(angles), 2000 + 1700 * np.sin(angles)], axis=1)
    result = {"lasso_3000_points_ms": round(timed(document.select_lasso, lasso.tolist()) * 1e3, 1)}
    result["grow_8px_ms"] = round(timed(document.grow_mask, 8) * 1e3, 1)
    result["fill_ms"] = round(timed(document.fill_mask) * 1e3, 1)
    result["undo_fill_ms"] = round(timed(document.undo) * 1e3, 1)
    for _ in range(2):
        document.undo()
    return result


def main() -> dict:
    qt_workaround.check()  # PySide6 6.12 on Python 3.11 loses references per Qt call
    app = QApplication.instance() or QApplication(sys.argv[:1])
    image = photo()
    document = Document(image, [].append)
    tools = Tools(size=BRUSH, hardness=0.8)
    started = time.perf_counter()
    canvas = CanvasView(document, tools)
    open_ms = (time.perf_counter() - started) * 1e3
    canvas.resize(*VIEW)
    canvas.show()
    app.processEvents()
    for i in range(30):  # some mask, so repaints draw overlay tiles
        document.paint_line([(300 + 180 * i, 400), (300 + 180 * i, 3600)], 30, 0.8)
    result = {"image": f"{WIDTH}x{HEIGHT}", "view": f"{VIEW[0]}x{VIEW[1]}", "brush_px": BRUSH}
    result["open_pyramid_ms"] = round(open_ms, 1)
    dirty = []
    document.mask_changed.connect(lambda *rect: dirty.append(rect))
    result |= measure_dabs(app, canvas, document, dirty)
    result |= measure_segments(app, canvas, document, dirty)
    result |= measure_full_repaints(app, canvas, document)
    result |= measure_mask_actions(document)
    result["undo_store_bytes"] = document.history.nbytes
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}"
    canvas.close()
    return result


if __name__ == "__main__":
    result = main()
    print(f"open a {result['image']} photo: {result['open_pyramid_ms']} ms")
    for name in ("100pct", "fit"):
        print(
            f"dab ({BRUSH:g} px brush) at {name}: {result[f'dab_{name}_ms']} ms, with its repaint "
            f"{result[f'dab_and_repaint_{name}_ms']} ms "
            f"(worst {result[f'dab_and_repaint_{name}_max_ms']} ms)"
        )
    for name in ("100pct", "fit_6px"):
        print(
            f"100-px stroke segment at {name}: {result[f'segment_100px_{name}_ms']} ms, "
            f"with its repaint {result[f'segment_100px_{name}_and_repaint_ms']} ms"
        )
    print(
        f"full repaint: fit {result['full_repaint_fit_ms']} ms, 100 % "
        f"{result['full_repaint_100pct_ms']} ms, fit with the whole mask covered "
        f"{result['full_repaint_fit_whole_mask_ms']} ms"
    )
    print(
        f"24-MP mask: lasso of 3,000 points {result['lasso_3000_points_ms']} ms, grow 8 px "
        f"{result['grow_8px_ms']} ms, fill {result['fill_ms']} ms, undo fill "
        f"{result['undo_fill_ms']} ms"
    )
    print(json.dumps(result))

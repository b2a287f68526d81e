"""Tools: the canvas's tool options (tool, brush size and hardness, eraser, mask overlay colour and
opacity), shared by the canvas and the tool-options bar. No widgets.

The brush size is a diameter in image pixels, as in Krita and IOPaint, so a stroke covers the same
part of the photo at any zoom; the canvas draws its outline scaled to the zoom.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

BRUSH, RECT, LASSO = "brush", "rect", "lasso"
TOOLS = (BRUSH, RECT, LASSO)
MIN_SIZE, MAX_SIZE = 1.0, 2000.0
SIZE_STEP = 1.25  # `[` and `]` shrink and grow the brush by this factor


class Tools(QObject):
    tool_changed = Signal(str)
    size_changed = Signal(float)  # diameter in image pixels
    hardness_changed = Signal(float)  # 0 feathered to the centre .. 1 hard edge
    eraser_changed = Signal(bool)
    overlay_changed = Signal()  # colour, opacity or visibility

    def __init__(
        self,
        size: float = 40.0,
        hardness: float = 0.8,
        overlay_color: tuple[int, int, int] = (255, 40, 80),
        overlay_opacity: float = 0.5,
    ):
        super().__init__()
        self.tool = BRUSH
        self.size = _clamp(size, MIN_SIZE, MAX_SIZE)
        self.hardness = _clamp(hardness, 0.0, 1.0)
        self.eraser = False
        self.overlay_color = overlay_color  # r, g, b
        self.overlay_opacity = _clamp(overlay_opacity, 0.0, 1.0)
        self.overlay_visible = True  # hide the tint to judge the picture under it (`H`)

    @property
    def radius(self) -> float:
        return self.size / 2

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"The tool must be one of {', '.join(TOOLS)}, not {tool!r}.")
        if tool != self.tool:
            self.tool = tool
            self.tool_changed.emit(tool)

    def set_size(self, size: float) -> None:
        size = round(_clamp(size, MIN_SIZE, MAX_SIZE), 1)
        if size != self.size:
            self.size = size
            self.size_changed.emit(size)

    def grow(self) -> None:
        self.set_size(max(self.size * SIZE_STEP, self.size + 1))

    def shrink(self) -> None:
        self.set_size(min(self.size / SIZE_STEP, self.size - 1))

    def set_hardness(self, hardness: float) -> None:
        hardness = _clamp(hardness, 0.0, 1.0)
        if hardness != self.hardness:
            self.hardness = hardness
            self.hardness_changed.emit(hardness)

    def set_eraser(self, on: bool) -> None:
        if on != self.eraser:
            self.eraser = on
            self.eraser_changed.emit(on)

    def toggle_eraser(self) -> None:
        self.set_eraser(not self.eraser)

    def set_overlay_color(self, color: tuple[int, int, int]) -> None:
        color = tuple(int(_clamp(c, 0, 255)) for c in color)  # type: ignore[assignment]
        if color != self.overlay_color:
            self.overlay_color = color
            self.overlay_changed.emit()

    def set_overlay_opacity(self, opacity: float) -> None:
        opacity = _clamp(opacity, 0.0, 1.0)
        if opacity != self.overlay_opacity:
            self.overlay_opacity = opacity
            self.overlay_changed.emit()

    def set_overlay_visible(self, visible: bool) -> None:
        if visible != self.overlay_visible:
            self.overlay_visible = visible
            self.overlay_changed.emit()

    def toggle_overlay(self) -> None:
        self.set_overlay_visible(not self.overlay_visible)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(float(value), low), high)

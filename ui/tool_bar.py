"""ToolOptions: the bar over the canvas. Tool (brush, rectangle, lasso), brush size and hardness,
eraser, the mask actions (invert, clear, fill) and the mask overlay's colour and opacity."""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import QColorDialog, QLabel, QSlider, QSpinBox, QToolBar, QToolButton

from app.tools import BRUSH, LASSO, RECT, Tools
from app.workspace import Workspace
from ui.theme import icon

SLIDER_MAX_SIZE = 500  # px; the spin box goes further (app/tools.py MAX_SIZE)


class ToolOptions(QToolBar):
    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.setObjectName("toolOptions")
        self.setWindowTitle(self.tr("Tool options"))
        self.setMovable(False)
        self.workspace = workspace
        self.tools: Tools = workspace.tools
        self._tool_buttons()
        self.addSeparator()
        self._brush_controls()
        self.addSeparator()
        self.mask_actions = [
            self._mask_action("invert", self.tr("Invert mask"), "invert_mask", "Ctrl+Shift+I"),
            self._mask_action("clear", self.tr("Clear mask"), "clear_mask", "Ctrl+D"),
            self._mask_action("fill", self.tr("Fill mask (whole image)"), "fill_mask", "Ctrl+A"),
        ]
        self.addSeparator()
        self._overlay_controls()
        self.addSeparator()
        self.tools.tool_changed.connect(self.show_tools)
        self.tools.size_changed.connect(self.show_tools)
        self.tools.hardness_changed.connect(self.show_tools)
        self.tools.eraser_changed.connect(self.show_tools)
        self.tools.overlay_changed.connect(self.show_tools)
        workspace.current_changed.connect(self.show_tools)
        self.show_tools()

    def _tool_buttons(self) -> None:
        group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for tool, name, text, key in (
            (BRUSH, "brush", self.tr("Brush"), "B"),
            (RECT, "rect", self.tr("Rectangle selection"), "M"),
            (LASSO, "lasso", self.tr("Lasso selection"), "L"),
        ):
            action = QAction(icon(name), text, self, checkable=True)
            action.setToolTip(self.tr("{0} ({1} on the canvas)").format(text, key))
            action.triggered.connect(lambda _=False, t=tool: self.tools.set_tool(t))
            group.addAction(action)
            self.addAction(action)
            self.tool_actions[tool] = action
        self.eraser = QAction(icon("eraser"), self.tr("Eraser"), self, checkable=True)
        self.eraser.setToolTip(self.tr("Eraser: the brush removes mask (E; or the right button)"))
        self.eraser.toggled.connect(self.tools.set_eraser)
        self.addAction(self.eraser)

    def _brush_controls(self) -> None:
        self.addWidget(QLabel(self.tr("Size")))
        self.size_slider = QSlider(Qt.Orientation.Horizontal, minimum=1, maximum=SLIDER_MAX_SIZE)
        self.size_slider.setFixedWidth(140)
        self.size_slider.setToolTip(self.tr("Brush diameter in image pixels ([ and ])"))
        self.size_slider.valueChanged.connect(self.tools.set_size)
        self.addWidget(self.size_slider)
        self.size_box = QSpinBox(minimum=1, maximum=2000, suffix=" px")
        self.size_box.setToolTip(self.size_slider.toolTip())
        self.size_box.valueChanged.connect(self.tools.set_size)
        self.addWidget(self.size_box)
        self.addWidget(QLabel(self.tr("Hardness")))
        self.hardness = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100)
        self.hardness.setFixedWidth(90)
        self.hardness.setToolTip(self.tr("Brush edge: 0 % feathered, 100 % hard"))
        self.hardness.valueChanged.connect(lambda v: self.tools.set_hardness(v / 100))
        self.addWidget(self.hardness)

    def _mask_action(self, name: str, text: str, method: str, key: str) -> QAction:
        action = QAction(icon(name), text, self)
        action.setShortcut(QKeySequence(key))
        action.setToolTip(f"{text} ({QKeySequence(key).toString()})")
        action.triggered.connect(lambda: self._document_call(method))
        self.addAction(action)
        return action

    def _overlay_controls(self) -> None:
        self.addWidget(QLabel(self.tr("Overlay")))
        self.colour = QToolButton()
        self.colour.setToolTip(self.tr("The mask overlay's colour"))
        self.colour.clicked.connect(self.choose_colour)
        self.addWidget(self.colour)
        self.opacity = QSlider(Qt.Orientation.Horizontal, minimum=5, maximum=100)
        self.opacity.setFixedWidth(80)
        self.opacity.setToolTip(self.tr("The mask overlay's opacity"))
        self.opacity.valueChanged.connect(lambda v: self.tools.set_overlay_opacity(v / 100))
        self.addWidget(self.opacity)

    # ------------------------------------------------------------ input

    def _document_call(self, method: str) -> None:
        if self.workspace.current is not None:
            getattr(self.workspace.current, method)()

    def choose_colour(self) -> None:
        colour = QColorDialog.getColor(QColor(*self.tools.overlay_color), self, self.tr("Overlay"))
        if colour.isValid():
            self.tools.set_overlay_color((colour.red(), colour.green(), colour.blue()))

    # ------------------------------------------------------------ showing

    def show_tools(self, *_) -> None:
        t = self.tools
        widgets = (self.size_slider, self.size_box, self.hardness, self.opacity, self.eraser)
        blockers = [QSignalBlocker(w) for w in widgets]
        self.tool_actions[t.tool].setChecked(True)
        self.eraser.setChecked(t.eraser)
        self.size_slider.setValue(min(round(t.size), SLIDER_MAX_SIZE))
        self.size_box.setValue(round(t.size))
        self.hardness.setValue(round(t.hardness * 100))
        self.opacity.setValue(round(t.overlay_opacity * 100))
        del blockers
        swatch = QPixmap(18, 18)
        swatch.fill(QColor(*t.overlay_color))
        self.colour.setIcon(QIcon(swatch))
        for action in self.mask_actions:
            action.setEnabled(self.workspace.current is not None)

    def shortcuts(self) -> list[tuple[str, str]]:
        """The canvas's own keys (it handles them while it has the focus)."""
        tr = self.tr
        return [
            (tr("Brush / rectangle / lasso"), "B / M / L"),
            (tr("Brush smaller / larger"), "[ / ]"),
            (tr("Eraser on or off"), "E"),
            (tr("Fit / 100 %"), "Esc / 1"),
            (tr("Pan"), tr("Space + drag, middle button")),
            (tr("Zoom"), tr("wheel, pinch")),
        ]

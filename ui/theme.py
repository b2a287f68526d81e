"""The dark and light themes and the icons, read from resources/.

One style sheet, `resources/theme.qss`, names colours by role (`@panel@`, `@accent@`...); each
theme is a table of those roles. "system" follows the desktop's colour scheme (Qt 6.5+), and
changes with it while the app runs. The canvas keeps its own neutral dark stage in both themes,
as painting apps do, so pictures are judged against the same surround.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from PySide6.QtCore import QByteArray, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QIconEngine, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

RESOURCES = Path(__file__).resolve().parents[1] / "resources"

DARK = {
    "window": "#1e2127",
    "panel": "#252932",
    "raised": "#2e333d",
    "field": "#16181d",
    "seam": "#15171c",
    "border": "#3a404c",
    "border_soft": "#363b46",
    "button_border": "#454c5b",
    "hover_border": "#434a59",
    "tooltip_border": "#4a5160",
    "button_hover_border": "#5a6274",
    "check_border": "#6a7284",
    "button": "#323845",
    "button_hover": "#3a4150",
    "button_pressed": "#2a2f39",
    "tool_hover": "#333947",
    "text": "#d6dae2",
    "text_dim": "#9aa3b2",
    "text_strong": "#ffffff",
    "tooltip_text": "#e8ebf0",
    "tool_disabled": "#5c6370",
    "text_disabled": "#6a7180",
    "placeholder": "#6f7786",
    "accent": "#7aa2ff",
    "accent_hover": "#9ab8ff",
    "accent_soft": "#34497a",
    "selection": "#3d5a9e",
    "selection_text": "#ffffff",
    "primary": "#3d63c9",
    "primary_border": "#5a80e6",
    "primary_hover": "#4a71d8",
    "primary_text": "#ffffff",
    "primary_disabled": "#283046",
    "primary_disabled_border": "#343d55",
    "primary_disabled_text": "#737c90",
    "error": "#ff8f8f",
}

LIGHT = {
    "window": "#f3f4f6",
    "panel": "#e8eaee",
    "raised": "#ffffff",
    "field": "#ffffff",
    "seam": "#c8ccd3",
    "border": "#bfc5ce",
    "border_soft": "#d2d6dc",
    "button_border": "#b8bec8",
    "hover_border": "#a9b0bc",
    "tooltip_border": "#b8bec8",
    "button_hover_border": "#98a0ad",
    "check_border": "#8c94a1",
    "button": "#fbfbfc",
    "button_hover": "#f0f2f5",
    "button_pressed": "#dfe3e8",
    "tool_hover": "#dde1e7",
    "text": "#1f2329",
    "text_dim": "#58606d",
    "text_strong": "#0f1115",
    "tooltip_text": "#1f2329",
    "tool_disabled": "#a3a9b3",
    "text_disabled": "#9aa0aa",
    "placeholder": "#8a919c",
    "accent": "#3d63c9",
    "accent_hover": "#2f55b8",
    "accent_soft": "#cddaff",
    "selection": "#3d63c9",
    "selection_text": "#ffffff",
    "primary": "#3d63c9",
    "primary_border": "#3357b5",
    "primary_hover": "#4a71d8",
    "primary_text": "#ffffff",
    "primary_disabled": "#c9d3ea",
    "primary_disabled_border": "#b7c3e0",
    "primary_disabled_text": "#7d879a",
    "error": "#c62828",
}

PALETTE_ROLES = {  # what the style sheet does not reach (Fusion's own drawing) takes these
    QPalette.ColorRole.Window: "window",
    QPalette.ColorRole.WindowText: "text",
    QPalette.ColorRole.Base: "field",
    QPalette.ColorRole.AlternateBase: "panel",
    QPalette.ColorRole.Text: "text",
    QPalette.ColorRole.Button: "button",
    QPalette.ColorRole.ButtonText: "text",
    QPalette.ColorRole.Highlight: "selection",
    QPalette.ColorRole.HighlightedText: "selection_text",
    QPalette.ColorRole.ToolTipBase: "raised",
    QPalette.ColorRole.ToolTipText: "tooltip_text",
    QPalette.ColorRole.PlaceholderText: "placeholder",
}


def desktop_is_light() -> bool:
    """The desktop's colour scheme is light (an unknown one counts as dark)."""
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Light


def resolved(theme: str) -> str:
    """The theme to draw, "dark" or "light": "system" asks the desktop."""
    if theme in ("dark", "light"):
        return theme
    return "light" if desktop_is_light() else "dark"


def style_sheet(colours: dict[str, str]) -> str:
    """resources/theme.qss with every @role@ filled; an unknown role is an error, not a blank."""
    sheet = (RESOURCES / "theme.qss").read_text()
    sheet = sheet.replace("@icons@", (RESOURCES / "icons").as_posix())
    return re.sub(r"@(\w+)@", lambda m: colours[m.group(1)], sheet)


def apply_theme(app: QApplication, theme: str = "dark") -> str:
    """Fusion style, the theme's palette and its sheet; returns "dark" or "light". With
    "system" the app follows later changes of the desktop's scheme too."""
    name = resolved(theme)
    colours = LIGHT if name == "light" else DARK
    app.setStyle("Fusion")
    palette = QPalette()
    for role, key in PALETTE_ROLES.items():
        palette.setColor(role, QColor(colours[key]))
    app.setPalette(palette)
    _current["colours"] = colours
    app.setStyleSheet(style_sheet(colours))
    app.setProperty("llada_theme", theme)
    hints = QGuiApplication.styleHints()
    if theme == "system" and not app.property("llada_follows_scheme"):
        app.setProperty("llada_follows_scheme", True)
        hints.colorSchemeChanged.connect(lambda _scheme: _follow(app))
    return name


def _follow(app: QApplication) -> None:
    if app.property("llada_theme") == "system":  # the user may have picked one since
        apply_theme(app, "system")


# The icons are drawn in the dark theme's colours; these are swapped for the theme's own at paint.
ICON_ROLES = {"#d6dae2": "text", "#9aa3b2": "text_dim", "#7aa2ff": "accent"}
_current = {"colours": DARK}  # the applied theme's table, read when an icon paints


class ThemedSvg(QIconEngine):
    """An SVG icon painted in the current theme's colours (greyed when disabled), so a theme
    change recolours the icons already on screen at their next repaint."""

    def __init__(self, svg: str):
        super().__init__()
        self.svg = svg
        self._renderers: dict[tuple[int, bool], QSvgRenderer] = {}

    def paint(self, painter: QPainter, rect, mode, state) -> None:
        colours = _current["colours"]
        disabled = mode == QIcon.Mode.Disabled
        key = (id(colours), disabled)
        if key not in self._renderers:
            text = self.svg
            for dark, role in ICON_ROLES.items():
                text = text.replace(dark, colours["text_disabled" if disabled else role])
            self._renderers[key] = QSvgRenderer(QByteArray(text.encode()))
        self._renderers[key].render(painter, QRectF(rect))

    def pixmap(self, size: QSize, mode, state) -> QPixmap:
        pixmap = QPixmap(size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        self.paint(painter, pixmap.rect(), mode, state)
        painter.end()
        return pixmap

    def clone(self) -> ThemedSvg:
        return ThemedSvg(self.svg)


@cache
def icon(name: str) -> QIcon:
    """resources/icons/NAME.svg in the theme's colours; an empty icon when it is missing (the
    button keeps its text)."""
    path = RESOURCES / "icons" / f"{name}.svg"
    return QIcon(ThemedSvg(path.read_text())) if path.exists() else QIcon()

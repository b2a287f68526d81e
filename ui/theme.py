"""The dark theme and the icons, both read from resources/."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def apply_dark_theme(app: QApplication) -> None:
    """Fusion style, a dark palette (for what the style sheet does not reach) and the sheet."""
    app.setStyle("Fusion")
    palette = QPalette()
    for role, colour in (
        (QPalette.ColorRole.Window, "#1e2127"),
        (QPalette.ColorRole.WindowText, "#d6dae2"),
        (QPalette.ColorRole.Base, "#16181d"),
        (QPalette.ColorRole.AlternateBase, "#252932"),
        (QPalette.ColorRole.Text, "#d6dae2"),
        (QPalette.ColorRole.Button, "#323845"),
        (QPalette.ColorRole.ButtonText, "#d6dae2"),
        (QPalette.ColorRole.Highlight, "#3d5a9e"),
        (QPalette.ColorRole.HighlightedText, "#ffffff"),
        (QPalette.ColorRole.ToolTipBase, "#2e333d"),
        (QPalette.ColorRole.ToolTipText, "#e8ebf0"),
        (QPalette.ColorRole.PlaceholderText, "#6f7786"),
    ):
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)
    sheet = (RESOURCES / "theme_dark.qss").read_text()
    app.setStyleSheet(sheet.replace("@icons@", (RESOURCES / "icons").as_posix()))


@cache
def icon(name: str) -> QIcon:
    """resources/icons/NAME.svg; an empty icon when it is missing (the button keeps its text)."""
    path = RESOURCES / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()

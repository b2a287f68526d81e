"""Themes: the light and dark tables fill the one style sheet, icons take the theme's colours,
and "system" follows the desktop's scheme, also when it changes while the app runs."""

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon

from ui import theme


@pytest.fixture
def app(qapp):
    yield qapp
    theme.apply_theme(qapp, "dark")  # as every other test expects


def lightness(icon: QIcon, mode=QIcon.Mode.Normal) -> int:
    """The lightness of the icon's darkest-or-lightest drawn pixel (its ink)."""
    image = icon.pixmap(48, 48, mode).toImage()
    inks = [
        image.pixelColor(x, y)
        for x in range(48)
        for y in range(48)
        if image.pixelColor(x, y).alpha() > 200
    ]
    assert inks, "the icon drew nothing"
    return sorted(c.lightness() for c in inks)[len(inks) // 2]


def test_both_tables_fill_every_role_of_the_sheet():
    assert theme.DARK.keys() == theme.LIGHT.keys()
    for colours in (theme.DARK, theme.LIGHT):
        sheet = theme.style_sheet(colours)
        assert "@" not in sheet and colours["panel"] in sheet


def test_light_and_dark_change_the_palette_and_the_icons_already_made(app):
    brush = theme.icon("brush")
    theme.apply_theme(app, "dark")
    on_dark = lightness(brush)
    assert app.palette().color(app.palette().ColorRole.Window) == QColor(theme.DARK["window"])
    assert theme.apply_theme(app, "light") == "light"
    assert app.palette().color(app.palette().ColorRole.Window) == QColor(theme.LIGHT["window"])
    on_light = lightness(brush)
    assert on_dark > 180 and on_light < 80  # light ink on dark panels, dark ink on light ones
    assert lightness(brush, QIcon.Mode.Disabled) > on_light  # greyed when disabled
    assert theme.LIGHT["window"] in app.styleSheet()


def test_system_follows_the_desktops_scheme_while_running(app, monkeypatch):
    scheme = {"light": True}
    monkeypatch.setattr(theme, "desktop_is_light", lambda: scheme["light"])
    hints = QGuiApplication.styleHints()
    assert theme.apply_theme(app, "system") == "light"
    scheme["light"] = False
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)  # as the desktop does when it switches
    assert app.palette().color(app.palette().ColorRole.Window) == QColor(theme.DARK["window"])
    theme.apply_theme(app, "light")  # a theme chosen by hand is not overridden by the desktop
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)
    assert app.palette().color(app.palette().ColorRole.Window) == QColor(theme.LIGHT["window"])

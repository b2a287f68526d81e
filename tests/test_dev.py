"""dev.py names the package to install when Qt's X11 plugin lacks a library, instead of Qt's
abort."""

import sys

import pytest

import dev

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks X11 libraries")


def finder(missing: set[str]):
    return lambda name: None if name in missing else f"lib{name}.so"


@linux_only
def test_a_missing_xcb_cursor_names_its_package_in_one_sentence():
    problem = dev.missing_qt_library(finder({"xcb-cursor"}), {"DISPLAY": ":0"})
    assert "sudo apt install libxcb-cursor0" in problem
    assert problem.count(". ") == 0 and problem.endswith(".")


@linux_only
def test_nothing_missing_or_no_x11_says_nothing():
    assert dev.missing_qt_library(finder(set()), {"DISPLAY": ":0"}) == ""
    everything = finder(set(dev.QT_XCB_LIBRARIES))
    assert dev.missing_qt_library(everything, {"QT_QPA_PLATFORM": "offscreen"}) == ""
    assert dev.missing_qt_library(everything, {"WAYLAND_DISPLAY": "wayland-0"}) == ""
    assert "libxkbcommon-x11-0" in dev.missing_qt_library(
        finder({"xkbcommon-x11"}), {"QT_QPA_PLATFORM": "xcb"}
    )


@linux_only
def test_the_real_check_names_a_known_package_or_nothing():
    problem = dev.missing_qt_library()
    assert problem == "" or any(package in problem for package in dev.QT_XCB_LIBRARIES.values())

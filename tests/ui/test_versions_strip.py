"""ui/versions_strip.py: a thumbnail per version; click views; make current, star, delete."""

import numpy as np
from PySide6.QtCore import Qt

from app.settings import Settings
from app.workspace import Workspace
from engine import protocol as p
from ui.versions_strip import VersionsStrip

IMAGE = np.full((20, 30, 3), 90, np.uint8)


def with_result(workspace: Workspace):
    document = workspace.open_image(IMAGE, title="a")
    request = document.edit("brighter")
    document.handle(p.ImageResult(request.job_id, IMAGE + 50, {"task": "edit", "seed": "4"}))
    document.handle(p.Finished(request.job_id))
    return document


def test_the_strip_follows_versions_and_forwards_clicks_and_buttons(qtbot):
    workspace = Workspace(Settings(), lambda r: None, save_settings=lambda: None)
    strip = VersionsStrip(workspace)
    qtbot.addWidget(strip)
    assert strip.list.count() == 0 and not strip.star_button.isEnabled()
    document = with_result(workspace)
    assert strip.list.count() == 2
    assert [strip.list.item(i).text() for i in range(2)] == ["#1", "#2 · current"]
    assert "seed: 4" in strip.list.item(1).toolTip()
    first = strip.list.item(0)
    rect = strip.list.visualItemRect(first)
    qtbot.mouseClick(strip.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert document.viewed == document.versions[0].id != document.current
    strip.make_current_button.click()
    assert document.current == document.versions[0].id
    strip.star_button.click()
    assert document.versions[0].starred and strip.list.item(0).text().startswith("★")
    strip.list.setCurrentRow(1)
    strip.delete_button.click()
    assert len(document.versions) == 1 and strip.list.count() == 1
    assert not strip.delete_button.isEnabled()  # the last version stays

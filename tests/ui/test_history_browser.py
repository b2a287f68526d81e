"""HistoryBrowser: thumbnails, search by prompt, task and star filters, open, delete."""

import numpy as np
from PySide6.QtWidgets import QMessageBox

from app.history import History
from ui.history_browser import HistoryBrowser


def filled(tmp_path) -> History:
    history = History(tmp_path)
    for i, (task, prompt) in enumerate([("generate", "a red fox"), ("edit", "make the fox blue"),
                                        ("generate", "a lighthouse at night")]):  # fmt: skip
        history.add(np.full((16, 24, 3), i * 60, np.uint8), {"task": task, "prompt": prompt,
                                                             "seed": str(i)})  # fmt: skip
    return history


def shown(browser) -> list[str]:
    return [browser._entry(browser.grid.item(i)).prompt for i in range(browser.grid.count())]


def test_search_filter_open_and_delete(qtbot, tmp_path, monkeypatch):
    history = filled(tmp_path)
    browser = HistoryBrowser(history)
    qtbot.addWidget(browser)
    assert shown(browser) == ["a lighthouse at night", "make the fox blue", "a red fox"]
    qtbot.waitUntil(lambda: not browser.grid.item(2).icon().isNull())
    browser.search.setText("FOX")
    browser.refresh()
    assert shown(browser) == ["make the fox blue", "a red fox"]
    browser.task.setCurrentIndex(browser.task.findData("edit"))
    assert shown(browser) == ["make the fox blue"]
    browser.grid.item(0).setSelected(True)
    opened = []
    browser.open_requested.connect(opened.append)
    browser.open.click()
    assert [e.prompt for e in opened] == ["make the fox blue"]
    browser.star.click()
    browser.refresh()
    browser.task.setCurrentIndex(0)
    browser.search.clear()
    browser.starred.setChecked(True)
    assert shown(browser) == ["make the fox blue"]
    browser.grid.item(0).setSelected(True)
    path = opened[0].path
    monkeypatch.setattr(QMessageBox, "question", lambda *a: QMessageBox.StandardButton.Yes)
    browser.delete.click()
    browser.refresh()
    assert not path.exists() and shown(browser) == [] and len(history) == 2

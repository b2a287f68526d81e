"""The help dialog lists the window's action shortcuts, widgets' own ones and registered keys."""

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow

from app.chat import Conversation
from ui.chat_panel import ChatPanel
from ui.help_dialog import HelpDialog, register


def test_every_shortcut_is_listed_and_can_be_filtered(qtbot):
    window = QMainWindow()
    qtbot.addWidget(window)
    menu = window.menuBar().addMenu("&File")
    action = QAction("&Open…", window, shortcut=QKeySequence("Ctrl+O"))
    menu.addAction(action)
    window.setCentralWidget(ChatPanel(Conversation(lambda r: None, lambda j: None),
                                      lambda: (None, None)))  # fmt: skip
    register("[ / ]", "Brush smaller / larger", "Canvas")
    dialog = HelpDialog(window)
    rows = {(keys, what) for keys, what, _ in dialog.rows}
    assert ("Ctrl+O", "Open") in rows
    assert ("[ / ]", "Brush smaller / larger") in rows
    assert ("Ctrl+Enter", "Send the chat question") in rows  # the chat panel's own key
    dialog.filter.setText("brush")
    visible = [r for r in range(dialog.table.rowCount()) if not dialog.table.isRowHidden(r)]
    assert [dialog.table.item(r, 1).text() for r in visible] == ["Brush smaller / larger"]

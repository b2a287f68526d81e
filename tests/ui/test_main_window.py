"""The main window says when no model is set, and choosing a folder stores it in the settings."""

from PySide6.QtWidgets import QFileDialog

from app.settings import Settings
from ui.main_window import MainWindow


def test_no_model_message_and_choosing_a_folder(qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_path", lambda: tmp_path / "settings.json")
    window = MainWindow(Settings())
    qtbot.addWidget(window)
    assert "No model is set yet" in window.message.text()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a: str(tmp_path / "m"))
    window.choose.click()
    assert window.message.text() == f"Model: {tmp_path / 'm'}"
    assert Settings.load(tmp_path / "settings.json").model_folder == str(tmp_path / "m")

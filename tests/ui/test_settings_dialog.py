"""SettingsDialog: OK stores and saves every value; changing the device asks for a reload, which
goes ahead of the queued jobs."""

from app.engine_client import EngineClient
from app.model_setup import reload_model
from app.settings import Settings
from engine import protocol as p
from tests.app.test_jobs import edit
from ui.settings_dialog import SettingsDialog


def test_ok_saves_and_a_new_device_reloads_ahead_of_the_queue(qtbot, tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    monkeypatch.setattr("app.settings.default_path", lambda: path)
    settings = Settings(model_folder="/models/uni")
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    client = EngineClient()  # not started: jobs wait in its queue
    client.submit(edit("a"))
    client.submit(edit("b"))
    dialog.reload_needed.connect(lambda: reload_model(client, settings))
    themes = []
    dialog.theme_changed.connect(themes.append)
    dialog.device.setCurrentText("cpu")
    dialog.theme.setCurrentText("light")
    dialog.edit_cfg_text.setValue(5.5)
    dialog.vram.setCurrentIndex(dialog.vram.findData("low"))
    dialog.accept()
    saved = Settings.load(path)
    assert (saved.device, saved.theme, saved.edit_cfg_text, saved.vram_preset) == (
        "cpu", "light", 5.5, "low")  # fmt: skip
    assert settings == saved and themes == ["light"]
    first, *rest = client.queued
    assert isinstance(first, p.LoadModel) and (first.folder, first.device) == ("/models/uni", "cpu")
    assert first.vram == 10.0  # the "low" preset's budget for the engine's residency plan
    assert [r.job_id for r in rest] == ["a", "b"]


def test_cancel_changes_nothing(qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_path", lambda: tmp_path / "settings.json")
    settings = Settings()
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.brush_size.setValue(99)
    dialog.reject()
    assert settings == Settings() and not (tmp_path / "settings.json").exists()


def test_the_backend_tab_stores_remote_servers(qtbot, tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    monkeypatch.setattr("app.settings.default_path", lambda: path)
    settings = Settings()
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.backend.remote.setChecked(True)
    dialog.backend.urls.setPlainText("http://127.0.0.1:30000\nhttp://127.0.0.1:30001")
    dialog.accept()
    saved = Settings.load(path)
    assert saved.backend == "remote"
    assert saved.backend_urls == ["http://127.0.0.1:30000", "http://127.0.0.1:30001"]


def test_allowing_a_lower_preset_is_saved_and_reloads_with_it(qtbot, tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    monkeypatch.setattr("app.settings.default_path", lambda: path)
    settings = Settings(model_folder="/models/uni")
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    assert not dialog.allow_lower.isChecked()  # off by default
    assert "out of GPU memory" in dialog.allow_lower.text()
    assert "smaller preset" in dialog.allow_lower.toolTip()
    client = EngineClient()
    dialog.reload_needed.connect(lambda: reload_model(client, settings))
    dialog.allow_lower.setChecked(True)
    dialog.accept()
    assert Settings.load(path).allow_lower_preset is True
    (request,) = client.queued
    assert isinstance(request, p.LoadModel) and request.allow_lower_preset is True
    again = SettingsDialog(settings)  # shows the stored choice
    qtbot.addWidget(again)
    assert again.allow_lower.isChecked()


def test_vram_presets_are_named_by_card_size_and_say_what_they_do(qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_path", lambda: tmp_path / "settings.json")
    dialog = SettingsDialog(Settings(model_folder="/models/uni"))
    qtbot.addWidget(dialog)
    shown = [dialog.vram.itemText(i) for i in range(dialog.vram.count())]
    assert shown == ["Auto", "48 GB or more", "24 GB", "12-16 GB", "Under 12 GB"]
    dialog.vram.setCurrentIndex(dialog.vram.findData("standard"))
    assert "backbone int4, decoder int8" in dialog.vram_hint.text()
    dialog.vram.setCurrentIndex(dialog.vram.findData("low"))
    assert "slowly" in dialog.vram_hint.text()
    dialog.precision.setCurrentText("int4")
    assert "third of the memory" in dialog.precision_hint.text()
    dialog.vram.setCurrentIndex(dialog.vram.findData("standard"))
    request = dialog.values().load_request()
    assert (request.vram, request.precision) == (24.0, "int4")  # the engine's "24 GB" plan

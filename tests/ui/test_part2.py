"""Part 2 installed in the main window with the fake engine: docks, first-run page, chat in the
dock, queue, history, the restore offer after a crash, and the menus."""

import numpy as np
import pytest
from PySide6.QtWidgets import QMessageBox

from app.settings import Settings
from app.workspace import Workspace
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)
from tests.app.test_jobs import until
from ui import part2
from ui.main_window import MainWindow

PHOTO = np.random.default_rng(5).integers(0, 256, (32, 48, 3), dtype=np.uint8)


ASKED = []  # the questions the window asked, each answered Yes


@pytest.fixture(autouse=True)
def quiet_settings(tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_path", lambda: tmp_path / "config" / "s.json")
    ASKED.clear()
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a: ASKED.append(a) or QMessageBox.StandardButton.Yes)  # fmt: skip


def window_for(client, tmp_path, **settings) -> MainWindow:
    settings = Settings(results_folder=str(tmp_path / "results"), **settings)
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    window = MainWindow(settings, client, workspace)
    part2.install(window, tmp_path / "data")
    return window


@scenario
async def test_first_run_shows_the_setup_page(client, tmp_path):
    window = window_for(client, tmp_path)  # an empty settings folder: no model folder yet
    assert window.setup_page.isVisible()
    window.setup_page.window().close()
    assert window.settings.needs_setup


@scenario
async def test_chat_queue_and_history_in_the_window(client, tmp_path):
    window = window_for(client, tmp_path, model_folder=str(tmp_path))
    assert not hasattr(window, "setup_page")
    document = window.workspace.open_image(PHOTO, title="photo")
    panel = window.chat_view.currentWidget()
    assert panel is window.chat_view.panel(document)
    panel.question.setPlainText("What is it?")
    panel.send.click()
    await until(lambda: not panel.conversation.busy)
    assert panel.views[-1].body.toPlainText().startswith("I see 1 images")
    document.edit("invert", seed=1)
    await until(lambda: len(document.versions) == 2)
    assert [j.kind for j in window.session.jobs.jobs] == ["chat", "edit"]
    window.history_browser.refresh()
    assert window.history_browser.grid.count() == 1
    titles = [a.text().replace("&", "") for m in window.menuBar().actions() if m.menu()
              for a in m.menu().actions()]  # fmt: skip
    for name in ("Settings…", "Collect diagnostics", "About LLaDA Studio", "History"):
        assert name in titles


@scenario
async def test_after_a_crash_the_window_offers_the_documents_back(client, tmp_path):
    window = window_for(client, tmp_path, model_folder=str(tmp_path))
    document = window.workspace.open_image(PHOTO, title="photo")
    document.paint_line([(4, 4), (20, 12)], radius=3)
    window.session.autosave.save_now()
    window.session.autosave.stop()
    (tmp_path / "data" / "autosave" / "running.lock").write_text("999999999")
    again = window_for(client, tmp_path, model_folder=str(tmp_path))
    assert len(ASKED) == 1 and "photo" in ASKED[0][2]
    (restored,) = again.workspace.documents
    assert np.array_equal(restored.mask.coverage, document.mask.coverage)


@scenario
async def test_file_menu_offers_export_and_batch_with_the_panels_values(client, tmp_path):
    window = window_for(client, tmp_path, model_folder=str(tmp_path), edit_steps=5)
    file = next(a.menu() for a in window.menuBar().actions() if a.text().replace("&", "") == "File")
    titles = [a.text().replace("&", "") for a in file.actions()]
    assert "Export images…" in titles and "Batch…" in titles
    window.workspace.form.set_advanced(steps=3)
    window.workspace.form.set_size(512, 384)
    generate = part2.batch_values(window, "generate")
    assert (generate["steps"], generate["width"], generate["height"]) == (3, 512, 384)
    assert part2.batch_values(window, "edit")["steps"] == 5
    assert part2.batch_values(window, "ask")["max_tokens"] == window.settings.answer_tokens

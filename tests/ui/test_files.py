"""Files from the window: drag and drop and paste open images, a saved PNG, JPEG or WebP carries
the engine's metadata, reopening it restores the panels, a broken file says why in one sentence."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog

from app.engine_client import EngineClient
from app.settings import Settings
from app.workspace import Workspace
from engine import imagefile
from engine import protocol as p
from ui.main_window import MainWindow

PHOTO = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
MADE = {"task": "generate", "prompt": "a red boat at dawn", "seed": "1234", "width": "768",
        "height": "1024", "steps": "12", "cfg_scale": "3.0", "decoder": "normal",
        "decoder_steps": "50", "thinking": "false", "elapsed_s": "3.1"}  # fmt: skip


@pytest.fixture
def window(qtbot, tmp_path):
    settings = Settings(results_folder=str(tmp_path))
    client = EngineClient()  # not started: jobs wait in its queue, events come from the test
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    window = MainWindow(settings, client, workspace)
    qtbot.addWidget(window)
    window.show()
    return window


def drop(window, paths) -> bool:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(window, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(window, event)
    return True


def test_dropping_image_files_opens_each_as_a_tab(window, tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(PHOTO).save(first)
    Image.fromarray(PHOTO).save(second, quality=95)
    assert drop(window, [first, second])
    assert [d.title for d in window.workspace.documents] == ["a.png", "b.jpg"]
    assert np.array_equal(window.workspace.documents[0].image, PHOTO)
    assert window.tabs.count() == 2 and window.workspace.current.title == "b.jpg"
    assert window.settings.recent_files[:2] == [str(second.resolve()), str(first.resolve())]
    (tmp_path / "notes.txt").write_text("hello")
    assert not drop(window, [tmp_path / "notes.txt"])  # not an image: the drop is refused


def test_a_broken_file_says_why_in_one_sentence_and_opens_nothing(window, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    messages = []
    window.workspace.error_changed.connect(messages.append)
    window.workspace.open_file(str(broken))
    assert window.workspace.documents == [] and len(messages) == 1
    assert messages[0].startswith("broken.png") and messages[0].endswith(".")
    assert window.statusBar().currentMessage() == messages[0]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_a_saved_image_carries_its_metadata_and_reopening_restores_the_panels(
    window, tmp_path, monkeypatch, suffix
):
    ws = window.workspace
    ws.form.set_prompt("x")
    [job] = ws.form.generate()
    ws.handle(p.ImageResult(job, PHOTO, MADE, thinking=None))
    ws.handle(p.Finished(job))
    target = tmp_path / f"boat{suffix}"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a: (str(target), ""))
    window.actions_by_name["save"].trigger()  # never saved: Save asks where
    assert target.exists()
    kept = imagefile.read_metadata(target)
    assert {k: kept.get(k) for k in MADE} == MADE
    ws.form.set_prompt("something else")
    ws.form.reset_advanced()
    ws.form.set_seed_locked(False)
    ws.open_file(str(target))
    form, panel = ws.form, window.generate_panel
    assert (form.prompt, form.seed, form.seed_locked) == ("a red boat at dawn", 1234, True)
    assert (form.width, form.height, form.advanced.steps, form.advanced.turbo) == (
        768,
        1024,
        12,
        False,
    )
    assert panel.prompt.toPlainText() == "a red boat at dawn" and panel.seed.value() == 1234
    assert panel.steps.value() == 12 and panel.preset.currentData() == "3:4"
    if suffix == ".png":
        assert np.array_equal(ws.current.image, PHOTO)  # lossless


def test_save_again_writes_where_it_was_saved_without_asking(window, tmp_path, monkeypatch):
    ws = window.workspace
    document = ws.open_image(PHOTO, title="p")
    target = tmp_path / "p.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a: (str(target), ""))
    window.actions_by_name["save"].trigger()
    request = document.edit("invert")
    document.handle(p.ImageResult(request.job_id, 255 - PHOTO, {"task": "edit"}))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a: pytest.fail("asked again"))
    window.actions_by_name["save"].trigger()
    assert np.array_equal(imagefile.read_image(target), 255 - PHOTO)
    assert imagefile.read_metadata(target)["task"] == "edit"


def test_a_folder_field_opens_the_chooser_at_its_folder_and_takes_the_choice(qtbot, monkeypatch):
    from PySide6.QtWidgets import QLineEdit, QPushButton

    from ui.files import folder_field

    asked = []

    def chooser(parent, title, start):
        asked.append((title, start))
        return "/chosen" if len(asked) == 1 else ""  # the second time: cancelled

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", chooser)
    line = QLineEdit("/start")
    box = folder_field(line, "Export to")
    qtbot.addWidget(box)
    button = box.findChild(QPushButton)
    button.click()
    assert asked == [("Export to", "/start")] and line.text() == "/chosen"
    button.click()  # cancelling the chooser keeps the folder
    assert line.text() == "/chosen"

"""The main window against the fake engine: its parts and shortcuts, an edit from the instruction
box to a new version and the compare view, a generate to a new tab, the Tab flip, paste."""

import asyncio
import os
import sys

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QGuiApplication, QKeySequence
from PySide6.QtWidgets import QApplication

from app.engine_client import EngineClient
from app.settings import Settings
from app.workspace import Workspace
from engine import protocol as p
from tests.fakes import FakeEngine
from ui.document_page import NORMAL, SPLIT
from ui.main_window import MainWindow
from ui.pixels import to_qimage

GREY = np.full((120, 160, 3), 40, np.uint8)


@pytest.fixture
def window(qtbot, tmp_path):
    settings = Settings(results_folder=str(tmp_path))
    start, engines = FakeEngine.starter(step_s=0.002)
    client = EngineClient(start)
    client.engines = engines
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    window = MainWindow(settings, client, workspace)
    qtbot.addWidget(window)
    window.resize(1200, 800)
    window.show()
    return window


def run(loop, coro, timeout: float = 20.0):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def until(test, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if test():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


async def started(window, tmp_path) -> None:
    await window.client.start()
    await window.client.run(p.LoadModel("load", str(tmp_path)))


def test_the_window_has_its_parts_and_a_shortcut_for_every_frequent_action(window):
    assert window.pages_stack.currentWidget() is window.empty
    assert window.generate_dock.widget().widget() is window.generate_panel
    assert window.chat_dock.isVisibleTo(window) or window.chat_dock.toggleViewAction()
    keys = {
        name: [k.toString() for k in a.shortcuts()] for name, a in window.actions_by_name.items()
    }
    assert keys["open"] and keys["save"] and keys["undo"] and keys["redo"]
    assert keys["fit"] and keys["actual"] and keys["compare"] and keys["run_edit"]
    assert "Ctrl+Return" in keys["generate"]
    assert all(a.toolTip() for a in window.actions_by_name.values())
    rows = dict(window.shortcuts())
    assert "hold Tab" in rows.values() and "[ / ]" in rows.values()
    assert QKeySequence("Ctrl+Shift+I") in [a.shortcut() for a in window.tool_options.mask_actions]


def test_enter_sends_a_masked_edit_whose_result_is_a_new_version_shown_in_compare(
    window, qtbot, qasync_loop, tmp_path
):
    async def body():
        await started(window, tmp_path)
        try:
            document = window.workspace.open_image(GREY, title="grey")
            document.paint_line([(20, 20), (140, 100)], radius=12)
            document.select_rect(0, 0, 80, 120)  # the left half, and the stroke
            painted = document.mask_snapshot()
            window.edit_bar.instruction.setFocus()
            qtbot.keyClicks(window.edit_bar.instruction, "make it bright")
            qtbot.keyClick(window.edit_bar.instruction, Qt.Key.Key_Return)
            [job] = document.jobs.values()
            assert isinstance(job.request, p.Edit) and job.request.instruction == "make it bright"
            assert np.array_equal(job.request.mask, painted)
            document.fill_mask()  # painting on while it runs changes nothing in the request
            assert np.array_equal(job.request.mask, painted)
            sent = window.client.engines[0].requests[-1]
            assert isinstance(sent, p.Edit) and np.array_equal(sent.mask, painted)
            await until(lambda: len(document.versions) == 2 and not document.jobs)
        finally:
            await window.client.shutdown()
        return document, painted, job.request.seed

    document, painted, seed = run(qasync_loop, body())
    after = document.current_version.image
    edited = (255 - 40 + seed) % 256  # the fake engine's edit: inverted, shifted by the seed
    assert np.all(after[painted] == edited)
    assert np.array_equal(after[~painted], GREY[~painted])
    page = window.page()
    assert page.badge.text() == "CURRENT · version 2 of 2"
    window.set_compare(SPLIT)
    assert page.mode == SPLIT and page.canvas.compare_mode == SPLIT
    assert "COMPARING" in page.badge.text()
    page.canvas.set_split(0.75)  # before on the left three quarters, after on the right
    shot = page.canvas.grab().toImage()
    canvas, w = page.canvas, page.canvas.width()
    at_image = [canvas.to_widget(QPointF(x, 60)) for x in (20.0, 60.0, 140.0)]
    assert at_image[0].x() < 0.75 * w < at_image[2].x()
    before_left, before_mid, after_right = (shot.pixelColor(q.toPoint()).red() for q in at_image)
    assert before_left == before_mid == 40  # the before side shows version 1 everywhere
    assert after_right == 40  # version 2 is unchanged outside the rectangle at x=140
    page.canvas.set_split(0.1)
    shot = page.canvas.grab().toImage()
    assert shot.pixelColor(at_image[0].toPoint()).red() == edited  # version 2 inside its mask
    window.set_compare(SPLIT)  # the same key again returns to the canvas
    assert page.mode == NORMAL and page.canvas.compare_mode is None


def test_generate_opens_the_result_as_a_new_tab(window, qasync_loop, tmp_path):
    async def body():
        await started(window, tmp_path)
        form = window.workspace.form
        form.set_prompt("a red boat")
        form.set_size(256, 256)
        form.set_count(2)
        try:
            window.generate()
            assert window.generate_overlay.isVisible()
            await until(lambda: len(window.workspace.documents) == 2)
            await until(lambda: not window.workspace.generating)
        finally:
            await window.client.shutdown()

    run(qasync_loop, body())
    assert window.tabs.count() == 2 and window.tabs.tabText(0) == "a red boat"
    assert window.workspace.documents[0].image.shape == (256, 256, 3)
    assert not window.generate_overlay.isVisible()
    seeds = [d.versions[0].metadata["seed"] for d in window.workspace.documents]
    assert int(seeds[1]) == int(seeds[0]) + 1


def test_holding_tab_shows_the_parent_version(window, qtbot):
    document = window.workspace.open_image(GREY, title="grey")
    document.handle(p.Progress("x", "decode", 1, 2))  # not its job: ignored
    request = document.edit("invert")
    document.handle(p.ImageResult(request.job_id, 255 - GREY, {"task": "edit"}))
    document.handle(p.Finished(request.job_id))
    page = window.page()
    page.canvas.setFocus()
    window.activateWindow()
    assert document.viewed == document.current == document.versions[1].id
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyPress(page.canvas, Qt.Key.Key_Tab)  # held: the parent is on screen
    assert document.viewed == document.versions[0].id and "PARENT" in page.badge.text()
    assert page.canvas.hasFocus()  # Tab did not move the focus away
    qtbot.keyRelease(page.canvas, Qt.Key.Key_Tab)
    assert document.viewed == document.versions[1].id and "CURRENT" in page.badge.text()
    window.edit_bar.instruction.setFocus()
    qtbot.keyPress(window.edit_bar.instruction, Qt.Key.Key_Tab)  # typing: Tab is not a flip
    assert document.viewed == document.versions[1].id


def test_paste_opens_the_clipboard_image(window):
    if sys.platform.startswith("linux") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        pytest.skip("the offscreen clipboard is the process's own")
    image = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    QGuiApplication.clipboard().setImage(to_qimage(image))
    QApplication.processEvents()
    window.actions_by_name["paste"].trigger()
    [document] = window.workspace.documents
    assert np.array_equal(document.image, image) and window.tabs.count() == 1


def test_each_tab_keeps_its_own_instruction(window, qtbot):
    first = window.workspace.open_image(GREY, title="a")
    qtbot.keyClicks(window.edit_bar.instruction, "add a moon")
    second = window.workspace.open_image(GREY, title="b")
    assert window.edit_bar.instruction.text() == ""
    window.workspace.set_current(first)
    assert window.edit_bar.instruction.text() == "add a moon"
    assert second is not first


def test_a_masked_edits_preview_is_drawn_over_the_region_it_edits(window):
    document = window.workspace.open_image(GREY, title="grey")
    request = document.edit("make it red")
    crop = np.full((8, 8, 3), 255, np.uint8)  # square, the image is 4:3
    document.handle(p.Progress(request.job_id, "tokens", 1, 4, crop, box=(40, 20, 100, 80)))
    canvas = window.page().canvas
    place = canvas._preview_place()
    assert place is not None  # over the image, not a thumbnail
    top_left = canvas.to_widget(QPointF(40, 20))
    assert (place.left(), place.top()) == pytest.approx((top_left.x(), top_left.y()))
    assert place.width() == pytest.approx(60 * canvas.zoom)
    document.handle(p.Progress(request.job_id, "tokens", 2, 4, crop))  # no box: a thumbnail
    assert canvas._preview_place() is None

"""The window with the REAL engine process on the tiny checkpoint: a masked edit typed in the
instruction box becomes a new version on screen; a generate from the panel opens a new tab."""

import asyncio
import functools

import numpy as np
import pytest
from PySide6.QtCore import Qt

from app.engine_client import EngineClient, EngineProcess
from app.settings import Settings
from app.workspace import Workspace
from engine import protocol as p
from ui.main_window import MainWindow

IMAGE = np.random.default_rng(5).integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.fixture
def window(qtbot, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # One step per block: the checks are about the window, not the picture (and stay quick).
    settings = Settings(
        model_folder=str(tiny_checkpoint), device="cpu", edit_steps=1, decoder_steps=1
    )
    client = EngineClient(functools.partial(EngineProcess.start, tmp_path / "engine.log"))
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    window = MainWindow(settings, client, workspace)
    client.seen = []
    client.add_handler(client.seen.append)
    qtbot.addWidget(window)
    window.show()
    return window


async def until(test, timeout: float) -> None:
    for _ in range(int(timeout / 0.02)):
        if test():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError


def drive(loop, window, scenario) -> None:
    async def body():
        client = window.client
        await client.start()
        try:
            model = window.settings.model_folder
            events = await client.run(p.LoadModel(p.new_job_id(), model, "cpu"))
            assert isinstance(events[-1], p.Finished), events[-1]
            await scenario()
        finally:
            await client.shutdown()

    loop.run_until_complete(asyncio.wait_for(body(), 300))


def test_a_masked_edit_from_the_instruction_box_becomes_a_new_version(window, qtbot, qasync_loop):
    document = window.workspace.open_image(IMAGE, title="noise")
    document.paint_line([(10, 10), (40, 30)], radius=6)
    mask = document.mask_snapshot()
    assert mask is not None
    progress = []
    document.progress_changed.connect(lambda job: progress.append(document.jobs[job].progress))

    async def scenario():
        qtbot.keyClicks(window.edit_bar.instruction, "make it blue")
        qtbot.keyClick(window.edit_bar.instruction, Qt.Key.Key_Return)
        assert len(document.jobs) == 1
        await until(lambda: not document.jobs, 240)

    drive(qasync_loop, window, scenario)
    assert document.error == ""
    assert len(document.versions) == 2 and document.current == document.versions[1].id
    result = document.current_version
    assert result.image.shape == IMAGE.shape and result.parent == document.versions[0].id
    assert result.metadata["instruction"] == "make it blue" and result.metadata["masked"] == "true"
    assert result.metadata["steps"] == "1"  # the settings' edit default reached the engine
    [sent] = [e for e in window.client.seen if isinstance(e, p.ImageResult)]
    assert np.array_equal(result.image, sent.image)  # the engine's picture is the new version
    assert not np.array_equal(result.image[mask], IMAGE[mask])  # repainted inside the mask
    assert np.array_equal(window.page().canvas.document.image, sent.image)  # and on screen
    assert any(p is not None and p.stage == "denoise tokens" for p in progress)
    assert window.page().badge.text() == "CURRENT · version 2 of 2"
    assert window.versions.list.count() == 2


def test_a_generate_from_the_panel_opens_a_new_document(window, qasync_loop):
    form = window.workspace.form
    form.set_prompt("a small red boat")
    form.set_size(256, 256)
    form.set_seed(3)
    form.set_seed_locked(True)
    form.set_advanced(steps=2, decoder_steps=1)

    async def scenario():
        window.generate_panel.generate_button.click()
        await until(lambda: window.workspace.documents and not window.workspace.generating, 240)

    drive(qasync_loop, window, scenario)
    [document] = window.workspace.documents
    assert document.image.shape == (256, 256, 3) and window.tabs.count() == 1
    metadata = document.versions[0].metadata
    assert (metadata["prompt"], metadata["seed"], metadata["task"]) == (
        "a small red boat",
        "3",
        "generate",
    )
    assert window.tabs.tabText(0) == "a small red boat" and form.error == ""

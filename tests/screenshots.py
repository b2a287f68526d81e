"""Drive the real app (real engine process, tiny checkpoint) into states and grab each as a PNG.

    python -m tests.screenshots OUT_DIR      (under an X server; `python3 dev.py screenshots`
                                              starts Xvfb and runs this)

SCREENSHOT_THEME=light shows the light theme (dark by default).

A state is an async function decorated with `@state("name")`: it gets the Shot (window, client,
workspace) and leaves the window as it should look; the PNG is grabbed after it returns. States
run in the order they are declared, each starting where the previous one left the window. To add
one, write a function below the others.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

STATES: list[tuple[str, Callable[[Shot], Awaitable[None]]]] = []
WINDOW_SIZE = (1440, 900)


def state(name: str):
    def register(function):
        STATES.append((name, function))
        return function

    return register


@dataclass
class Shot:
    window: object  # ui.main_window.MainWindow
    client: object  # app.engine_client.EngineClient
    workspace: object  # app.workspace.Workspace
    model: Path
    work: Path  # a scratch folder
    seen: list = field(default_factory=list)  # every engine event so far

    async def settle(self, seconds: float = 0.3) -> None:
        """Let Qt lay out and paint."""
        await asyncio.sleep(seconds)

    async def until(self, test: Callable[[], bool], timeout: float = 120.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if test():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"the app did not reach the state within {timeout} s")


def landscape(height: int = 576, width: int = 768) -> np.ndarray:
    """A made-up photo (sky, sun, hills, lake) so the screenshots show a picture, not noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = y / height
    sky = np.stack([70 + 150 * t, 110 + 110 * t, 190 + 40 * t], -1)
    sun = np.exp(-(((x - 0.72 * width) ** 2 + (y - 0.3 * height) ** 2) / (0.006 * width**2)))
    image = sky + sun[..., None] * np.array([255, 200, 120]) * 0.9
    ridge = 0.55 * height + 0.06 * height * np.sin(x / width * 7.0) + 0.03 * height * np.sin(x / 37)
    hills = y > ridge
    image[hills] = np.stack([40 + 30 * t, 90 + 40 * t, 50 + 10 * t], -1)[hills]
    lake = y > 0.8 * height
    ripple = 8 * np.sin(y / 3.0 + x / 40.0)
    image[lake] = np.stack([40 + ripple, 90 + ripple, 150 + 20 * t], -1)[lake]
    return np.clip(image, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ the states, in order


@state("empty")
async def empty(shot: Shot) -> None:
    shot.window.generate_dock.raise_()
    await shot.settle()


@state("mask")
async def mask(shot: Shot) -> None:
    document = shot.workspace.open_image(landscape(), title="lake.png")
    await shot.settle()
    height, width = document.image.shape[:2]
    shot.workspace.tools.set_size(0.12 * width)  # the outline shows the brush that painted
    document.paint_line([(0.62 * width, 0.2 * height), (0.8 * width, 0.25 * height),
                         (0.78 * width, 0.4 * height), (0.64 * width, 0.38 * height)],
                        radius=0.06 * width, hardness=0.8)  # fmt: skip
    document.begin_stroke(0.2 * width, 0.85 * height, 0.06 * width, 0.8)
    document.stroke_to(0.35 * width, 0.88 * height)  # a stroke still being painted
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QCursor

    canvas = shot.window.page().canvas
    at = canvas.to_widget(QPointF(0.35 * width, 0.88 * height)).toPoint()
    QCursor.setPos(canvas.mapToGlobal(at))  # the brush outline follows the pointer
    shot.window.edit_bar.instruction.setText("replace the sun with a full moon")
    await shot.settle()


@state("running")
async def running(shot: Shot) -> None:
    document = shot.workspace.current
    document.end_stroke()
    grabbed = asyncio.get_running_loop().create_future()

    def grab_at_preview(event) -> None:
        # Grab inside the event's delivery, right after the overlay showed it: the tiny model
        # is too fast to catch a step from outside.
        from engine.protocol import Progress

        if grabbed.done() or event.job_id not in document.jobs:
            return
        if type(event).__name__ == "Failed":
            grabbed.set_exception(RuntimeError(f"the edit failed: {event.message}"))
        elif (
            isinstance(event, Progress)
            and event.stage == "denoise tokens"
            and event.preview is not None
            and event.step * 3 >= event.total
        ):
            grabbed.set_result(shot.window.grab())

    shot.client.add_handler(grab_at_preview)
    shot.window.run_edit()
    shot.grabbed = await asyncio.wait_for(grabbed, 900)
    await shot.until(lambda: not document.jobs and len(document.versions) == 2, 900)


@state("compare")
async def compare(shot: Shot) -> None:
    from ui.document_page import SPLIT

    shot.window.set_compare(SPLIT)
    page = shot.window.page()
    page.canvas.set_split(0.55)
    await shot.settle()


@state("generate")
async def generate(shot: Shot) -> None:
    from ui.document_page import NORMAL

    shot.window.page().set_mode(NORMAL)
    form = shot.workspace.form
    form.set_prompt("a lighthouse on a rocky coast at dusk")
    form.set_size(384, 256)
    form.set_seed(7)
    form.set_seed_locked(True)
    form.set_advanced(decoder_steps=2)
    count = len(shot.workspace.documents)
    shot.window.generate()
    await shot.until(
        lambda: len(shot.workspace.documents) > count and not shot.workspace.generating
    )
    await shot.settle()


@state("chat_region")
async def chat_region(shot: Shot) -> None:
    """The chat mid-answer about a painted region of the lake picture."""
    from engine.protocol import Progress, TextDelta

    window = shot.window
    lake = next(d for d in shot.workspace.documents if d.title == "lake.png")
    shot.workspace.set_current(lake)
    lake.clear_mask()
    height, width = lake.image.shape[:2]
    lake.paint_line([(0.65 * width, 0.22 * height), (0.78 * width, 0.32 * height)],
                    radius=0.07 * width, hardness=0.8)  # fmt: skip
    window.chat_dock.raise_()
    panel = window.chat_view.panel(lake)
    panel.region.setChecked(True)
    panel.conversation.answer_tokens, panel.conversation.steps = 96, 4  # short, on a CPU
    panel.question.setPlainText("What is in the painted part, and what colour is it?")
    grabbed = asyncio.get_running_loop().create_future()
    deltas = []

    def grab_mid_answer(event) -> None:
        if not panel.conversation.owns(event.job_id) or grabbed.done():
            return
        deltas.append(event)
        halfway = isinstance(event, Progress) and "denoise" in event.stage
        if (halfway and event.step * 2 >= event.total) or isinstance(event, TextDelta):
            panel.views[-1].refresh()
            grabbed.set_result(window.grab())

    shot.client.add_handler(grab_mid_answer)
    panel.ask()
    try:
        shot.grabbed = await asyncio.wait_for(grabbed, 300)
    except TimeoutError:  # an answer shorter than three deltas: show it whole
        shot.grabbed = None
    await shot.until(lambda: not panel.conversation.busy, 300)


@state("queue")
async def queue(shot: Shot) -> None:
    """Three edits: one running, two waiting."""
    from engine.protocol import Progress

    window = shot.window
    window.queue_dock.raise_()
    document = shot.workspace.current
    grabbed = asyncio.get_running_loop().create_future()
    texts = ["make the sky a sunset", "add a sailing boat on the lake", "turn it into winter"]
    params = shot.workspace.edit_parameters()
    jobs = [document.edit(text, **params | {"seed": n}) for n, text in enumerate(texts)]

    def grab_at_progress(event) -> None:
        job = window.session.jobs.get(event.job_id)
        if (isinstance(event, Progress) and event.job_id == jobs[0].job_id and job
                and "denoise" in event.stage and event.step * 3 >= event.total
                and job.seconds_left is not None and not grabbed.done()):  # fmt: skip
            window.jobs_panel.rebuild()
            grabbed.set_result(window.grab())

    shot.client.add_handler(grab_at_progress)
    shot.grabbed = await asyncio.wait_for(grabbed, 300)
    await shot.until(lambda: not document.jobs, 600)


@state("history")
async def history(shot: Shot) -> None:
    """The history browser with every result so far."""
    window = shot.window
    window.history_dock.show()
    window.history_dock.raise_()
    window.history_browser.refresh()
    await shot.until(lambda: not window.history_browser._pending, 60)
    window.history_browser.grid.item(0).setSelected(True)
    await shot.settle()


@state("first_run")
async def first_run(shot: Shot) -> None:
    """The first-run page, as a new user sees it."""
    from ui import part2

    window = shot.window
    window.history_dock.hide()
    dialog = part2.show_setup(window)
    await shot.settle(0.5)
    shot.grabbed = dialog.grab()
    dialog.close()


@state("settings")
async def settings(shot: Shot) -> None:
    """Settings, Model tab: where the precision, the VRAM preset and the fallback are chosen."""
    from ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(shot.window.settings, shot.window)
    dialog.show()
    await shot.settle(0.5)
    shot.grabbed = dialog.grab()
    dialog.close()


# ------------------------------------------------------------------ running them


def write_tiny_model(folder: Path) -> Path:
    """In a child process, so this GUI process never imports torch (as in the app)."""
    model = folder / "LLaDA2.0-Uni-tiny"
    subprocess.run([sys.executable, "-m", "engine.tiny", str(model)], check=True)
    return model


async def drive(shot: Shot, out_dir: Path, names: set[str] | None) -> list[Path]:
    from app.engine_client import EngineError
    from engine.protocol import LoadModel, new_job_id

    try:
        await shot.client.start()
    except EngineError as error:
        raise SystemExit(str(error)) from None
    shot.client.add_handler(shot.seen.append)
    events = await shot.client.run(LoadModel(new_job_id(), str(shot.model), "cpu"))
    if type(events[-1]).__name__ != "Finished":
        raise SystemExit(f"The tiny model did not load: {events[-1]}")
    written = []
    try:
        for name, function in STATES:
            if names is not None and names <= {p.stem for p in written}:
                break  # the states asked for are done; the later ones need not run
            shot.grabbed = None
            await function(shot)
            if names is not None and name not in names:
                continue
            pixmap = shot.grabbed or shot.window.grab()
            path = out_dir / f"{name}.png"
            pixmap.save(str(path))
            written.append(path)
            print(f"{path}  {pixmap.width()}x{pixmap.height()}", flush=True)
    finally:
        await shot.client.shutdown()
    return written


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0] if argv else "screenshots").resolve()
    names = set(argv[1].split(",")) if len(argv) > 1 else None
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import qasync
    from PySide6.QtWidgets import QApplication

    from app.engine_client import EngineClient, EngineProcess
    from app.settings import Settings
    from app.workspace import Workspace
    from ui.main_window import MainWindow
    from ui.theme import apply_theme

    with tempfile.TemporaryDirectory(prefix="llada-shots-") as scratch:
        work = Path(scratch)
        model = write_tiny_model(work)
        app = QApplication(["LLaDA Studio"])
        from app.qt_workaround import install as guard_pyside_refcounts

        guard_pyside_refcounts(app)  # as main.py: PySide6 6.12's refcount bug
        apply_theme(app, os.environ.get("SCREENSHOT_THEME", "dark"))  # or light
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        # Two decoder steps: the tiny model paints noise at any step count, and the run stays short.
        settings = Settings(model_folder=str(model), device="cpu", results_folder=str(work),
                            edit_steps=2, decoder_steps=2)  # fmt: skip
        client = EngineClient(partial(EngineProcess.start, work / "engine.log"))
        workspace = Workspace(settings, client.submit, save_settings=lambda: None)
        window = MainWindow(settings, client, workspace)
        from ui import part2

        part2.install(window, work / "data", offer_restore=False)
        window.resize(*WINDOW_SIZE)
        window.show()
        shot = Shot(window, client, workspace, model, work)
        with loop:
            written = loop.run_until_complete(drive(shot, out_dir, names))
        print(f"{len(written)} screenshots in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

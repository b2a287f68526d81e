"""LLaDA Studio. `python main.py` opens the window, `python main.py PHOTO.png` opens it with that
image, and `python main.py generate|edit|ask ...` runs a task headless (`python main.py --help`)."""

import inspect
import sys


def main() -> int:
    argv = sys.argv[1:]
    paths = []
    if argv:
        from engine.cli import main as cli
        from engine.cli import window_paths

        paths = window_paths(argv)
        if paths is None:  # a command, or a mistake the command line names: never a silent window
            if any(arg.partition("=")[0] == "--backend" for arg in argv):  # SGLang-Omni servers
                from app.remote_cli import main as remote

                return remote(argv)
            return cli(argv)

    return run_window(paths)


def run_window(paths: list) -> int:
    """Settings, the engine client on a qasync loop, the workspace and the window; the engine
    starts (and loads the model) after the window shows, and stops when it closes."""
    import asyncio

    import qasync
    from PySide6.QtWidgets import QApplication

    from app.backend import starter as backend_starter
    from app.engine_client import EngineClient
    from app.keychain import move_to_keychain
    from app.qt_workaround import install as guard_pyside_refcounts
    from app.settings import Settings
    from app.workspace import Workspace
    from ui import part2
    from ui.main_window import MainWindow
    from ui.theme import apply_theme

    app = QApplication(sys.argv[:1])
    app.setApplicationName("LLaDA Studio")
    guard_pyside_refcounts(app)  # PySide6 6.12 on Python 3.11 drops references to True and None
    settings, notice = Settings.load_checked()  # a damaged file is set aside with a sentence
    if move_to_keychain(settings):  # an API key an older version left in the settings file
        settings.save()
    apply_theme(app, settings.theme)  # "system" follows the desktop's light or dark scheme
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    client = EngineClient(backend_starter(settings))  # the engine process unless remote
    workspace = Workspace(settings, client.submit)
    window = MainWindow(settings, client, workspace, **open_paths(MainWindow, paths))
    window.show()
    part2.install(window)  # chat, queue, history, settings, autosave and the restore offer
    if notice:
        window.show_error(notice)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    with loop:
        loop.run_until_complete(serve(client, settings, window, closed))
    return 0


async def serve(client, settings, window, closed) -> None:
    from app.engine_client import EngineError

    try:
        await client.start()
    except EngineError as error:
        window.show_error(str(error))
    else:
        if settings.model_folder or settings.backend == "remote":  # remote: the connect probe
            client.submit(settings.load_request())
    await closed.wait()
    await client.shutdown()


def open_paths(window_class, paths: list) -> dict:
    """`open_paths=[...]` for the window, if its constructor takes them (the agreed keyword)."""
    if paths and "open_paths" in inspect.signature(window_class).parameters:
        return {"open_paths": paths}
    return {}


if __name__ == "__main__":
    sys.exit(main())

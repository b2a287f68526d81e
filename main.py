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
            return cli(argv)

    from PySide6.QtWidgets import QApplication

    from app.settings import Settings
    from ui.main_window import MainWindow

    app = QApplication(sys.argv[:1])
    window = MainWindow(Settings.load(), **open_paths(MainWindow, paths))
    window.show()
    return app.exec()


def open_paths(window_class, paths: list) -> dict:
    """`open_paths=[...]` for the window, if its constructor takes them (the agreed keyword)."""
    if paths and "open_paths" in inspect.signature(window_class).parameters:
        return {"open_paths": paths}
    return {}


if __name__ == "__main__":
    sys.exit(main())

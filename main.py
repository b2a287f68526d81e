"""LLaDA Studio. `python main.py` opens the window; `python main.py generate|edit|ask ...` runs
a task headless (see `python main.py --help`)."""

import sys

HEADLESS = ("generate", "edit", "ask", "download", "doctor", "-h", "--help")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in HEADLESS:
        from engine.cli import main as cli

        return cli(sys.argv[1:])

    from PySide6.QtWidgets import QApplication

    from app.settings import Settings
    from ui.main_window import MainWindow

    app = QApplication(sys.argv)
    window = MainWindow(Settings.load())
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())

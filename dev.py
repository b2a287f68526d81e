"""Set up the project's virtual environment (.venv) and run the app or the tests in it.

    python3 dev.py app     set up, then open LLaDA Studio
    python3 dev.py test    set up, then run the whole test suite

Needs only Python 3.11+. Set-up installs the pinned packages of pyproject.toml once, and again
whenever pyproject.toml changes.
"""

import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".installed"


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py may be run by an older python)
        sys.exit("LLaDA Studio needs Python 3.11 or newer.")
    if not PYTHON.exists():
        print("Creating .venv ...", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except subprocess.CalledProcessError:
            shutil.rmtree(VENV, ignore_errors=True)  # no half-made .venv for the next run
            sys.exit("Python's venv could not install pip; on Debian or Ubuntu: python3-venv.")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("Installing packages (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # alone first: the CPU/CUDA wheel
    subprocess.run(pip + ["-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


# The libraries Qt's xcb platform plugin loads, and the Debian/Ubuntu package of each.
QT_XCB_LIBRARIES = {
    "xcb-cursor": "libxcb-cursor0",
    "xkbcommon-x11": "libxkbcommon-x11-0",
    "xcb-icccm": "libxcb-icccm4",
    "xcb-image": "libxcb-image0",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-randr": "libxcb-randr0",
    "xcb-render-util": "libxcb-render-util0",
    "xcb-shape": "libxcb-shape0",
    "xcb-xkb": "libxcb-xkb1",
    "xcb-util": "libxcb-util1",
    "xcb-xfixes": "libxcb-xfixes0",
    "xcb-sync": "libxcb-sync1",
    "X11-xcb": "libx11-xcb1",
    "xkbcommon": "libxkbcommon0",
    "EGL": "libegl1",
    "fontconfig": "libfontconfig1",
}


def missing_qt_library(find_library=ctypes.util.find_library, env=os.environ) -> str:
    """One sentence naming the package Qt needs but cannot find on Linux, or "" when none is
    missing (or Qt will not use X11: another platform, offscreen, Wayland)."""
    if not sys.platform.startswith("linux"):
        return ""
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return ""
    if not platform and env.get("WAYLAND_DISPLAY") and not env.get("DISPLAY"):
        return ""
    for library, package in QT_XCB_LIBRARIES.items():
        if find_library(library) is None:
            return (
                f"Qt cannot open a window because the library lib{library} is missing; "
                f"install it (on Debian or Ubuntu: sudo apt install {package}) and try again."
            )
    return ""


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "app"
    if command not in ("app", "test"):
        sys.exit(__doc__)
    setup()
    if command == "test":
        args = [str(PYTHON), "-m", "pytest", "-q", *sys.argv[2:]]
        env = os.environ | {"QT_QPA_PLATFORM": "offscreen"}
    else:
        if problem := missing_qt_library():
            sys.exit(problem)
        args, env = [str(PYTHON), str(ROOT / "main.py"), *sys.argv[2:]], os.environ
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

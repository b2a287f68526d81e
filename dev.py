"""Set up the project's virtual environment (.venv) and run the app or the tests in it.

    python3 dev.py app     set up, then open LLaDA Studio
    python3 dev.py test    set up, then run the whole test suite
    python3 dev.py screenshots [OUT_DIR [STATE,...]]
                           the window in several states, as PNGs (default ./screenshots), made
                           under Xvfb with the real engine on the tiny checkpoint (Linux); the
                           states are listed in tests/screenshots.py

Needs only Python 3.11+. Set-up installs the pinned packages of pyproject.toml once, and again
whenever pyproject.toml changes.
"""

import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import time
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


XVFB_PACKAGES = ["xvfb", *QT_XCB_LIBRARIES.values()]


def install_xvfb() -> None:
    """Xvfb and the libraries Qt's X11 plugin needs, from Debian's packages (as root), or one
    sentence naming them."""
    if shutil.which("Xvfb") and not missing_qt_library(env={"QT_QPA_PLATFORM": "xcb"}):
        return
    install = ["apt-get", "install", "-y", "-q", *XVFB_PACKAGES]
    if not sys.platform.startswith("linux") or not shutil.which("apt-get") or os.geteuid() != 0:
        sys.exit(f"Screenshots need Xvfb and Qt's X11 libraries: sudo {' '.join(install)}")
    print("Installing Xvfb and Qt's X11 libraries ...", flush=True)
    subprocess.run(install, check=True, stdout=subprocess.DEVNULL)


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on the first free display number; returns the process and its DISPLAY."""
    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    xvfb = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            return xvfb, f":{number}"
        if xvfb.poll() is not None:
            break
        time.sleep(0.05)
    xvfb.kill()
    sys.exit("Xvfb did not start; run it by hand to see why.")


def screenshots(args: list[str]) -> int:
    install_xvfb()
    out_dir = Path(args[0] if args else ROOT / "screenshots").resolve()
    xvfb, display = start_xvfb()
    env = os.environ | {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    try:
        command = [str(PYTHON), "-m", "tests.screenshots", str(out_dir), *args[1:]]
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "app"
    if command not in ("app", "test", "screenshots"):
        sys.exit(__doc__)
    setup()
    if command == "screenshots":
        return screenshots(sys.argv[2:])
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

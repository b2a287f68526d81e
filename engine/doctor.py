"""`python main.py doctor`: what this machine and install look like, and whether a job can run.

The report names the OS, Python, the torch build, each GPU with its driver and memory, the model
folder's status (the exact problem when it has one), free disk, the settings file and the last
engine log lines. It holds nothing private: the home folder shows as ~, the user name as <user>,
and tokens as hf_***. `Report.ok` is True when the app can run a job, which is doctor's exit 0.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "LLaDA Studio"
LOG_ENV = "LLADA_STUDIO_ENGINE_LOG"  # as in engine/__main__.py
LOG_LINES = 20
LOW_DISK_BYTES = 5 * 10**9  # below this, results and quantized models may not fit
TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
URL_USER_PATTERN = re.compile(r"(\w+://)[^/@\s]+@")  # user:password@ in a mirror's address


@dataclass
class Report:
    """Sections of `name: value` lines, and the problems that stop a job from running."""

    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each one sentence; any one fails doctor
    warnings: list[str] = field(default_factory=list)  # worth knowing; the app still runs

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, title: str, *lines: tuple[str, str]) -> None:
        self.sections.append((title, list(lines)))

    def text(self) -> str:
        out = []
        for title, lines in self.sections:
            out.append(f"[{title}]")
            out += [f"  {name}: {value}" for name, value in lines]
        out.append("[verdict]")
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  warning: {w}" for w in self.warnings]
        out.append("  ready: the app can run a job" if self.ok else "  not ready")
        return scrub("\n".join(out))


def scrub(text: str) -> str:
    """The text without the home folder, the user name or tokens."""
    home = str(Path.home())
    if len(home) > 1:
        text = text.replace(home, "~")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = ""
    if len(user) >= 3:
        text = re.sub(rf"\b{re.escape(user)}\b", "<user>", text)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if secret := os.environ.get(name, "").strip():
            text = text.replace(secret, "hf_***")
    text = URL_USER_PATTERN.sub(r"\1***@", text)
    return TOKEN_PATTERN.sub("hf_***", text)


# Where the app keeps things (engine/ may not import app/, so the names are repeated here)


def settings_path() -> Path:
    from platformdirs import user_config_path

    return user_config_path(APP_NAME, appauthor=False) / "settings.json"


def log_path() -> Path:
    if env := os.environ.get(LOG_ENV):
        return Path(env)
    from platformdirs import user_log_path

    return user_log_path(APP_NAME, appauthor=False) / "engine.log"


# The checks


def collect(
    model: Path | None = None, settings: Path | None = None, log: Path | None = None
) -> Report:
    """The whole report; `model` overrides the settings file's model folder."""
    report = Report()
    report.add(
        "system",
        ("app", _app_version()),
        ("os", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("python", f"{platform.python_version()} at {sys.executable}"),
    )
    _check_gui(report)
    saved = _check_settings(report, settings or settings_path())
    torch_ok = _check_torch(report)
    folder = model or (Path(saved).expanduser() if saved else None)
    _check_model(report, folder, torch_ok)
    _check_disk(report, folder)
    _check_hub(report)
    _add_log(report, log or log_path())
    return report


def _app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llada-studio")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def _check_gui(report: Report) -> None:
    """Whether Qt is installed, without importing it (the engine side never loads Qt)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        qt = version("PySide6-Essentials") if find_spec("PySide6") else None
    except PackageNotFoundError:
        qt = "installed"
    report.add("window", ("PySide6", qt or "missing"))
    if qt is None:
        report.problems.append(
            "PySide6 is missing, so the window cannot open; run the installer again."
        )


def _check_settings(report: Report, path: Path) -> str:
    """The settings section; returns the model folder the settings name, or ''."""
    if not path.exists():
        report.add("settings", ("file", f"{path} (not there yet: the defaults apply)"))
        return ""
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        report.add("settings", ("file", f"{path} (unreadable: {error}; the defaults apply)"))
        report.warnings.append(f"The settings file {path} is unreadable; the app uses defaults.")
        return ""
    lines = [("file", str(path))]
    lines += [(key, str(value)) for key, value in sorted(raw.items()) if _is_plain(value)]
    report.add("settings", *lines)
    folder = raw.get("model_folder")
    return folder if isinstance(folder, str) else ""


def _is_plain(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _check_torch(report: Report) -> bool:
    try:
        import torch
    except Exception as error:  # a broken install shows here in any form; doctor must report it
        report.add("torch", ("import", f"fails: {error}"))
        report.problems.append(f"torch cannot be imported ({error}); run the installer again.")
        return False
    cuda = torch.version.cuda
    build = (
        f"CUDA {cuda}" if cuda else ("ROCm " + torch.version.hip if torch.version.hip else "CPU")
    )
    lines = [("version", torch.__version__), ("build", build)]
    devices = _gpus(torch)
    lines += devices or [("gpu", "none found")]
    if devices:
        lines.append(("driver", _nvidia_driver() or "unknown"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        lines.append(("apple gpu", "MPS available"))
    report.add("torch", *lines)
    if not devices and not (mps is not None and mps.is_available()):
        hint = " (this torch is a CPU build; on NVIDIA the installer picks a CUDA one)"
        report.warnings.append(
            "No GPU is usable, so jobs run on the CPU and take minutes each"
            + (hint if not cuda else "")
            + "."
        )
    return True


def _gpus(torch) -> list[tuple[str, str]]:
    if not torch.cuda.is_available():
        return []
    lines = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        lines.append(
            (
                f"cuda:{index}",
                f"{props.name}, compute {props.major}.{props.minor}, "
                f"{total / 2**30:.1f} GiB memory, {free / 2**30:.1f} GiB free",
            )
        )
    return lines


def _nvidia_driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted(set(done.stdout.split()))
    return ", ".join(versions) if done.returncode == 0 and versions else None


def _check_model(report: Report, folder: Path | None, torch_ok: bool) -> None:
    if folder is None:
        report.add("model", ("folder", "not set"))
        report.problems.append(
            "No model folder is set; run `python main.py download`, or choose the folder in "
            "the app (or pass --model DIR)."
        )
        return
    from engine.errors import BadCheckpoint

    if not torch_ok:  # checking the backbone's shapes needs torch's model config
        report.add("model", ("folder", str(folder)), ("status", "not checked (no torch)"))
        return
    from engine.checkpoint import validate_model_folder

    try:
        found = validate_model_folder(folder)
    except BadCheckpoint as error:
        report.add("model", ("folder", str(folder)), ("status", f"broken: {error}"))
        report.problems.append(str(error))
        return
    revision = found.revision or "a plain folder"
    turbo = "yes" if (found.root / "decoder-turbo").is_dir() else "no"
    report.add(
        "model",
        ("folder", str(found.root)),
        ("status", "complete"),
        ("revision", revision),
        ("size", _bytes(_folder_bytes(found.root))),
        ("turbo decoder", turbo),
    )


def _check_disk(report: Report, model: Path | None) -> None:
    places = {"home": Path.home()}
    if model is not None:
        places["model folder"] = model
    lines = []
    for name, place in places.items():
        probe = Path(place).expanduser()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        lines.append((f"free at {name}", _bytes(free)))
        if free < LOW_DISK_BYTES:
            report.warnings.append(
                f"Only {_bytes(free)} is free on the disk of {probe}; results may not fit."
            )
    report.add("disk", *lines)


def _check_hub(report: Report) -> None:
    token = any(os.environ.get(n) for n in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))
    report.add(
        "hub",
        ("endpoint", os.environ.get("HF_ENDPOINT") or "https://huggingface.co (default)"),
        ("offline", "yes" if os.environ.get("HF_HUB_OFFLINE") else "no"),
        ("token in environment", "set" if token else "not set"),
    )


def _add_log(report: Report, path: Path) -> None:
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 64 * 1024))
            tail = file.read().decode("utf-8", "replace").splitlines()[-LOG_LINES:]
    except OSError:
        report.add("engine log", ("file", f"{path} (none yet)"))
        return
    report.add("engine log", ("file", str(path)), *[("line", line) for line in tail])


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# The command: python main.py doctor


def add_command(sub) -> None:
    """The `doctor` subcommand on the CLI's subparsers."""
    parser = sub.add_parser("doctor", help="check this machine and the model; exit 0 when ready")
    parser.add_argument("--model", type=Path, help="check this model folder, not the settings'")
    parser.set_defaults(handler=run_command)


def run_command(options, out=None) -> int:
    report = collect(options.model)
    (out or sys.stdout).write(report.text() + "\n")
    return 0 if report.ok else 1

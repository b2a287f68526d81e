"""Collect diagnostics: what a bug report needs, with nothing private. No widgets, no torch.

The machine, torch build, GPUs, model folder status and the last engine log lines come from
`python main.py doctor` run as a child process (it imports torch; the GUI process never does). The
running engine adds what it reports in its StatusReport: device, memory, what is loaded. Every
line goes through doctor's `scrub`: the home folder shows as ~, the user name as <user>, tokens
as hf_***.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engine import doctor  # torch-free at import; only its torch check imports torch
from engine.protocol import StatusReport

ROOT = Path(__file__).resolve().parents[1]
DOCTOR_TIMEOUT_S = 60.0


def app_version() -> str:
    try:
        return version("llada-studio")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def gui_versions() -> list[tuple[str, str]]:
    from PySide6 import __version__ as pyside

    return [
        ("LLaDA Studio", app_version()),
        ("Python", platform.python_version()),
        ("PySide6", pyside),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
    ]


def engine_lines(report: StatusReport | None) -> list[tuple[str, str]]:
    """What the running engine says about itself."""
    if report is None:
        return [("engine", "not running")]
    lines = [("device", report.device or "no model loaded"), ("memory", report.memory),
             ("loaded", report.loaded or "nothing")]  # fmt: skip
    lines += [(k, v) for k, v in sorted(report.details.items()) if k not in ("device", "memory")]
    return lines


def model_lines(folder: str) -> list[tuple[str, str]]:
    """The model's version as its folder says (config.json, the Hugging Face snapshot)."""
    if not folder:
        return [("model", "not set")]
    from engine import checkpoint  # finding the folder and reading JSON: torch-free

    try:
        found = checkpoint.find_model_folder(folder)
        config = json.loads((found.root / "config.json").read_text())
    except (checkpoint.BadCheckpoint, OSError, ValueError) as error:
        return [("model", str(error))]
    lines = [("model folder", str(found.root)),
             ("architecture", ", ".join(config.get("architectures", [])) or "unknown"),
             ("model type", str(config.get("model_type", "unknown")))]  # fmt: skip
    if found.revision:
        lines.append(("revision", found.revision))
    if config.get("transformers_version"):
        lines.append(("made with transformers", str(config["transformers_version"])))
    return lines


async def run_doctor(timeout_s: float = DOCTOR_TIMEOUT_S) -> str:
    """`python main.py doctor`'s report, or a sentence saying why it could not run."""
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "main.py"), "doctor",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(ROOT),
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except (OSError, TimeoutError) as error:
        return f"[doctor]\n  could not run: {error or 'it took too long'}"
    return out.decode(errors="replace").strip()


async def collect(client=None, model_folder: str = "") -> str:
    """The whole report as text: the app, the running engine, the model, then doctor's."""
    status = None
    if client is not None and getattr(client, "state", "") == "ready":
        try:
            status = await client.status(timeout_s=5.0)
        except Exception:  # a busy or dead engine still leaves the rest worth sending
            status = None
    sections = [("app", gui_versions()), ("running engine", engine_lines(status)),
                ("model", model_lines(model_folder))]  # fmt: skip
    text = "\n".join(f"[{title}]\n" + "\n".join(f"  {k}: {v}" for k, v in lines)
                     for title, lines in sections)  # fmt: skip
    return doctor.scrub(text + "\n" + await run_doctor())

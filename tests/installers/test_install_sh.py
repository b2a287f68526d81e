"""installers/install.sh, run for real in a throwaway HOME on the CPU: an install killed midway is
run again and finishes, `doctor` then succeeds from the installed environment with the launcher
in place, and a second run upgrades in place. One test of about two minutes (it installs PySide6
and the rest from the package index, through pip's cache); deselect with `-m "not installer"`.

The test points the script at this checkout (LLADA_STUDIO_SOURCE) instead of a git clone, forces
torch's CPU build, and lets pip use its own index settings (LLADA_STUDIO_TORCH_INDEX=pip), since
this machine reaches package registries only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "installers" / "install.sh"
KEEP_OUT = (".git", ".venv", ".whl", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")

pytestmark = [
    pytest.mark.installer,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="install.sh runs on Linux"),
]


def base_python() -> Path:
    """The interpreter this test's virtual environment was made from: 3.11+, with venv and pip."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def installer_env(home: Path, source: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "VIRTUAL_ENV"))}
    real_pip_config = Path.home() / ".config" / "pip" / "pip.conf"
    if real_pip_config.exists():  # this machine's package mirrors, as a developer has them
        env["PIP_CONFIG_FILE"] = str(real_pip_config)
    cache = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True
    ).stdout.strip()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p]
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(base_python().parent), *path]),
        PIP_CACHE_DIR=cache or str(Path.home() / ".cache" / "pip"),
        LLADA_STUDIO_SOURCE=str(source),
        LLADA_STUDIO_TORCH="cpu",
        LLADA_STUDIO_TORCH_INDEX="pip",
    )
    return env


def run_installer(env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run


def kill_during(step: str, env: dict[str, str], after_s: float) -> str:
    """Start the installer, and kill it (and pip under it) `after_s` into `step`."""
    process = subprocess.Popen(
        ["sh", str(SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if f"==> [{step}]" in line:
            break
    time.sleep(after_s)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return "".join(seen)


def test_install_killed_then_rerun_then_doctor_then_upgrade(tmp_path, tiny_checkpoint):
    home = tmp_path / "home"
    home.mkdir()
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*KEEP_OUT))
    env = installer_env(home, source)
    install = home / ".local" / "share" / "llada-studio"
    launcher = install / "llada-studio"
    desktop = home / ".local" / "share" / "applications" / "llada-studio.desktop"

    started = time.monotonic()
    seen = kill_during("install_app", env, after_s=3.0)
    assert "==> [install_torch]" in seen
    assert not desktop.exists() and not launcher.exists()
    assert (install / "env" / ".installing-app").exists()  # killed inside pip

    rerun = run_installer(env)
    assert "installing them again" in rerun.stdout  # the half-done packages are not trusted
    assert "LLaDA Studio is installed" in rerun.stdout
    assert desktop.exists() and os.access(launcher, os.X_OK)
    entry = desktop.read_text()
    assert f'Exec="{launcher}"' in entry
    assert f"Icon={install / 'app' / 'resources' / 'icons' / 'app.svg'}" in entry
    assert (install / "app" / "resources" / "icons" / "app.svg").exists()

    tiny = tiny_checkpoint  # written by this checkout's engine/tiny.py, as the installed one would
    doctor = subprocess.run(
        [str(launcher), "doctor", "--model", str(tiny)], env=env, capture_output=True, text=True
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "status: complete" in doctor.stdout and "build: CPU" in doctor.stdout
    assert "ready: the app can run a job" in doctor.stdout
    assert "app: 0.1.0" in doctor.stdout  # installed as a package, linked to its folder

    (source / "UPGRADED").write_text("a newer source\n")
    env_inode = (install / "env").stat().st_ino
    upgrade = run_installer(env)
    assert "keeping the environment's Python" in upgrade.stdout
    assert "torch 2.13.0+cpu is installed" in upgrade.stdout
    assert (install / "env").stat().st_ino == env_inode  # upgraded in place, not made anew
    assert (install / "app" / "UPGRADED").exists()
    assert not (install / "app.new").exists() and not (install / "app.old").exists()
    assert "LLaDA Studio is installed" in upgrade.stdout  # its own doctor run imported everything
    print(f"install test: {time.monotonic() - started:.0f} s in all")

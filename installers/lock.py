"""Writes installers/requirements.txt and installers/constraints.txt from pyproject.toml and the
packages installed in the current environment: `.venv/bin/python installers/lock.py`.

requirements.txt holds the app's own dependencies except torch (the installer picks torch's build
for the GPU). constraints.txt pins every package those dependencies and torch pull in, at the
version installed here; torch's CUDA libraries are left to the torch build that needs them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "installers"
TORCH_BUILD = re.compile(r"torch|triton|nvidia-.*|cuda-.*")  # differ per CUDA/CPU build
TOOLS = {"pip": "26.3", "setuptools": None}  # pip is pinned for --resume-retries (25.1+)


def name_of(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[]", requirement.strip(), maxsplit=1)[0]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """Every installed distribution the roots need on this platform: normal name -> version."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = normal(name_of(todo.pop()))
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is needed but not installed here; install the project first.")
        found[name] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            marker = requirement.partition(";")[2].strip()
            if marker and not _marker_holds(marker):
                continue
            todo.append(requirement)
    return found


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def main() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    app = [d for d in dependencies if normal(name_of(d)) != "torch"]
    pins = closure(dependencies)
    header = "# Written by installers/lock.py from pyproject.toml and a working environment.\n"
    (HERE / "requirements.txt").write_text(header + "\n".join(app) + "\n")
    lines = [f"{n}=={v}" for n, v in sorted(pins.items()) if not TORCH_BUILD.fullmatch(n)]
    lines += [f"{n}=={v}" for n, v in TOOLS.items() if v]
    (HERE / "constraints.txt").write_text(header + "\n".join(sorted(lines)) + "\n")
    print(f"{len(app)} requirements, {len(lines)} pins")


if __name__ == "__main__":
    main()

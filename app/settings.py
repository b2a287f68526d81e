"""Settings: one dataclass, loaded from and saved to a JSON file in the user's config folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from platformdirs import user_config_path


def default_path() -> Path:
    return user_config_path("LLaDA Studio", appauthor=False) / "settings.json"


@dataclass
class Settings:
    model_folder: str = ""  # the LLaDA2.0-Uni folder; empty until the user picks one
    device: str = "auto"

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """Unknown keys are ignored; an unreadable file gives the defaults (it is never fatal)."""
        path = path or default_path()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        known = {f.name: raw[f.name] for f in fields(cls) if isinstance(raw.get(f.name), str)}
        return cls(**known)

    def save(self, path: Path | None = None) -> None:
        path = path or default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # atomic: a crash never leaves half a file

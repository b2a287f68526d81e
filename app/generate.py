"""GenerateForm: the text-to-image panel's state (prompt, size, seed, thinking, count, advanced
parameters at the official defaults) and the Generate requests it makes. No widgets."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from PySide6.QtCore import QObject, Signal

from engine.protocol import Generate, Request, new_job_id

# The engine's rules for an image side (engine/pipeline.py MIN_SIDE, MAX_SIDE, SIDE_STEP); kept
# here as numbers because the pipeline module imports torch, which the GUI process never does.
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 32
MAX_SEED = 2**31 - 1
MAX_COUNT = 16

# Aspect presets at the model's largest size: the long side 1024, the short one a multiple of 32.
PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1024, 768),
    "3:4": (768, 1024),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
}
CUSTOM = "custom"


@dataclass(frozen=True)
class Advanced:
    """The folded-away parameters, at the official defaults (engine/pipeline.py Defaults)."""

    steps: int = 8  # denoising steps per 32-token block
    cfg_scale: float = 2.0
    cfg_rescale: float = 0.0
    turbo: bool = True  # the distilled 8-step decoder; False: the normal 50-step one
    decoder_steps: int = 0  # 0: the decoder's own default (8 turbo, 50 normal)
    thinking_length: int = 4096  # the most tokens thinking mode may write


def size_problem(width: int, height: int) -> str:
    """One sentence saying why the engine would refuse this size, or "" when it takes it."""
    for name, side in (("width", width), ("height", height)):
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_STEP:
            return (
                f"The {name} must be between {MIN_SIDE} and {MAX_SIDE} px in steps of "
                f"{SIDE_STEP} px, not {side}."
            )
    return ""


def _number(metadata: dict[str, str], key: str, kind: type) -> float | int | None:
    try:
        return kind(metadata[key])
    except (KeyError, ValueError):
        return None


class GenerateForm(QObject):
    """What the generate panel shows and edits; `generate()` submits one job per image."""

    changed = Signal()  # any field; the panel re-reads them all
    thinking_changed = Signal()  # the streamed reasoning of the latest job grew or was cleared
    error_changed = Signal(str)

    def __init__(self, submit: Callable[[Request], object], parent: QObject | None = None):
        super().__init__(parent)
        self._submit = submit
        self.prompt = ""
        self.preset = "1:1"
        self.width, self.height = PRESETS["1:1"]
        self.seed = random.randint(0, MAX_SEED)
        self.seed_locked = False
        self.thinking = False
        self.count = 1
        self.advanced = Advanced()
        self.thinking_text = ""
        self.error = ""
        self.jobs: list[str] = []  # every job this form submitted, oldest first

    # ------------------------------------------------------------ fields

    def set_prompt(self, prompt: str) -> None:
        if prompt != self.prompt:
            self.prompt = prompt
            self.changed.emit()

    def set_preset(self, name: str) -> None:
        if name != CUSTOM:
            self.width, self.height = PRESETS[name]
        self.preset = name
        self.changed.emit()

    def set_size(self, width: int, height: int) -> None:
        """A custom size; the preset follows when the size is one of them."""
        self.width, self.height = width, height
        self.preset = next((n for n, s in PRESETS.items() if s == (width, height)), CUSTOM)
        self.changed.emit()

    def set_seed(self, seed: int) -> None:
        self.seed = max(0, min(int(seed), MAX_SEED))
        self.changed.emit()

    def randomize_seed(self) -> None:
        self.set_seed(random.randint(0, MAX_SEED))

    def set_seed_locked(self, locked: bool) -> None:
        self.seed_locked = locked
        self.changed.emit()

    def set_thinking(self, thinking: bool) -> None:
        self.thinking = thinking
        self.changed.emit()

    def set_count(self, count: int) -> None:
        self.count = max(1, min(int(count), MAX_COUNT))
        self.changed.emit()

    def set_advanced(self, **values) -> None:
        """Change some advanced parameters, e.g. `set_advanced(steps=16, turbo=False)`."""
        self.advanced = replace(self.advanced, **values)
        self.changed.emit()

    def reset_advanced(self) -> None:
        self.advanced = Advanced()
        self.changed.emit()

    def set_error(self, error: str) -> None:
        if error != self.error:
            self.error = error
            self.error_changed.emit(error)

    # ------------------------------------------------------------ requests

    def requests(self) -> list[Generate]:
        """The jobs `generate()` would submit now: `count` of them, with successive seeds."""
        a = self.advanced
        values = dict(
            prompt=self.prompt.strip(),
            width=self.width,
            height=self.height,
            thinking=self.thinking,
            steps=a.steps,
            cfg_scale=a.cfg_scale,
            cfg_rescale=a.cfg_rescale,
            turbo=a.turbo,
            decoder_steps=a.decoder_steps or None,
            thinking_length=a.thinking_length,
        )
        return [
            Generate(new_job_id(), seed=(self.seed + i) % (MAX_SEED + 1), **values)
            for i in range(self.count)
        ]

    def generate(self) -> list[str]:
        """Submit the jobs; returns their ids, or [] with `error` set when the form is not ready."""
        problem = size_problem(self.width, self.height)
        if not self.prompt.strip():
            problem = "Type a prompt that describes the image to make."
        self.set_error(problem)
        if problem:
            return []
        requests = self.requests()
        self.thinking_text = ""
        self.thinking_changed.emit()
        for request in requests:
            self._submit(request)
            self.jobs.append(request.job_id)
        if not self.seed_locked:
            self.randomize_seed()
        return [r.job_id for r in requests]

    def add_thinking(self, job_id: str, text: str) -> None:
        """Append streamed reasoning; only the newest job's reasoning is shown."""
        if self.jobs and job_id == self.jobs[-1]:
            self.thinking_text += text
            self.thinking_changed.emit()

    def restore(self, metadata: dict[str, str]) -> bool:
        """Put a made image's prompt, size, seed and parameters back; False if it holds none."""
        prompt = metadata.get("prompt")
        if prompt is None or metadata.get("task", "generate") != "generate":
            return False
        self.prompt = prompt
        width, height = _number(metadata, "width", int), _number(metadata, "height", int)
        if width and height:
            self.width, self.height = int(width), int(height)
            self.preset = next((n for n, s in PRESETS.items() if s == (width, height)), CUSTOM)
        seed = _number(metadata, "seed", int)
        if seed is not None:
            self.seed, self.seed_locked = int(seed), True  # to make the same image again
        if "thinking" in metadata:
            self.thinking = metadata["thinking"].lower() in ("true", "1", "yes")
        self.advanced = _advanced_from(metadata, self.advanced)
        self.changed.emit()
        return True


def _advanced_from(metadata: dict[str, str], advanced: Advanced) -> Advanced:
    values = {}
    for key, kind in (("steps", int), ("cfg_scale", float), ("cfg_rescale", float)):
        if (value := _number(metadata, key, kind)) is not None:
            values[key] = value
    if (value := _number(metadata, "decoder_steps", int)) is not None:
        values["decoder_steps"] = value
    if (value := _number(metadata, "thinking_length", int)) is not None:
        values["thinking_length"] = value
    if "turbo" in metadata:
        values["turbo"] = metadata["turbo"].lower() in ("true", "1", "yes")
    elif "decoder" in metadata:
        values["turbo"] = "turbo" in metadata["decoder"]
    restored = replace(advanced, **values)
    if restored.decoder_steps == (8 if restored.turbo else 50):  # the engine writes its default
        restored = replace(restored, decoder_steps=0)  # keep "default", so a decoder switch works
    return restored

"""Settings: one dataclass, loaded from and saved to a JSON file in the user's config folder.

Saving is atomic (a temporary file, then a rename). A file that cannot be read as settings is set
aside under a new name with one sentence for the user, and the defaults are used; a single field of
the wrong type falls back to its default alone.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from platformdirs import user_config_path, user_data_path, user_pictures_path

from engine.protocol import LoadModel, new_job_id

APP_NAME = "LLaDA Studio"
DEVICES = ("auto", "cuda", "mps", "cpu")  # "cuda:N" is accepted too (engine/args.py's rule)
PRECISIONS = ("auto", "bf16", "int8", "int4")  # engine/quant.py PRECISIONS; auto: the plan's
THEMES = ("system", "dark", "light")

# What each VRAM preset means to the engine: how much of the model stays on the GPU. The keys are
# what settings.json stores; the labels are what the settings dialog shows (by card size).
VRAM_PRESETS = {
    "auto": "Chosen from the GPU's free memory when the model loads",
    "high": "Everything on the GPU at full precision (bf16)",
    "standard": "Everything on the GPU: backbone int4, decoder int8",
    "medium": "Backbone and decoder take turns on the GPU, the idle one in CPU memory",
    "low": "Experts and decoder blocks stream from CPU memory as needed: works, but slowly",
}
VRAM_LABELS = {
    "auto": "Auto",
    "high": "48 GB or more",
    "standard": "24 GB",
    "medium": "12-16 GB",
    "low": "Under 12 GB",
}
# The GPU memory (GiB) each preset tells the engine's residency plan (engine/residency.py PRESETS)
VRAM_GIB = {"auto": None, "high": 48.0, "standard": 24.0, "medium": 16.0, "low": 10.0}
PRECISION_HINTS = {
    "auto": "The memory plan's precision for this card",
    "bf16": "The original weights: best quality, most memory",
    "int8": "About half the memory of bf16, very close in quality",
    "int4": "About a third of the memory of bf16, with some loss of quality",
}

# Disk and GPU memory by precision, for the first-run page (backbone_facts.md §8: backbone 16B
# parameters, about 32 GB at bf16; decoder ~12 GB; VAE, SigVQ and tokenizer ~3 GB; the bf16
# download about 60 GB with both decoders). Quantized backbones: 1 byte (int8) or half a byte
# (int4) a parameter, plus scales.
PRECISION_NEEDS = {
    "bf16": {"disk_gb": 60, "vram_gb": 47, "understand_vram_gb": 35},
    "int8": {"disk_gb": 45, "vram_gb": 32, "understand_vram_gb": 20},
    "int4": {"disk_gb": 37, "vram_gb": 24, "understand_vram_gb": 12},
}


def default_path() -> Path:
    return user_config_path(APP_NAME, appauthor=False) / "settings.json"


def data_folder() -> Path:
    """Where the app keeps its own files: autosave, the demo model."""
    return user_data_path(APP_NAME, appauthor=False)


def default_results_folder() -> Path:
    return user_pictures_path() / APP_NAME


@dataclass
class Settings:
    model_folder: str = ""  # the LLaDA2.0-Uni folder; empty until the user picks one
    demo_model: bool = False  # model_folder is the tiny random demo: its results are noise
    device: str = "auto"
    precision: str = "auto"  # "auto": the memory plan picks by the GPU's memory
    vram_preset: str = "auto"
    allow_lower_preset: bool = False  # out of GPU memory in a job: reload once at a smaller preset
    results_folder: str = ""  # "" = default_results_folder()
    theme: str = "system"
    brush_size: int = 40  # px on the image
    brush_hardness: float = 0.8  # 0 soft edge .. 1 hard edge
    mask_opacity: float = 0.5
    canvas_checkerboard: bool = True  # behind transparent or letterboxed parts
    # Default advanced parameters (the official defaults, engine/pipeline.py Defaults)
    generate_steps: int = 8
    generate_cfg: float = 2.0
    edit_steps: int = 8
    edit_cfg_text: float = 4.0
    edit_cfg_image: float = 0.0
    understand_steps: int = 32
    answer_tokens: int = 2048
    turbo_decoder: bool = True
    decoder_steps: int = 0  # 0: the decoder's own (turbo 8, normal 50)
    autosave_seconds: float = 3.0
    recent_files: list[str] = field(default_factory=list)  # newest first; see Workspace
    # Backend (ui/backend_page.py): "local" (the engine process) or "remote" (SGLang-Omni servers)
    backend: str = "local"
    backend_urls: list[str] = field(default_factory=list)  # servers, or one sgl-router
    backend_key: str = ""  # Bearer key; "" reads LLADA_STUDIO_API_KEY (never logged)
    backend_key_in_keychain: bool = False  # the key is in the system keychain (app/keychain.py)
    backend_ca_file: str = ""  # a private CA's certificates for HTTPS
    backend_in_flight: int = 2  # requests at a time per server
    backend_timeout_s: float = 600.0  # silence after which a remote job is given up

    @property
    def results_path(self) -> Path:
        return Path(self.results_folder) if self.results_folder else default_results_folder()

    def load_request(self, folder: str | None = None) -> LoadModel:
        """The LoadModel that loads `folder` (default: the settings' model) as these settings say:
        device, precision and VRAM preset (all "auto" leave the choice to the memory plan), and
        whether a job that runs out of GPU memory may retry once at a smaller preset."""
        return LoadModel(
            new_job_id(),
            folder or self.model_folder,
            self.device,
            precision=None if self.precision == "auto" else self.precision,
            vram=VRAM_GIB.get(self.vram_preset),
            allow_lower_preset=self.allow_lower_preset,
        )

    @property
    def needs_setup(self) -> bool:
        """True until a model folder (or the demo, or remote servers) is chosen: the first-run
        page shows."""
        return not self.model_folder and not (self.backend == "remote" and self.backend_urls)

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """The saved settings; never fails (see `load_checked` for the sentence)."""
        return cls.load_checked(path)[0]

    @classmethod
    def load_checked(cls, path: Path | None = None) -> tuple[Settings, str]:
        """(settings, a sentence for the user or "") — a damaged file is set aside, not lost."""
        path = path or default_path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(), ""
        except (OSError, ValueError) as error:
            return cls(), _set_aside(path, f"it could not be read ({type(error).__name__})")
        if not isinstance(raw, dict):
            return cls(), _set_aside(path, "it did not hold settings")
        known = {f.name: raw[f.name] for f in fields(cls) if _fits(raw.get(f.name), _default(f))}
        for name, default in ((f.name, f.default) for f in fields(cls)):
            if name in known and isinstance(default, float):
                known[name] = float(known[name])
        return cls(**known), ""

    def save(self, path: Path | None = None) -> None:
        path = path or default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as file:
            if os.name == "posix":  # it may hold the API key where no keychain is: owner only
                os.fchmod(file.fileno(), 0o600)
            json.dump(asdict(self), file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)  # atomic: a crash never leaves half a file


def _default(f) -> object:
    return f.default_factory() if f.default is MISSING else f.default


def _fits(value: object, default: object) -> bool:
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _set_aside(path: Path, why: str) -> str:
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, aside)
    except OSError:
        return f"The settings file {path} is damaged ({why}); the defaults are used."
    return (
        f"The settings file was damaged ({why}), so it was kept as {aside.name} and the "
        "defaults are used."
    )

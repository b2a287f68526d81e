"""Export history entries as image files: the batch's naming templates, formats and metadata.

Torch-free and widget-free. The settings are a frozen snapshot taken when the export starts, so
a later change in the dialog never alters a running export. Each entry's image and metadata are
read back from its history file (engine/imagefile.py), so the exported file carries every key the
original did, the A1111 `parameters` text included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from engine import imagefile, naming
from engine.errors import BadInput, StudioError

DEFAULT_TEMPLATE = "{date}-{task}-{slug}-{seed}"


@dataclass(frozen=True)
class ExportSettings:
    folder: Path
    template: str = DEFAULT_TEMPLATE
    format: str = "png"  # png, jpeg or webp
    quality: int = 95
    lossless: bool = False
    sidecar: bool = False
    overwrite: bool = False

    def check(self) -> None:
        """One sentence (BadInput) for a template, format or quality the export cannot use."""
        naming.check_template(self.template)
        imagefile.image_format("", self.format)
        if not 1 <= self.quality <= 100:
            raise BadInput(f"The quality must be 1 to 100, not {self.quality}.")


@dataclass
class ExportReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry, sentence)
    stopped: str = ""  # why the export stopped early (a full disk, a cancel)

    def summary(self) -> str:
        text = f"Exported {len(self.written)} images"
        if self.failed:
            text += f"; {len(self.failed)} could not be: " + "; ".join(
                f"{name}: {sentence}" for name, sentence in self.failed
            )
        return text + (f". {self.stopped}" if self.stopped else ".")


def export_entries(
    entries: Iterable,
    settings: ExportSettings,
    on_progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ExportReport:
    """Write each history entry (app.history.Entry) to `settings.folder`; a bad entry is listed
    and skipped, a full disk or `cancelled()` stops the export with what was written kept."""
    settings.check()
    entries = list(entries)
    report, used = ExportReport(), set()
    suffix = imagefile.SUFFIXES[imagefile.image_format("", settings.format)]
    for number, entry in enumerate(entries, 1):
        if cancelled():
            report.stopped = f"Cancelled with {len(entries) - number + 1} images not exported."
            break
        label = Path(entry.path).name
        try:
            path = _target(entry, number, settings, suffix, used)
            _export_one(entry, path, settings)
        except imagefile.DiskFull as error:
            report.failed.append((label, str(error)))
            report.stopped = str(error)
            break
        except (StudioError, OSError) as error:
            report.failed.append((label, str(error)))
        else:
            report.written.append(path)
        if on_progress:
            on_progress(number, len(entries))
    return report


def _target(entry, number: int, settings: ExportSettings, suffix: str, used: set) -> Path:
    fields = {"task": entry.task, "prompt": entry.prompt, "seed": entry.seed, "index": number,
              "source": Path(entry.path).stem}  # fmt: skip
    stem = naming.render(settings.template, fields, datetime.fromtimestamp(entry.created))
    name, n = f"{stem}{suffix}", 2
    while name.lower() in used:
        name, n = f"{stem}-{n}{suffix}", n + 1
    used.add(name.lower())
    path = Path(settings.folder) / name
    if path.exists() and not settings.overwrite:
        raise BadInput(f"{name} already exists; allow overwriting to replace it.")
    return path


def _export_one(entry, path: Path, settings: ExportSettings) -> None:
    image = imagefile.read_image(entry.path)
    metadata = imagefile.read_metadata(entry.path) or dict(entry.parameters)
    thinking = metadata.pop(imagefile.KEY_THINKING_TEXT, None)
    imagefile.save_image(
        path,
        image,
        metadata,
        format=settings.format,
        quality=settings.quality,
        lossless=settings.lossless,
        thinking=thinking,
        sidecar=settings.sidecar,
    )

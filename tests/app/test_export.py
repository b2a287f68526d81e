"""app/export.py: history entries written with templates, formats and their metadata."""

from pathlib import Path

import numpy as np
import pytest

from app.export import ExportSettings, export_entries
from app.history import Entry
from engine import imagefile
from engine.errors import BadInput


def entry(folder: Path, number: int, prompt: str, seed: str) -> Entry:
    image = np.full((24, 32, 3), number * 40, np.uint8)
    meta = {"task": "generate", "prompt": prompt, "seed": seed, "width": "32", "height": "24"}
    path = imagefile.save_image(folder / f"h{number}.png", image, meta, thinking="why")
    created = 1767225600.0 + number  # 2026-01-01 UTC
    return Entry(number, path, "generate", prompt, seed, meta, created, False, "", "")


def test_export_writes_named_files_with_metadata(tmp_path):
    entries = [entry(tmp_path, 1, "a red fox", "3"), entry(tmp_path, 2, "../../CON", "4"),
               entry(tmp_path, 3, "a red fox", "3")]  # fmt: skip
    settings = ExportSettings(tmp_path / "out", "{slug}-{seed}", "jpeg", quality=90)
    seen = []
    report = export_entries(entries, settings, on_progress=lambda n, total: seen.append(n))
    names = [p.name for p in report.written]
    assert names == ["a-red-fox-3.jpg", "con-4.jpg", "a-red-fox-3-2.jpg"] and seen == [1, 2, 3]
    keys = imagefile.read_metadata(report.written[0])
    assert keys["prompt"] == "a red fox" and keys[imagefile.KEY_THINKING_TEXT] == "why"
    assert imagefile.read_image(report.written[1]).shape == (24, 32, 3)


def test_existing_files_broken_entries_and_cancel(tmp_path):
    good, broken = entry(tmp_path, 1, "a fox", "1"), entry(tmp_path, 2, "a cat", "2")
    broken.path.write_bytes(b"gone")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a-fox-1.png").write_bytes(b"keep me")
    report = export_entries([good, broken], ExportSettings(tmp_path / "out", "{slug}-{seed}"))
    assert report.written == [] and len(report.failed) == 2
    assert "already exists" in report.failed[0][1] and "h2.png" in report.failed[1][1]
    assert (tmp_path / "out" / "a-fox-1.png").read_bytes() == b"keep me"
    report = export_entries([good], ExportSettings(tmp_path / "out", "{slug}-{seed}",
                                                   overwrite=True))  # fmt: skip
    assert [p.name for p in report.written] == ["a-fox-1.png"]
    report = export_entries([good], ExportSettings(tmp_path / "o2"), cancelled=lambda: True)
    assert report.written == [] and report.stopped.startswith("Cancelled")
    with pytest.raises(BadInput, match="colour"):
        export_entries([good], ExportSettings(tmp_path / "o3", "{colour}"))

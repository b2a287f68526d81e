"""Output file names from a template, safe on every OS (torch-free).

`{index:04d}-{slug}-{seed}` becomes `0003-a-red-fox-7`: the fields are the prompt's slug, the
seed, the item's index, the date and time, the source file's name and the task. Whatever a prompt
holds, the name has no folder separators or `..`, no control characters, no Windows reserved name
(CON, NUL, COM1...), no trailing dot or space, and fits the byte limit of common file systems.
"""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import datetime

from engine.errors import BadInput

MAX_NAME_BYTES = 200  # below 255 (ext4, NTFS, APFS), leaving room for the suffix and temp names
SLUG_CHARS = 48
FIELDS = ("task", "prompt", "slug", "seed", "index", "date", "time", "source", "width", "height")
RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{kind}{n}" for kind in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")
}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """`A red fox, at dawn!` -> `a-red-fox-at-dawn`: lower-case words joined by dashes, letters
    of any script kept, at most `limit` characters, cut at a word where it can be."""
    text = unicodedata.normalize("NFKC", text).lower()
    words = re.findall(r"\w+", text)
    out = ""
    for word in words:
        joined = f"{out}-{word}" if out else word
        if len(joined) > limit:
            return out or word[:limit]
        out = joined
    return out


def safe_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A file name (no suffix) that every OS accepts and that stays inside its folder."""
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE.sub("_", name)
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    name = name.strip(" .")
    if name.split(".")[0].strip().upper() in RESERVED:
        name = f"_{name}"
    name = _cut_bytes(name, max_bytes).rstrip(" .")
    return name or "untitled"


def _cut_bytes(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def check_template(template: str) -> str:
    """The template if it names only known fields, else one sentence."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as error:
        raise BadInput(f"The naming template {template!r} is not valid ({error}).") from None
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise BadInput(
            f"The naming template uses {{{unknown[0]}}}; the fields are "
            + ", ".join(f"{{{f}}}" for f in FIELDS)
            + "."
        )
    return template


def render(template: str, fields: dict, when: datetime | None = None) -> str:
    """The template filled in, each field made safe, the whole made a safe file name."""
    when = when or datetime.now()
    values = {
        "task": "",
        "prompt": "",
        "seed": 0,
        "index": 0,
        "source": "",
        "width": 0,
        "height": 0,
        **fields,
    }
    values["slug"] = slug(str(values.get("prompt", ""))) or "untitled"
    values["prompt"] = safe_name(str(values["prompt"]), 80)
    values["source"] = safe_name(str(values["source"]), 80) if values["source"] else ""
    values["date"], values["time"] = when.strftime("%Y-%m-%d"), when.strftime("%H%M%S")
    try:
        text = check_template(template).format_map(values)
    except (ValueError, TypeError) as error:
        raise BadInput(f"The naming template {template!r} cannot be filled ({error}).") from None
    return safe_name(text)

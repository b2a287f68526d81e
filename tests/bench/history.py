"""Benchmark of the history: `python -m tests.bench.history`.

Writes 1,000 results (64x64 PNGs with metadata) into a fresh history folder, then measures a
prompt search, a filtered search, deleting one entry (file and row) and rebuilding the database
from the files. Search times are medians of 50; the last line printed is one JSON object.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app import qt_workaround
from app.history import DB_NAME, History

ENTRIES, SEARCHES = 1000, 50
WORDS = "fox cat lighthouse harbour forest neon city portrait winter desert".split()


def timed_ms(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1e3, result


def main(folder: Path) -> dict:
    qt_workaround.check()  # PySide6 6.12 on Python 3.11: each emit loses a reference to True
    history = History(folder)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for i in range(ENTRIES):
        prompt = " ".join(rng.choice(WORDS, 4)) + f" #{i}"
        meta = {"task": ("generate", "edit")[i % 2], "prompt": prompt, "seed": str(i)}
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        history.add(image, meta, document=f"d{i % 7}", version=f"v{i}", job_id=f"job{i:04d}")
    write_s = time.perf_counter() - started
    search = [timed_ms(lambda: history.search("harbour neon"))[0] for _ in range(SEARCHES)]
    filtered = [timed_ms(lambda: history.search("fox", task="edit"))[0] for _ in range(SEARCHES)]
    hits = len(history.search("harbour neon"))
    before = {(str(e.path), e.prompt, e.seed, e.document, e.version) for e in history.search()}
    victim = history.search(f"#{ENTRIES // 2}")[0]
    delete_ms, _ = timed_ms(lambda: history.delete(victim.id))
    deleted = not victim.path.exists() and len(history) == ENTRIES - 1
    before.discard((str(victim.path), victim.prompt, victim.seed, victim.document, victim.version))
    history.close()
    (folder / DB_NAME).unlink()
    rebuild_ms, reopened = timed_ms(lambda: History(folder))
    after = {(str(e.path), e.prompt, e.seed, e.document, e.version) for e in reopened.search()}
    reopened.close()
    return {
        "entries": ENTRIES,
        "write_ms_per_entry": round(write_s * 1e3 / ENTRIES, 3),
        "search_ms": round(statistics.median(search), 3),
        "search_max_ms": round(max(search), 3),
        "filtered_search_ms": round(statistics.median(filtered), 3),
        "search_hits": hits,
        "delete_ms": round(delete_ms, 3),
        "delete_removed_file_and_row": deleted,
        "rebuild_ms": round(rebuild_ms, 1),
        "rebuild_rows_back": len(after),
        "rebuild_identical": after == before,
        "platform": sys.platform,
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        result = main(Path(folder))
    print(f"wrote {ENTRIES} results, {result['write_ms_per_entry']} ms each")
    print(
        f"search by prompt: {result['search_ms']} ms median, {result['search_max_ms']} ms worst "
        f"({result['search_hits']} hits); with a task filter {result['filtered_search_ms']} ms"
    )
    print(
        f"delete: {result['delete_ms']} ms, file and row gone: "
        f"{result['delete_removed_file_and_row']}"
    )
    print(
        f"rebuild from files: {result['rebuild_ms']} ms, {result['rebuild_rows_back']} rows, "
        f"identical: {result['rebuild_identical']}"
    )
    print(json.dumps(result))

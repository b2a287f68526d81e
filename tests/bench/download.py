"""Benchmark of the model download's own cost: `python -m tests.bench.download [MB]`.

Serves the tiny checkpoint plus one large random LFS file (256 MB by default) from the local hub
double (tests/hubserver.py) over loopback, downloads it through engine.download with its default
workers, then runs the download again, which checks every file against its checksum without
fetching (`--verify`). Loopback is far faster than any real link, so the figures bound what the
download itself costs per GB: HTTP handling, progress, the checksum. The last line is one JSON
object.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine import download as dl
from engine.tiny import write_tiny_checkpoint
from tests.hubserver import HubServer


def main(megabytes: int) -> dict:
    work = Path(tempfile.mkdtemp())
    try:
        source = write_tiny_checkpoint(work / "source", seed=0)
        rng = np.random.default_rng(0)
        (source / "extra.bin").write_bytes(rng.bytes(megabytes * 2**20))
        total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        with HubServer(source) as hub:
            os.environ["HF_ENDPOINT"] = hub.url
            started = time.perf_counter()
            folder = dl.download(work / "model")
            fetch_s = time.perf_counter() - started
            fetched = len(hub.file_requests())
            started = time.perf_counter()
            dl.download(folder, verify_all=True)
            verify_s = time.perf_counter() - started
            assert len(hub.file_requests()) == fetched  # the check fetched nothing
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "bytes": total,
        "workers": dl.WORKERS,
        "download_s": round(fetch_s, 2),
        "download_mb_per_s": round(total / 1e6 / fetch_s, 1),
        "verify_s": round(verify_s, 2),
        "verify_mb_per_s": round(total / 1e6 / verify_s, 1),
        "verify_60gb_s": round(60e9 / (total / verify_s)),
    }
    print(
        f"download of {total / 1e6:.0f} MB over loopback: {fetch_s:.2f} s "
        f"({result['download_mb_per_s']} MB/s, {dl.WORKERS} workers); checking every file again: "
        f"{verify_s:.2f} s ({result['verify_mb_per_s']} MB/s, so about "
        f"{result['verify_60gb_s']} s for the 60 GB model)"
    )
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)))

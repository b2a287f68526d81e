"""Benchmark of the process boundary: `python -m tests.bench.protocol`.

Starts the real engine process (no model needed) and measures, through EngineProcess on asyncio:
the round trip of a Status request, and moving a 1024x1024x3 uint8 image each way (Echo, a
diagnostic request). Times are medians; the last line printed is one JSON object.
"""

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.engine_client import EngineProcess
from engine import protocol as p

ROUNDS, IMAGE_ROUNDS = 200, 30
SHAPE = (1024, 1024, 3)


async def ask(engine: EngineProcess, request) -> float:
    started = time.perf_counter()
    engine.send(request)
    while not isinstance(await engine.receive(), (*p.TERMINAL, p.StatusReport)):
        pass
    return (time.perf_counter() - started) * 1e3


async def main() -> dict:
    log = Path(tempfile.mkdtemp()) / "engine.log"
    started = time.perf_counter()
    engine = await EngineProcess.start(log)
    ready = await engine.receive()
    start_ms = (time.perf_counter() - started) * 1e3
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    for _ in range(5):  # warm up
        await ask(engine, p.Status("warm"))
        await ask(engine, p.Echo("warm", image, SHAPE))
    status = [await ask(engine, p.Status(f"s{i}")) for i in range(ROUNDS)]
    small = [await ask(engine, p.Echo(f"e{i}")) for i in range(ROUNDS)]
    to_engine = [await ask(engine, p.Echo(f"u{i}", image)) for i in range(IMAGE_ROUNDS)]
    from_engine = [await ask(engine, p.Echo(f"d{i}", None, SHAPE)) for i in range(IMAGE_ROUNDS)]
    engine.close()
    await engine.wait()
    echo_ms = statistics.median(small)  # the same round trip without an image
    return {
        "engine_start_ms": round(start_ms, 1),
        "protocol_version": ready.version,
        "status_round_trip_ms": round(statistics.median(status), 3),
        "image_shape": list(SHAPE),
        "image_to_engine_ms": round(statistics.median(to_engine) - echo_ms, 3),
        "image_from_engine_ms": round(statistics.median(from_engine) - echo_ms, 3),
        "image_round_trip_to_engine_ms": round(statistics.median(to_engine), 3),
        "image_round_trip_from_engine_ms": round(statistics.median(from_engine), 3),
        "rounds": ROUNDS,
        "image_rounds": IMAGE_ROUNDS,
        "platform": sys.platform,
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    print(f"status round trip {result['status_round_trip_ms']} ms (median of {ROUNDS})")
    to, back = result["image_to_engine_ms"], result["image_from_engine_ms"]
    print(f"1024x1024 RGB image: to the engine {to} ms, back {back} ms (median of {IMAGE_ROUNDS})")
    print(json.dumps(result))

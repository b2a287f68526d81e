"""Benchmark of the remote backend: `python -m tests.bench.remote`.

1. Client overhead per request against the local test double (tests/remote/double.py, in a
   process of its own), which answers every text-to-image request with one canned 1024x1024 PNG
   and every edit with the source inverted: the client's work (request JSON, PNG + base64 of the
   edit source, answer JSON, base64 + PNG decode) timed without the network; this process's CPU
   time per request over HTTP (all of it the client's); and the wall time of the round trip over
   127.0.0.1, which includes the double's own decoding and encoding.
   The PNG is noise, so it does not compress: a worst case (about 3 MB; a photo is 1-2 MB).
   The aim: under 5 % of a 1 s job.
2. Throughput from 1 to 3 test servers whose response time is fixed (one request at a time per
   server, as SGLang-Omni serves LLaDA without batching).

Times are medians; the last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from app.remote import (
    RemoteBackend,
    RemoteOptions,
    edit_body,
    generate_body,
    parse_image_response,
)
from app.remote_cli import run_many
from engine.protocol import Edit, Generate
from tests.remote.double import DoubleServer, png_b64

ROUNDS = 15
JOBS, RESPONSE_S = 12, 0.25
SIDE = 1024


def client_cpu_ms(image: np.ndarray, canned: str) -> dict[str, float]:
    """The client's CPU time per request with no network: build the body, serialise, parse
    (process time, so other work on a shared machine does not count)."""
    answer = json.dumps({"choices": [{"message": {"image": {"data": canned, "format": "png"}}}]})
    t2i, edit = [], []
    for _ in range(ROUNDS):
        started = time.process_time()
        json.dumps(generate_body(Generate("b", "a boat", SIDE, SIDE)))
        parse_image_response(json.loads(answer))
        t2i.append(time.process_time() - started)
        started = time.process_time()
        json.dumps(edit_body(image, Edit("b", image, "make it blue")))
        parse_image_response(json.loads(answer))
        edit.append(time.process_time() - started)
    return {"t2i": statistics.median(t2i) * 1e3, "edit": statistics.median(edit) * 1e3}


async def round_trip_ms(url: str, image: np.ndarray) -> dict[str, float]:
    """Wall time per request against the double in another process, and this process's CPU time
    per request: all of it is the client's (httpx, JSON, base64, PNG)."""
    backend = RemoteBackend(RemoteOptions([url], per_server=1))
    await backend.pool.probe_all()
    times: dict[str, list[float]] = {"t2i": [], "edit": [], "t2i_cpu": [], "edit_cpu": []}
    for round_ in range(ROUNDS + 1):
        for task, request in (
            ("t2i", Generate(f"g{round_}", "a boat", SIDE, SIDE)),
            ("edit", Edit(f"e{round_}", image, "make it blue")),
        ):
            started, cpu = time.perf_counter(), time.process_time()
            ended = await run_many(backend, [request])
            assert type(ended[request.job_id]).__name__ == "Finished", ended
            if round_:  # the first round warms the connection
                times[task].append(time.perf_counter() - started)
                times[task + "_cpu"].append(time.process_time() - cpu)
    backend.close()
    return {task: statistics.median(values) * 1e3 for task, values in times.items()}


async def throughput(n_servers: int) -> float:
    servers = [DoubleServer(delay_s=RESPONSE_S).__enter__() for _ in range(n_servers)]
    try:
        backend = RemoteBackend(RemoteOptions([s.url for s in servers], per_server=1))
        await backend.pool.probe_all()
        requests = [Generate(f"t{i}", "a boat", 64, 64, seed=i) for i in range(JOBS)]
        started = time.perf_counter()
        await run_many(backend, requests)
        elapsed = time.perf_counter() - started
        backend.close()
    finally:
        for server in servers:
            server.stop()
    return JOBS / elapsed


async def main() -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    canned = png_b64(image)
    cpu = client_cpu_ms(image, canned)
    command = [sys.executable, "-m", "tests.remote.double", "--noise", str(SIDE)]
    double = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        trip = await round_trip_ms(double.stdout.readline().strip(), image)
    finally:
        double.stdin.close()
        double.wait(10)
    rates = {n: await throughput(n) for n in (1, 2, 3)}
    return {
        "png_base64_mb": round(len(canned) / 1e6, 2),
        "client_cpu_t2i_ms": round(cpu["t2i"], 1),
        "client_cpu_edit_ms": round(cpu["edit"], 1),
        "round_trip_t2i_ms": round(trip["t2i"], 1),
        "round_trip_edit_ms": round(trip["edit"], 1),
        "client_process_cpu_t2i_ms": round(trip["t2i_cpu"], 1),
        "client_process_cpu_edit_ms": round(trip["edit_cpu"], 1),
        "client_cpu_t2i_pct_of_1s_job": round(trip["t2i_cpu"] / 10, 2),
        "client_cpu_edit_pct_of_1s_job": round(trip["edit_cpu"] / 10, 2),
        "images_per_s_1_server": round(rates[1], 2),
        "images_per_s_2_servers": round(rates[2], 2),
        "images_per_s_3_servers": round(rates[3], 2),
        "speedup_3_servers": round(rates[3] / rates[1], 2),
        "fixed_response_s": RESPONSE_S,
        "jobs": JOBS,
        "rounds": ROUNDS,
        "platform": sys.platform,
    }


if __name__ == "__main__":
    result = asyncio.run(main())
    print(f"1024x1024 PNG as base64: {result['png_base64_mb']} MB (noise: a worst case)")
    print(
        f"client work without the network: t2i {result['client_cpu_t2i_ms']} ms, edit "
        f"{result['client_cpu_edit_ms']} ms"
    )
    print(
        f"client process CPU per request over HTTP: t2i {result['client_process_cpu_t2i_ms']} ms"
        f" ({result['client_cpu_t2i_pct_of_1s_job']} % of a 1 s job), edit "
        f"{result['client_process_cpu_edit_ms']} ms ({result['client_cpu_edit_pct_of_1s_job']} %)"
    )
    print(
        f"round trip over 127.0.0.1 incl. the double's work: t2i {result['round_trip_t2i_ms']} "
        f"ms, edit {result['round_trip_edit_ms']} ms"
    )
    print(
        f"throughput with {RESPONSE_S} s responses: 1 server {result['images_per_s_1_server']}/s,"
        f" 2 servers {result['images_per_s_2_servers']}/s, 3 servers "
        f"{result['images_per_s_3_servers']}/s ({result['speedup_3_servers']}x)"
    )
    print(json.dumps(result))

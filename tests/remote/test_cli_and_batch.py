"""`--backend` on the headless commands, and a batch fanned out over several servers, one of
which dies midway: every item exactly once, never more in flight than the bound."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.remote import RemoteBackend, RemoteOptions
from app.remote_cli import main as remote_main
from app.remote_cli import run_many
from engine.protocol import Failed, Generate, ImageResult
from tests.remote.double import DoubleServer, seeded_image

ROOT = Path(__file__).resolve().parents[2]


def test_generate_with_backend_writes_the_png_with_its_server(tmp_path):
    out = tmp_path / "boat.png"
    with DoubleServer() as server:
        stdout = io.StringIO()
        argv = ["generate", "--backend", server.url, "--prompt", "a boat", "--size", "256x288"]
        code = remote_main([*argv, "--seed", "3", "--out", str(out)], out=stdout)
    assert code == 0 and stdout.getvalue() == f"{out}\n"
    with Image.open(out) as image:
        assert np.array_equal(np.asarray(image), seeded_image(3, 256, 288))
        assert image.text["server"] == server.url and image.text["prompt"] == "a boat"


def test_ask_with_backend_streams_the_answer(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(seeded_image(1, 40, 30)).save(photo)
    with DoubleServer() as server:
        stdout = io.StringIO()
        argv = ["ask", "--backend", server.url, "--image", str(photo), "--question", "What?"]
        assert remote_main(argv, out=stdout) == 0
    assert stdout.getvalue() == "1 turns, 1 images: you asked What?\n"


def test_main_routes_backend_and_refuses_local_only_flags_with_a_sentence(tmp_path):
    argv = ["generate", "--backend", "http://127.0.0.1:9", "--prompt", "x"]
    argv += ["--block-length", "16", "--out", str(tmp_path / "x.png")]
    done = subprocess.run(
        [sys.executable, "main.py", *argv], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: --block-length is not available with --backend")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_a_refused_server_is_one_line_on_the_command_line(tmp_path, capsys):
    with DoubleServer() as server:
        url = server.url
    argv = ["generate", "--backend", url, "--prompt", "x", "--out", str(tmp_path / "x.png")]
    assert remote_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Could not connect to 127.0.0.1:") and err.count("\n") == 1


def test_forty_items_over_three_servers_with_one_dying_midway(tmp_path):
    bound = 2
    servers = [DoubleServer(delay_s=0.05) for _ in range(3)]
    for server in servers:
        server.__enter__()
    requests = [Generate(f"item{i:02d}", f"prompt {i}", 32, 32, seed=i) for i in range(40)]
    saved: dict[str, list[Path]] = {}

    def save(event) -> None:
        if isinstance(event, ImageResult):
            path = tmp_path / f"{event.job_id}.png"
            with open(path, "xb") as file:  # a second result for an item would fail here
                Image.fromarray(event.image).save(file, format="PNG")
            saved.setdefault(event.job_id, []).append(path)
            if len(saved) == 12:
                servers[1].die()

    async def body():
        options = RemoteOptions([s.url for s in servers], per_server=bound, read_timeout_s=10)
        options.probe_interval_s = 0.2
        backend = RemoteBackend(options)
        ended = await run_many(backend, requests, save)
        peaks = [s.peak for s in backend.pool.servers]
        backend.close()
        return ended, peaks

    try:
        ended, peaks = asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        for server in servers:
            server.stop()
    assert not [e for e in ended.values() if isinstance(e, Failed)]
    assert sorted(saved) == sorted(r.job_id for r in requests)
    assert all(len(paths) == 1 for paths in saved.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.job_id}.png" for r in requests)
    for request in requests:  # the right image under each name
        with Image.open(tmp_path / f"{request.job_id}.png") as image:
            assert np.array_equal(np.asarray(image), seeded_image(request.seed, 32, 32))
    assert max(peaks) <= bound and max(s.peak for s in servers) <= bound
    assert servers[1].dead and all(len(s.requests) > 0 for s in servers)


def test_a_server_failing_its_health_check_leaves_the_rotation_and_returns():
    async def body(good, sick):
        options = RemoteOptions([good.url, sick.url], per_server=1, read_timeout_s=10)
        options.probe_interval_s = 0.1
        backend = RemoteBackend(options)
        await backend.pool.probe_all()
        sick.healthy = False
        backend.submit(Generate("long", "x", 32, 32))  # keeps the health watch running
        pool_sick = backend.pool.servers[1]
        for _ in range(100):
            if not pool_sick.in_rotation:
                break
            await asyncio.sleep(0.02)
        assert "failed its health check" in pool_sick.why
        before = len(sick.requests)
        await run_many(backend, [Generate(f"a{i}", "x", 32, 32, seed=i) for i in range(4)])
        assert len(sick.requests) == before  # out of the rotation: nothing sent to it
        sick.healthy = True
        await asyncio.sleep(0.15)
        await run_many(backend, [Generate(f"b{i}", "x", 32, 32, seed=i) for i in range(4)])
        backend.close()
        return before

    with DoubleServer(delay_s=0.05) as good, DoubleServer(delay_s=0.05) as sick:
        before = asyncio.run(asyncio.wait_for(body(good, sick), 30))
        assert len(sick.requests) > before  # probed again, back in the rotation


def test_batch_with_backend_writes_each_prompt_and_seed_once(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\na blue owl\n")
    out = tmp_path / "out"
    with DoubleServer() as one, DoubleServer() as two:
        argv = ["batch", "--backend", f"{one.url},{two.url}", "--prompts", str(prompts)]
        argv += ["--seeds", "1-2,5", "--size", "256x256", "--out", str(out)]
        stdout = io.StringIO()
        assert remote_main(argv, out=stdout) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{n:04d}-seed{s}.png" for n in (1, 2) for s in (1, 2, 5)]
    assert sorted(stdout.getvalue().split()) == sorted(str(out / name) for name in names)
    with Image.open(out / "0002-seed5.png") as image:
        assert image.text["prompt"] == "a blue owl"
        assert np.array_equal(np.asarray(image), seeded_image(5, 256, 256))

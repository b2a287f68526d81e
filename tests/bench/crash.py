"""Crash benchmark with real processes: `python -m tests.bench.crash [--cycles 20]`.

Each cycle starts the app's core (EngineClient with the real engine process on the tiny checkpoint,
Workspace, Session: history, chat, autosave; offscreen Qt, no window) as a child process, which
opens an image, paints a mask, asks a question, and queues two edits. Then:

- app cycle: the app process is SIGKILLed during the first edit (after the autosave that follows
  the queueing). A new app process starts, finds the crash, restores, and lets the queue run; the
  document must come back with its mask, versions and chat, and both edits must then finish.
- engine cycle: the engine process is SIGKILLed during the first edit. The app must show that job
  as failed with a sentence, restart the engine, and finish the second edit, keeping everything.

Prints per cycle what came back, then the totals of documents and results lost; the last line is
one JSON object. Timings depend on the machine; the counts should all be zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is in the painted part?"


# ------------------------------------------------------------------ the app (child process)


def child(args) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import numpy as np
    import qasync
    from PySide6.QtWidgets import QApplication

    from app.engine_client import EngineClient, EngineProcess
    from app.session import Session
    from app.settings import Settings
    from app.workspace import Workspace
    from engine.protocol import Failed, LoadModel, Progress, new_job_id

    app = QApplication(["crash-bench"])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    settings = Settings(model_folder=args.model, device="cpu", results_folder=args.results,
                        autosave_seconds=1.0, answer_tokens=64, understand_steps=8)  # fmt: skip

    def say(*words) -> None:
        print(*words, flush=True)

    async def start_engine():
        return await EngineProcess.start(Path(args.data) / "engine.log")

    client = EngineClient(start_engine)
    workspace = Workspace(settings, client.submit, save_settings=lambda: None)
    session = Session(settings, client, workspace, args.data)
    client.add_handler(session.handle)
    client.add_handler(workspace.handle)
    session.autosave.saved.connect(lambda n: say("saved", n))
    client.job_started.connect(lambda job_id: say("started", job_id))

    def on_event(event) -> None:
        if isinstance(event, Progress):
            say("progress", event.job_id, event.stage, event.step)
        if isinstance(event, Failed):
            say("failed", event.job_id, event.code, json.dumps(event.message))

    client.add_handler(on_event)

    async def until(test, timeout=600.0):
        deadline = time.monotonic() + timeout
        while not test():
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not get there in time")
            await asyncio.sleep(0.05)

    async def first_run() -> None:
        image = np.random.default_rng(args.seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        document = workspace.open_image(image, title=f"photo-{args.seed}")
        document.paint_line([(20, 20), (70, 50), (100, 30)], radius=9)
        chat = session.chat_for(document)
        chat.ask(QUESTION, document.image, region=document.mask_snapshot(), seed=args.seed)
        await until(lambda: not chat.busy)
        first = document.edit("make it blue", seed=1)
        document.edit("make it red", seed=2)
        say("queued", first.job_id, int(document.mask.coverage.sum()), len(chat.messages))
        await until(lambda: False, timeout=600)  # killed by the benchmark before this ends

    async def restore_run() -> None:
        say("crashed", session.crashed)
        problems = session.restore()
        (document,) = workspace.documents
        chat = session.chat_for(document)
        await until(lambda: not document.jobs and not client.queued and client.running is None)
        report = {
            "problems": problems,
            "documents": len(workspace.documents),
            "mask_sum": int(document.mask.coverage.sum()),
            "versions": len(document.versions),
            "chat": [m.text for m in chat.messages],
            "history": len(session.history),
        }
        say("report", json.dumps(report))

    async def engine_run() -> None:
        image = np.random.default_rng(args.seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        document = workspace.open_image(image, title=f"photo-{args.seed}")
        document.paint_line([(20, 20), (70, 50)], radius=9)
        first = document.edit("make it blue", seed=1)
        document.edit("make it red", seed=2)
        say("queued", first.job_id, int(document.mask.coverage.sum()), 0)
        await until(lambda: not document.jobs and not client.queued and client.running is None)
        failed = [j for j in session.jobs.jobs if j.state == "failed"]
        report = {
            "documents": len(workspace.documents),
            "mask_sum": int(document.mask.coverage.sum()),
            "versions": len(document.versions),
            "failed": [(j.id == first.job_id, j.message) for j in failed],
            "history": len(session.history),
        }
        say("report", json.dumps(report))

    async def main() -> None:
        await client.start()
        say("engine", client._transport.pid)
        events = await client.run(LoadModel(new_job_id(), args.model, "cpu"))
        say("loaded", type(events[-1]).__name__)
        try:
            await {"first": first_run, "restore": restore_run, "engine": engine_run}[args.mode]()
        finally:
            session.autosave.finish()
            await client.shutdown()

    with loop:
        loop.run_until_complete(main())
    return 0


# ------------------------------------------------------------------ the benchmark (parent)


class App:
    """One app child process, read line by line."""

    def __init__(self, mode: str, work: Path, model: Path, seed: int):
        command = [sys.executable, "-m", "tests.bench.crash", "--child", mode, "--data",
                   str(work / "data"), "--results", str(work / "results"), "--model", str(model),
                   "--seed", str(seed)]  # fmt: skip
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="2")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                        env=env)  # fmt: skip
        self.lines: list[list[str]] = []

    def next(self, word: str, timeout: float = 900.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the app ended before saying {word!r}: {self.lines[-3:]}")
            text = line.rstrip("\n")
            parts = text.split(" ", 1) if text.startswith("report ") else text.split(" ", 3)
            self.lines.append(parts)
            if parts[0] == word:
                return parts
        raise TimeoutError(word)

    def wait(self) -> int:
        self.process.stdout.read()
        return self.process.wait()


def app_cycle(work: Path, model: Path, seed: int) -> dict:
    app = App("first", work, model, seed)
    app.next("loaded")
    _, first_job, mask_sum, chat_len = app.next("queued")  # the first edit is running now
    app.next("saved")  # the autosave that follows the queueing
    while app.next("progress")[1] != first_job:
        pass
    time.sleep(random.uniform(0.0, 0.3))
    during_first = not any(p[0] == "started" for p in app.lines[app.lines.index(
        ["queued", first_job, mask_sum, chat_len]):])  # fmt: skip
    app.process.send_signal(signal.SIGKILL)
    app.wait()
    again = App("restore", work, model, seed)
    crashed = again.next("crashed")[1] == "True"
    report = json.loads(again.next("report", timeout=1800)[1])
    again.wait()
    want_chat = int(chat_len)
    lost_documents = 1 - report["documents"] if crashed else 1
    lost = {
        "documents": max(lost_documents, 0),
        "mask": int(report["mask_sum"] != int(mask_sum)),
        "chat": int(len(report["chat"]) != want_chat or report["chat"][0] != QUESTION),
        "results": max(0, 2 - (report["versions"] - 1)),  # both edits must have finished
    }
    return {"kind": "app", "crash_found": crashed, "during_first_edit": during_first,
            "report": report, "lost": lost}  # fmt: skip


def engine_cycle(work: Path, model: Path, seed: int) -> dict:
    app = App("engine", work, model, seed)
    engine_pid = int(app.next("engine")[1])
    app.next("loaded")
    _, first_job, mask_sum, _ = app.next("queued")
    while app.next("progress")[1] != first_job:
        pass
    time.sleep(random.uniform(0.0, 0.3))
    os.kill(engine_pid, signal.SIGKILL)
    report = json.loads(app.next("report", timeout=1800)[1])
    app.wait()
    first_failed = [message for is_first, message in report["failed"] if is_first]
    lost = {
        "documents": 1 - report["documents"],
        "mask": int(report["mask_sum"] != int(mask_sum)),
        "results": max(0, 1 - (report["versions"] - 1)),  # the second edit must have finished
        "unexplained": int(not first_failed or not first_failed[0]),
    }
    return {"kind": "engine", "failed_sentence": first_failed, "report": report, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="app and engine crashes each")
    parser.add_argument("--child", choices=("first", "restore", "engine"))
    parser.add_argument("--data")
    parser.add_argument("--results")
    parser.add_argument("--model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        sys.exit(child(args))
    started = time.monotonic()
    totals: dict[str, int] = {}
    cycles = []
    with tempfile.TemporaryDirectory(prefix="llada-crash-") as scratch:
        model = Path(scratch) / "tiny"
        subprocess.run([sys.executable, "-m", "engine.tiny", str(model)], check=True, cwd=ROOT)
        for n in range(args.cycles):
            for kind, run in (("app", app_cycle), ("engine", engine_cycle)):
                work = Path(scratch) / f"{kind}-{n}"
                result = run(work, model, n)
                cycles.append(result)
                for key, value in result["lost"].items():
                    totals[key] = totals.get(key, 0) + value
                extra = "" if result.get("during_first_edit", True) else " (killed in the 2nd edit)"
                print(f"cycle {n + 1} {kind} crash{extra}: lost {result['lost']}", flush=True)
    summary = {
        "cycles": args.cycles,
        "app_crashes": args.cycles,
        "engine_crashes": args.cycles,
        "documents_lost": totals.get("documents", 0),
        "results_lost": totals.get("results", 0),
        "masks_lost": totals.get("mask", 0),
        "chats_lost": totals.get("chat", 0),
        "engine_failures_without_sentence": totals.get("unexplained", 0),
        "engine_failure_sentence": next((c["failed_sentence"][0] for c in cycles
                                         if c["kind"] == "engine" and c["failed_sentence"]), ""),
        "seconds": round(time.monotonic() - started, 1),
        "platform": sys.platform,
    }  # fmt: skip
    lost = f"{summary['documents_lost']} documents and {summary['results_lost']} results lost"
    print(f"{args.cycles} app crashes and {args.cycles} engine crashes: {lost}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

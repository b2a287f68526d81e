"""`python -m engine`: the engine process. Frames on stdin and stdout, all else to a log file.

It exits when stdin closes (the app is gone, however it ended) and opens no network port.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from engine.protocol import (
    REQUESTS,
    VERSION,
    Failed,
    FrameReader,
    ProtocolError,
    Ready,
    write_message,
)
from engine.worker import PipelineFactory, Worker, load_pipeline

log = logging.getLogger("engine")

LOG_ENV = "LLADA_STUDIO_ENGINE_LOG"
EXIT_GRACE_S = 3.0  # after the app is gone, how long a running job may take to notice the cancel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("--log", type=Path, help=f"log file (default: ${LOG_ENV} or user log dir)")
    parser.add_argument(
        "--pipeline-factory",
        help="module:function building the pipeline from a LoadModel, for tests and other backends",
    )
    args = parser.parse_args(argv)

    frames_out = _claim_stdout()  # before anything can print
    _log_to(args.log or _default_log_path())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the app's to handle; it closes stdin
    factory = _import(args.pipeline_factory) if args.pipeline_factory else load_pipeline

    lock = threading.Lock()

    def emit(event: object) -> None:
        with lock:
            try:
                write_message(frames_out, event)
            except OSError:  # the app closed our stdout: it is gone
                log.warning("stdout closed; exiting")
                os._exit(0)

    worker = Worker(emit, factory)
    stdin = _binary(sys.stdin.buffer)
    threading.Thread(target=_read, args=(stdin, worker, emit), daemon=True).start()
    if sys.platform != "win32":  # a POSIX orphan gets a new parent; Windows relies on stdin EOF
        threading.Thread(target=_watch_parent, args=(worker,), daemon=True).start()
    log.info("engine %d started, protocol %d, python %s", os.getpid(), VERSION, sys.version)
    emit(Ready("", VERSION, os.getpid()))
    worker.run()
    log.info("engine %d exits", os.getpid())
    return 0


def _read(stdin: BinaryIO, worker: Worker, emit) -> None:
    for item in FrameReader(stdin, REQUESTS):
        if isinstance(item, ProtocolError):
            log.warning("bad frame: %s", item)
            emit(Failed(item.job_id, str(item), "bad_request"))
        else:
            worker.accept(item)
    log.info("stdin closed: the app is gone")
    _leave(worker)


def _watch_parent(worker: Worker) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    log.info("parent %d died", parent)
    _leave(worker)


def _leave(worker: Worker) -> None:
    worker.stop()
    timer = threading.Timer(EXIT_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _claim_stdout() -> BinaryIO:
    """Keep the real stdout for frames; fd 1 and sys.stdout then go to stderr (the log)."""
    sys.stdout.flush()
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return _binary(frames)


def _log_to(path: Path) -> None:
    """Send logging, stray prints and C-level output (fd 1 and 2) to the log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 10 << 20:
        path.replace(path.with_name(path.name + ".1"))
    stream = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )


def _default_log_path() -> Path:
    if env := os.environ.get(LOG_ENV):
        return Path(env)
    from platformdirs import user_log_path

    return user_log_path("LLaDA Studio", appauthor=False) / "engine.log"


def _binary(stream: BinaryIO) -> BinaryIO:
    if sys.platform == "win32":  # no newline translation on the frame pipes
        import msvcrt

        msvcrt.setmode(stream.fileno(), os.O_BINARY)
    return stream


def _import(spec: str) -> PipelineFactory:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


if __name__ == "__main__":
    sys.exit(main())

"""Fakes at the process boundary: FakePipeline stands in for engine.pipeline, FakeEngine for the
engine process. Both honour engine/protocol.py; app and UI tests use them to run in milliseconds.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.errors import BadInput
from engine.protocol import EVENTS, REQUESTS, VERSION, FrameReader, LoadModel, Ready, encode
from engine.worker import Worker

STEP_ENV = "LLADA_FAKE_STEP_S"  # seconds per step of FakePipeline in an engine subprocess


@dataclass(frozen=True)
class FakeOutput:
    image: np.ndarray
    metadata: dict[str, str]
    thinking: str | None = None


@dataclass
class FakePipeline:
    """Same methods as engine.pipeline.Pipeline. Every step sleeps `step_s` and reports progress.

    Prompts steer it: "raise" raises, "hang" sleeps 60 s without a step, "exit" ends the process.
    """

    folder: str
    step_s: float = 0.01
    default_steps: int = 4
    unloaded: bool = False
    calls: list[str] = field(default_factory=list)

    def generate(self, prompt, *, width=1024, height=1024, seed=0, thinking=False, steps=None,
                 cfg_scale=None, cfg_rescale=None, turbo=None, decoder_steps=None,
                 resolution_multiplier=None, thinking_steps=None, thinking_length=None,
                 block_length=None, threshold=None, use_cache=None, temperature=None, top_k=None,
                 top_p=None, on_progress=None, on_preview=None,
                 on_text=None) -> FakeOutput:  # fmt: skip
        self.calls.append("generate")
        self._special(prompt)
        if thinking and on_text:
            for word in ("Thinking", " about", f" {prompt}."):
                on_text(word)
        self._steps(steps, on_progress, on_preview=on_preview)
        image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        meta = {"task": "generate", "prompt": prompt, "seed": str(seed), "model": "fake"}
        return FakeOutput(image, meta, f"Thinking about {prompt}." if thinking else None)

    def edit(self, image, instruction, *, mask=None, seed=0, steps=None, cfg_text_scale=None,
             cfg_image_scale=None, cfg_rescale=None, turbo=None, decoder_steps=None,
             resolution_multiplier=None, block_length=None, threshold=None, use_cache=None,
             temperature=None, top_k=None, top_p=None, on_progress=None,
             on_preview=None, on_place=None) -> FakeOutput:  # fmt: skip
        self.calls.append("edit")
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8):
            raise BadInput("The image to edit is not a readable RGB picture.")
        self._special(instruction)
        if on_place is not None:  # as the real one: the previews show the mask's box
            rows, cols = np.nonzero(mask) if mask is not None and mask.any() else ([0], [0])
            whole = mask is None or not mask.any()
            h, w = image.shape[:2]
            box = (0, 0, w, h) if whole else (min(cols), min(rows), max(cols) + 1, max(rows) + 1)
            on_place(tuple(int(v) for v in box))
        self._steps(steps, on_progress, on_preview=on_preview)
        out = image.copy()
        where = mask if mask is not None else np.ones(image.shape[:2], bool)
        out[where] = 255 - image[where] + np.uint8(seed % 256)  # wraps around
        return FakeOutput(out, {"task": "edit", "instruction": instruction, "seed": str(seed)})

    def understand(self, turns, *, seed=0, mask=None, steps=None, gen_length=None,
                   block_length=None, threshold=None, use_cache=None, temperature=None,
                   top_k=None, top_p=None, on_progress=None, on_text=None) -> str:  # fmt: skip
        self.calls.append("understand")
        self._special(turns[-1].text)
        images = sum(len(t.images) for t in turns)
        words = f"I see {images} images and {len(turns)} turns; seed {seed}.".split(" ")
        for i, word in enumerate(words):
            self._steps(1, on_progress, stage="text", offset=i, total=len(words))
            if on_text:
                on_text(word if i == 0 else " " + word)
        return " ".join(words)

    def status(self) -> dict[str, str]:
        return {"device": "cpu", "memory": "1 MB", "loaded": "fake backbone, fake decoder"}

    def unload(self) -> None:
        self.unloaded = True

    def _steps(self, steps, on_progress, stage="tokens", offset=0, total=None, on_preview=None):
        steps = steps or self.default_steps
        for step in range(offset + 1, offset + steps + 1):
            time.sleep(self.step_s)
            if on_preview:  # as the real decoder: a step's picture, then that step's progress
                on_preview(np.full((2, 2, 3), step % 256, np.uint8))
            if on_progress:
                on_progress(stage, step, total or steps)

    def _special(self, text: str) -> None:
        match text:
            case "raise":
                raise RuntimeError("the fake pipeline was told to raise")
            case "oom":
                raise MemoryError("the fake pipeline was told to run out of memory")
            case "hang":
                time.sleep(60)
            case "exit":
                os._exit(3)


def fake_pipeline(request: LoadModel, on_progress, step_s: float | None = None) -> FakePipeline:
    """A PipelineFactory; `python -m engine --pipeline-factory tests.fakes:fake_pipeline`."""
    if not os.path.isdir(request.folder):
        raise BadInput(f"The model folder {request.folder} does not exist.")
    step_s = float(os.environ.get(STEP_ENV, "0.01")) if step_s is None else step_s
    for step in (1, 2):
        time.sleep(step_s)
        on_progress("backbone" if step == 1 else "decoder", step, 2)
    return FakePipeline(request.folder, step_s)


def roundtrip(message, accept):
    """The message as the other process would read it."""
    return FrameReader(io.BytesIO(b"".join(encode(message))), accept).read()


class FakeEngine:
    """An engine inside this process: the real Worker on a thread with FakePipeline.

    Has EngineClient's transport interface; messages are framed and read back as on the pipe.
    """

    def __init__(self, step_s: float = 0.01, version: int = VERSION):
        self.requests: list = []
        self.pid = -1
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._alive = True
        factory = lambda request, on_progress: fake_pipeline(request, on_progress, step_s)  # noqa: E731
        self._worker = Worker(self._emit, factory)
        self._thread = threading.Thread(target=self._worker.run, daemon=True)
        self._thread.start()
        self._emit(Ready("", version, self.pid))

    @classmethod
    def starter(cls, **options) -> tuple[Callable, list[FakeEngine]]:
        """A `start_engine` for EngineClient, and the list of engines it started."""
        engines: list[FakeEngine] = []

        async def start() -> FakeEngine:
            engines.append(cls(**options))
            return engines[-1]

        return start, engines

    def send(self, request) -> None:
        request = roundtrip(request, REQUESTS)
        self.requests.append(request)
        if self._alive:
            self._worker.accept(request)

    async def receive(self):
        # Polls, so that no thread calls into the (qasync) loop: keeps the fake simple and safe.
        while self._events.empty():
            await asyncio.sleep(0.002)
        event = self._events.get()
        if event is None:
            raise EOFError
        return event

    def crash(self) -> None:
        """As if the process died: no more events, the running job is abandoned."""
        if self._alive:
            self._alive = False
            self._worker.stop()
            self._events.put(None)

    def close(self) -> None:
        self._worker.stop()

    def kill(self) -> None:
        self.crash()

    async def wait(self) -> int:
        for _ in range(500):  # polls: no executor threads, which qasync loops handle poorly
            if not self._thread.is_alive():
                break
            await asyncio.sleep(0.01)
        self.crash()
        return 0

    def _emit(self, event) -> None:
        event = roundtrip(event, EVENTS)
        if self._alive:
            self._events.put(event)

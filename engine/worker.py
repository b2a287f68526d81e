"""The engine's job loop: one job at a time, cancelled between steps; a failure never ends it."""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine import args
from engine.errors import BadInput, Cancelled, StudioError
from engine.protocol import (
    Cancel,
    ChatTurn,
    Echo,
    Edit,
    Event,
    Failed,
    Finished,
    Generate,
    ImageResult,
    LoadModel,
    LoadProgress,
    Progress,
    Request,
    Shutdown,
    Status,
    StatusReport,
    TextDelta,
    TextResult,
    Understand,
    Unload,
)

log = logging.getLogger(__name__)

OnProgress = Callable[[str, int, int], None]  # (stage, step, total); raises Cancelled to stop


class PipelineLike(Protocol):
    """What the worker needs of `engine.pipeline.Pipeline`; tests pass a fake with these methods."""

    def generate(self, prompt: str, **options: Any) -> Any: ...
    def edit(self, image: np.ndarray, instruction: str, **options: Any) -> Any: ...
    def understand(self, turns: list[Any], **options: Any) -> str: ...
    def status(self) -> dict[str, str]: ...
    def unload(self) -> None: ...


PipelineFactory = Callable[[LoadModel, OnProgress], PipelineLike]


class NoModel(StudioError):
    code = "no_model"


def load_pipeline(request: LoadModel, on_progress: OnProgress) -> PipelineLike:
    from engine.pipeline import Pipeline  # torch is imported here, at the first LoadModel

    return Pipeline.load(
        Path(request.folder),
        device=request.device,
        on_progress=on_progress,
        precision=request.precision,
        vram=request.vram,
    )


class Worker:
    """Takes requests from the reader thread (`accept`) and runs jobs in order (`run`).

    Status, Echo and Cancel are answered at once from the reader thread; the rest queue up.
    """

    def __init__(self, emit: Callable[[Event], None], factory: PipelineFactory = load_pipeline):
        self._emit = emit
        self._factory = factory
        self._pipeline: PipelineLike | None = None
        self._jobs: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._cancelled: set[str] = set()
        self._running = ""
        self._preview: np.ndarray | None = None  # the decode step's picture, sent with its step
        self._preview_box: tuple[int, int, int, int] | None = None  # where the pictures sit
        self._lock = threading.Lock()

    def accept(self, request: Request) -> None:
        match request:
            case Cancel(job_id):
                with self._lock:
                    self._cancelled.add(job_id)
            case Status(job_id):
                self._emit(self._status(job_id))
            case Echo(job_id, _, reply_shape):
                if reply_shape:
                    image = np.full(reply_shape, 127, np.uint8)
                    self._emit(ImageResult(job_id, image, {"task": "echo"}))
                self._emit(Finished(job_id))
            case Shutdown():
                self.stop()
            case _:
                self._jobs.put(request)

    def stop(self) -> None:
        """Cancel the running job and end `run` after it; queued jobs are dropped."""
        with self._lock:
            if self._running:
                self._cancelled.add(self._running)
        self._jobs.put(Shutdown())

    def run(self) -> None:
        while not isinstance(request := self._jobs.get(), Shutdown):
            self._run_job(request)
        if self._pipeline is not None:
            self._pipeline.unload()

    def _run_job(self, request: Request) -> None:
        job_id = request.job_id
        with self._lock:
            self._running = job_id
        try:
            if job_id in self._cancelled:
                raise Cancelled("The job was cancelled before it started.")
            self._execute(request)
            self._emit(Finished(job_id))
        except Cancelled:
            self._emit(Failed(job_id, "The job was cancelled.", Cancelled.code))
        except StudioError as error:
            log.warning("job %s failed: %s", job_id, error)
            self._emit(Failed(job_id, str(error), error.code))
        except Exception as error:  # one failed job must not stop the engine
            log.exception("job %s failed", job_id)
            if _code(error) == "out_of_memory":
                _free_memory()  # the job's tensors are gone with its frames; return them
                if self._retry_lower(request):
                    return
            self._emit(Failed(job_id, self._sentence(error), _code(error)))
        finally:
            self._preview = None  # a cancelled step's picture must not reach the next job
            self._preview_box = None
            with self._lock:
                self._running = ""
                self._cancelled.discard(job_id)

    def _execute(self, request: Request) -> None:
        job_id = request.job_id
        match request:
            case LoadModel():
                args.check_device(request.device)  # its memory: the plan's (engine/residency.py)
                self._load_request = request  # kept for a retry at a lower preset
                self._unload()
                on_load = self._on_progress(job_id, LoadProgress)
                self._pipeline = self._factory(request, on_load)
            case Unload():
                self._unload()
            case Generate():
                # the pipeline checks each value against engine/args.py, as the CLI does
                out = self._loaded().generate(
                    request.prompt,
                    **_options(request, "prompt"),
                    on_progress=self._on_progress(job_id),
                    on_preview=self._on_preview,
                    on_text=self._on_text(job_id),
                )
                self._emit(ImageResult(job_id, out.image, dict(out.metadata), out.thinking))
            case Edit():
                _check_image(request.image, "The image to edit")
                if request.mask is not None:
                    _check_mask(request.mask, request.image)
                out = self._loaded().edit(
                    request.image,
                    request.instruction,
                    **_options(request, "image", "instruction"),
                    on_progress=self._on_progress(job_id),
                    on_preview=self._on_preview,
                    on_place=self._on_place,
                )
                self._emit(ImageResult(job_id, out.image, dict(out.metadata), out.thinking))
            case Understand():
                pipeline = self._loaded()
                turns = _pipeline_turns(pipeline, request.turns)  # the pipeline checks the mask
                text = pipeline.understand(
                    turns,
                    **_options(request, "turns", "max_tokens"),
                    gen_length=request.max_tokens,
                    on_progress=self._on_progress(job_id),
                    on_text=self._on_text(job_id),
                )
                self._emit(TextResult(job_id, text))
            case _:
                raise BadInput(f"The engine cannot run a {type(request).__name__} request.")

    def _retry_lower(self, request: Request) -> bool:
        """Out of memory in a job the LoadModel allowed it for: reload once at the next smaller
        preset and run the job again. True when the retry finished it (Finished sent)."""
        from engine import residency  # torch is loaded by now

        load = getattr(self, "_load_request", None)
        settings = getattr(self._pipeline, "settings", None)
        if isinstance(request, LoadModel | Unload) or load is None or settings is None:
            return False
        preset = residency.lower(settings.plan) if settings.plan else None
        if not load.allow_lower_preset or preset is None:
            return False
        log.warning("out of memory; reloading at the %s preset", preset.name)
        self._unload()
        _free_memory()
        lower = replace(load, precision=preset.backbone, allow_lower_preset=False)
        try:
            self._pipeline = self._factory(lower, self._on_progress(request.job_id, LoadProgress))
            self._execute(request)
        except Exception:  # a second failure fails the job with the first one's sentence
            log.exception("the retry at the %s preset failed", preset.name)
            _free_memory()
            return False
        self._emit(Finished(request.job_id))
        return True

    def _sentence(self, error: Exception) -> str:
        """The failure's sentence; out of memory names a preset that would fit."""
        settings = getattr(self._pipeline, "settings", None)
        if _code(error) != "out_of_memory" or settings is None or settings.plan is None:
            return _sentence(error)
        from engine import residency

        return residency.out_of_memory_sentence(self._pipeline)

    def _loaded(self) -> PipelineLike:
        if self._pipeline is None:
            raise NoModel("No model is loaded; choose a model folder first.")
        return self._pipeline

    def _unload(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.unload()

    def _on_progress(self, job_id: str, kind: type = Progress) -> OnProgress:
        def on_progress(stage: str, step: int, total: int) -> None:
            if job_id in self._cancelled:
                raise Cancelled("The job was cancelled.")
            if kind is Progress:
                preview, self._preview = self._preview, None
                box = self._preview_box if preview is not None else None
                self._emit(Progress(job_id, stage, step, total, preview, box))
            else:
                self._emit(kind(job_id, stage, step, total))

        return on_progress

    def _on_preview(self, preview: np.ndarray) -> None:
        """Keep a step's preview until that step's progress report carries it."""
        self._preview = preview

    def _on_place(self, box: tuple[int, int, int, int]) -> None:
        """Where this job's previews sit in its image (a masked edit's crop)."""
        self._preview_box = box

    def _on_text(self, job_id: str) -> Callable[[str], None]:
        return lambda text: self._emit(TextDelta(job_id, text))

    def _status(self, job_id: str) -> StatusReport:
        pipeline = self._pipeline
        details = dict(pipeline.status()) if pipeline is not None else {}
        device, memory = details.get("device", ""), details.get("memory", "")
        loaded = details.get("loaded", "")
        return StatusReport(job_id, device, memory, loaded, self._running, details)


def _options(request: Request, *passed: str) -> dict[str, Any]:
    """The request's fields as the pipeline's keywords (same names), but the job id and those
    passed another way."""
    skip = {"job_id", *passed}
    return {f.name: getattr(request, f.name) for f in fields(request) if f.name not in skip}


def _pipeline_turns(pipeline: PipelineLike, turns: tuple[ChatTurn, ...]) -> list[Any]:
    # The pipeline's own Turn has the same fields as ChatTurn; fakes may take ChatTurn itself.
    turn = getattr(sys.modules[type(pipeline).__module__], "Turn", ChatTurn)
    for t in turns:
        for image in t.images:
            _check_image(image, "An image in the chat")
    return [turn(role=t.role, text=t.text, images=tuple(t.images)) for t in turns]


def _check_image(image: Any, what: str) -> None:
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] > 0
        and image.shape[1] > 0
    ):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise BadInput(f"{what} is not a readable RGB picture (got {got}); open it again.")


def _check_mask(mask: Any, image: np.ndarray) -> None:
    if not (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == image.shape[:2]):
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask)
        raise BadInput(f"The mask does not match the picture's size (got {got}); paint it again.")


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # loaded by the pipeline if any job got this far
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _code(error: Exception) -> str:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return "internal"


def _sentence(error: Exception) -> str:
    if _code(error) == "out_of_memory":
        return "The engine ran out of memory; choose a smaller preset or image size."
    detail = str(error).splitlines()[0][:200] if str(error) else ""
    return f"The engine failed with {type(error).__name__}({detail}); the engine log has details."

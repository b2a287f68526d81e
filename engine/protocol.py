"""Every message that crosses the GUI <-> engine process boundary, and how it is framed on a pipe.

Requests go from the app to the engine, events come back. Each names the job it belongs to.
This module imports only the standard library and numpy, so the GUI process can use it.

A frame is MAGIC, a little-endian u32 header length, a JSON header, then the raw bytes of every
numpy array the message holds, in order. The header names the message type, its fields (arrays
replaced by {"$array": i}) and each array's dtype and shape, so images cross as raw pixels.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, BinaryIO

import numpy as np

VERSION = 4  # bump on any change to a message or the framing; both sides must agree
MAGIC = b"LLDS"
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 16 << 20
MAX_ARRAY_BYTES = 2 << 30
ARRAY_DTYPES = frozenset({"uint8", "bool", "float32"})


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- requests (app -> engine)


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a chat about images; a part of `Understand`, not a message of its own."""

    role: str  # "user" or "assistant"
    text: str
    images: tuple[np.ndarray, ...] = ()  # each [H, W, 3] uint8


@dataclass(frozen=True)
class LoadModel:
    job_id: str
    folder: str  # the model folder, as an absolute path
    device: str = "auto"  # "auto", "cuda", "cuda:1", "mps", "cpu"
    precision: str | None = None  # the backbone's "bf16", "int8", "int4"; None: the memory plan's
    vram: float | None = None  # GiB the model may use on the GPU; None: the card's free memory
    allow_lower_preset: bool = False  # out of memory in a job: reload once at the next preset


@dataclass(frozen=True)
class Understand:
    """Answer the last user turn of a chat; the answer streams as TextDelta, then TextResult."""

    job_id: str
    turns: tuple[ChatTurn, ...]
    seed: int = 0
    mask: np.ndarray | None = None  # [H, W] bool over the last image: ask about this region
    steps: int | None = None  # denoising steps per block; None: the official 32
    max_tokens: int | None = None  # answer length limit; None: the official 2048
    # The loop (engine/args.py has each range; None: engine/pipeline.py Defaults)
    block_length: int | None = None  # None: the official 32
    threshold: float | None = None  # None: the official 0.95; 1.0: a fixed count per step
    use_cache: bool | None = None  # KV cache of completed blocks (exact); None: on
    temperature: float | None = None  # None: the official 0
    top_k: int | None = None  # draw among the k likeliest tokens; None: all (official)
    top_p: float | None = None  # draw among the likeliest tokens up to this mass; None: all


@dataclass(frozen=True)
class Generate:
    job_id: str
    prompt: str
    width: int = 1024
    height: int = 1024
    seed: int = 0
    thinking: bool = False  # reason in text first; the reasoning streams as TextDelta
    steps: int | None = None  # None: the official default
    cfg_scale: float | None = None
    turbo: bool | None = None  # decoder-turbo (8 steps) or the normal decoder; None: turbo
    cfg_rescale: float | None = None  # 0..1; None: 0 (none)
    decoder_steps: int | None = None  # None: the decoder's own (turbo 8, normal 50)
    resolution_multiplier: int | None = None  # px per token / 16, 1..4; None: the official 2
    thinking_steps: int | None = None  # None: the official 32
    thinking_length: int | None = None  # the most thinking tokens; None: the official 4096
    block_length: int | None = None
    threshold: float | None = None
    use_cache: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class Edit:
    job_id: str
    image: np.ndarray  # [H, W, 3] uint8
    instruction: str
    mask: np.ndarray | None = None  # [H, W] bool, True = repaint; None edits the whole image
    seed: int = 0
    steps: int | None = None
    cfg_text_scale: float | None = None
    cfg_image_scale: float | None = None
    turbo: bool | None = None
    cfg_rescale: float | None = None
    decoder_steps: int | None = None
    resolution_multiplier: int | None = None
    block_length: int | None = None
    threshold: float | None = None
    use_cache: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class Cancel:
    job_id: str  # the job to stop: the running one stops at its next step, a queued one never runs


@dataclass(frozen=True)
class Unload:
    job_id: str


@dataclass(frozen=True)
class Status:
    job_id: str  # answered at once with a StatusReport, even while a job runs


@dataclass(frozen=True)
class Echo:
    """Diagnostic, for the benchmark and health checks: answered at once, never queued.

    The engine drops `payload`, replies with an ImageResult of `reply_shape` uint8 if that is not
    empty, then Finished.
    """

    job_id: str
    payload: np.ndarray | None = None
    reply_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Shutdown:
    job_id: str = ""


Request = LoadModel | Understand | Generate | Edit | Cancel | Unload | Status | Echo | Shutdown


# ---------------------------------------------------------------- events (engine -> app)


@dataclass(frozen=True)
class Ready:
    """The engine's first frame: it runs and speaks this protocol version."""

    job_id: str
    version: int
    pid: int


@dataclass(frozen=True)
class LoadProgress:
    job_id: str
    stage: str  # the part being loaded, e.g. "backbone"
    step: int
    total: int


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str  # e.g. "tokens", "decode"
    step: int
    total: int
    preview: np.ndarray | None = None  # [h, w, 3] uint8, small, where cheap
    # Where the preview sits in the request's image, (x0, y0, x1, y1) in its pixels: a masked
    # edit's context crop. None: the preview stands for the whole image.
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class TextDelta:
    job_id: str
    text: str  # to append to what came before for this job


@dataclass(frozen=True)
class ImageResult:
    job_id: str
    image: np.ndarray  # [H, W, 3] uint8
    metadata: dict[str, str]  # task, prompt, seed, steps, sizes, model, version...
    thinking: str | None = None


@dataclass(frozen=True)
class TextResult:
    job_id: str
    text: str  # the whole answer


@dataclass(frozen=True)
class Finished:
    job_id: str


@dataclass(frozen=True)
class Failed:
    job_id: str
    message: str  # one sentence a user can act on; details go to the engine log
    code: str  # StudioError.code, "cancelled", "bad_request", "engine_stopped", "internal", ...


@dataclass(frozen=True)
class StatusReport:
    job_id: str
    device: str  # "" while no model is loaded
    memory: str
    loaded: str  # the parts in memory, e.g. "backbone, decoder"
    running: str = ""  # the job id the engine works on, "" when idle
    details: dict[str, str] = field(default_factory=dict)  # everything Pipeline.status() said


Event = (
    Ready
    | LoadProgress
    | Progress
    | TextDelta
    | ImageResult
    | TextResult
    | Finished
    | Failed
    | StatusReport
)

REQUESTS = (LoadModel, Understand, Generate, Edit, Cancel, Unload, Status, Echo, Shutdown)
EVENTS = (Ready, LoadProgress, Progress, TextDelta, ImageResult, TextResult, Finished, Failed)
EVENTS += (StatusReport,)
_TYPES = {cls.__name__: cls for cls in (*REQUESTS, *EVENTS, ChatTurn)}
TERMINAL = (Finished, Failed)  # every job ends with exactly one of these


class ProtocolError(Exception):
    """A frame that cannot be read; `job_id` is set when the header named one."""

    def __init__(self, message: str, job_id: str = "", in_sync: bool = False):
        super().__init__(message)
        self.job_id = job_id
        self.in_sync = in_sync  # True when the stream is at the start of the next frame


# ---------------------------------------------------------------- encoding


def encode(message: Any) -> list[bytes | memoryview]:
    """The frame for one message, as parts to write in order (arrays are not copied)."""
    arrays: list[np.ndarray] = []
    data = _to_json(message, arrays)
    header = {
        "type": type(message).__name__,
        "data": data["fields"],
        "arrays": [[str(a.dtype), list(a.shape)] for a in arrays],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: list[bytes | memoryview] = [_PREFIX.pack(MAGIC, len(head)) + head]
    parts += [memoryview(a).cast("B") for a in arrays if a.size]
    return parts


def _to_json(value: Any, arrays: list[np.ndarray]) -> Any:
    match value:
        case None | bool() | int() | float() | str():
            return value
        case np.ndarray():
            if str(value.dtype) not in ARRAY_DTYPES:
                raise TypeError(f"arrays must be one of {sorted(ARRAY_DTYPES)}, not {value.dtype}")
            arrays.append(np.ascontiguousarray(value))
            return {"$array": len(arrays) - 1}
        case np.integer() | np.floating() | np.bool_():
            return value.item()
        case tuple() | list():
            return [_to_json(item, arrays) for item in value]
        case dict():
            return {"$dict": {str(k): _to_json(v, arrays) for k, v in value.items()}}
        case os.PathLike():
            return os.fspath(value)
        case _ if is_dataclass(value) and type(value).__name__ in _TYPES:
            items = {f.name: _to_json(getattr(value, f.name), arrays) for f in fields(value)}
            return {"$type": type(value).__name__, "fields": items}
    raise TypeError(f"cannot send a {type(value).__name__} to the other process")


# ---------------------------------------------------------------- decoding


@dataclass
class PendingFrame:
    """A frame whose header is read; its arrays' bytes still have to be read."""

    type_name: str
    data: Any
    specs: list[tuple[np.dtype, tuple[int, ...]]]
    job_id: str = ""

    @property
    def sizes(self) -> list[int]:
        return [dtype.itemsize * int(np.prod(shape)) for dtype, shape in self.specs]

    def build(self, buffers: list[bytearray], accept: tuple[type, ...]) -> Any:
        cls = _TYPES.get(self.type_name)
        if cls is None or cls not in accept:
            message = (
                f"The message {self.type_name!r} is not understood here; "
                "the app and engine may be from different versions."
            )
            raise ProtocolError(message, self.job_id, in_sync=True)
        arrays = [
            np.frombuffer(buf, dtype).reshape(shape) if buf else np.zeros(shape, dtype)
            for buf, (dtype, shape) in zip(buffers, self.specs)
        ]
        try:
            return _from_json({"$type": self.type_name, "fields": self.data}, arrays)
        except (TypeError, KeyError, IndexError, ValueError) as error:
            message = f"A {self.type_name} frame is malformed: {error}."
            raise ProtocolError(message, self.job_id, in_sync=True) from None


def header_length(prefix: bytes) -> int:
    magic, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("A frame did not start with the protocol's marker.")
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"A frame header of {length} bytes is too large.")
    return length


def parse_header(head: bytes) -> PendingFrame:
    try:
        header = json.loads(head)
        type_name, data = str(header["type"]), header["data"]
        specs = [(np.dtype(d), tuple(int(n) for n in s)) for d, s in header["arrays"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ProtocolError(f"A frame header is not readable: {error}.") from None
    frame = PendingFrame(type_name, data, specs)
    if isinstance(data, dict) and isinstance(data.get("job_id"), str):
        frame.job_id = data["job_id"]
    for dtype, shape in specs:
        if str(dtype) not in ARRAY_DTYPES or any(n < 0 for n in shape):
            message = f"A frame holds an array of {dtype} {shape}, which is not allowed."
            raise ProtocolError(message, frame.job_id)
    if sum(frame.sizes) > MAX_ARRAY_BYTES:
        raise ProtocolError("A frame's arrays are too large.", frame.job_id)
    return frame


def _from_json(value: Any, arrays: list[np.ndarray]) -> Any:
    match value:
        case list():
            return tuple(_from_json(item, arrays) for item in value)
        case {"$array": int(index)}:
            return arrays[index]
        case {"$dict": dict(items)}:
            return {k: _from_json(v, arrays) for k, v in items.items()}
        case {"$type": str(name), "fields": dict(items)} if name in _TYPES:
            return _TYPES[name](**{k: _from_json(v, arrays) for k, v in items.items()})
        case dict():
            raise ValueError(f"unexpected object {sorted(value)}")
    return value


# ---------------------------------------------------------------- reading streams


def write_message(stream: BinaryIO, message: Any) -> None:
    for part in encode(message):
        stream.write(part)
    stream.flush()


class FrameReader:
    """Reads messages from a blocking byte stream (the engine's stdin).

    A frame whose header cannot be read is reported and skipped by searching for the next marker;
    a frame with a readable header but a bad message is reported and skipped by its sizes.
    """

    def __init__(self, stream: BinaryIO, accept: tuple[type, ...]):
        self._stream = stream
        self._accept = accept
        self._pending = b""  # bytes read while searching for a marker, not yet consumed

    def __iter__(self) -> Iterator[Any | ProtocolError]:
        """Messages until EOF; a bad frame is yielded as its ProtocolError and reading goes on."""
        while True:
            try:
                yield self.read()
            except EOFError:
                return
            except ProtocolError as error:
                yield error
                if not error.in_sync and not self._resync():
                    return

    def read(self) -> Any:
        """The next message; raises EOFError at the end and ProtocolError on a bad frame."""
        length = header_length(self._read_exactly(_PREFIX.size))
        frame = parse_header(self._read_exactly(length))
        buffers = [bytearray(self._read_exactly(size)) for size in frame.sizes]
        return frame.build(buffers, self._accept)

    def _resync(self) -> bool:
        window = self._pending
        self._pending = b""
        while (at := window.find(MAGIC)) < 0:
            chunk = self._stream.read1(1 << 16)  # type: ignore[attr-defined]
            if not chunk:
                return False
            window = window[-len(MAGIC) + 1 :] + chunk
        self._pending = window[at:]
        return True

    def _read_exactly(self, size: int) -> bytes:
        data, self._pending = self._pending[:size], self._pending[size:]
        parts = [data]
        missing = size - len(data)
        while missing:
            chunk = self._stream.read(missing)
            if not chunk:
                raise EOFError
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)


async def read_message_async(reader: asyncio.StreamReader, accept: tuple[type, ...]) -> Any:
    """The next message from an asyncio stream; raises EOFError at the end."""
    try:
        length = header_length(await reader.readexactly(_PREFIX.size))
        frame = parse_header(await reader.readexactly(length))
        buffers = [bytearray(await reader.readexactly(size)) for size in frame.sizes]
    except asyncio.IncompleteReadError:
        raise EOFError from None
    return frame.build(buffers, accept)

"""RemoteBackend: the app's jobs run on SGLang-Omni servers over HTTP(S), not the local engine.

It follows the native-stack API described in ../shared/notes/sglang_omni_api.md (§2: chat
completions with `modalities` and `image_generation`, the image in `message.image`, SSE text,
`/health`, `/v1/models`, `/openapi.json`; §2.6 for the parameter names). It speaks the same
events as the engine process (engine/protocol.py), so the GUI, batch and CLI do not care which
one runs a job. Torch-free: it runs in the GUI process.

What the server cannot do is said before a job starts, never halfway: a missing task (the probe),
a setting the server does not expose. A masked edit runs half remote: the crop, the feathered
composite and the colour match run here (engine/masking.py) around a remote edit of the crop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import logging
import os
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from engine import masking
from engine.errors import BadInput, StudioError
from engine.protocol import (
    VERSION,
    Cancel,
    ChatTurn,
    Edit,
    Event,
    Failed,
    Finished,
    Generate,
    ImageResult,
    LoadModel,
    Progress,
    Ready,
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

KEY_ENV = "LLADA_STUDIO_API_KEY"  # the Bearer key, when the settings hold none
CHAT = "/v1/chat/completions"
OFFICIAL_CFG = 2.0  # upstream README's T2I guidance; the server's own default (1.0) is CFG off
TURBO_STEPS = 8
CANCELLED = (
    "The job was cancelled. The server has no way to stop a request, so it may finish the work; "
    "its result is discarded."
)
# Settings of our loop that the server does not take per request (notes §2.6), with the official
# value (engine/pipeline.py Defaults), which the server's own fixed loop stands for.
NOT_EXPOSED = {
    "block_length": ("the block length", 32),
    "threshold": ("the confidence threshold", 0.95),
    "use_cache": ("the KV cache switch", True),
    "temperature": ("the temperature", 0.0),
    "top_k": ("top-k sampling", None),
    "top_p": ("top-p sampling", None),
    "thinking_steps": ("the thinking steps", 32),
    "thinking_length": ("the thinking length", 4096),
    "resolution_multiplier": ("the resolution multiplier", 2),
}
UNDERSTAND_STEPS = 32  # answers run at the block size on the server


class RemoteError(StudioError):
    """A remote job failed; the message is one sentence. `before_result`: nothing came back yet
    (so a seeded request may run again elsewhere); `timed_out`: the server may still be working."""

    code = "remote"

    def __init__(self, message: str, *, before_result: bool = False, timed_out: bool = False):
        super().__init__(message)
        self.before_result = before_result
        self.timed_out = timed_out


# ------------------------------------------------------------------ addresses and security


def split_urls(text: str) -> list[str]:
    """`URL[,URL...]` (commas, spaces or lines) as base URLs without a trailing slash."""
    urls = [part.strip().rstrip("/") for part in text.replace("\n", ",").split(",")]
    urls = [url for part in urls for url in part.split()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"{url!r} is not a server address; write it like https://host:8000.")
        if parts.username or parts.password:
            raise BadInput("Put the API key in the key field, not in the server address.")
    if not urls:
        raise BadInput("Give at least one server address, like http://127.0.0.1:8000.")
    return urls


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warning(url: str) -> str:
    """A sentence when `url` sends prompts, images and the key unencrypted over a network."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return (
            f"{parts.hostname} is reached over plain HTTP: prompts, images and the API key cross "
            "the network unencrypted; use https:// or a VPN."
        )
    return ""


def api_key(settings_key: str = "") -> str:
    """The Bearer key: the settings' own, else the environment's; "" for none."""
    return settings_key.strip() or os.environ.get(KEY_ENV, "").strip()


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate checks on; `ca_file` adds a private CA (a company proxy, a self-signed one)."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError):
        raise BadInput(f"The CA file {ca_file} is not a readable certificate file.") from None


# ------------------------------------------------------------------ what a server offers


@dataclass
class Capabilities:
    """What the connect-time probe found (notes §4.4)."""

    url: str
    reachable: bool = False
    healthy: bool = False
    model: str = ""  # the served name from /v1/models
    image_generation: bool = False  # the native image stack: t2i, thinking t2i, edit
    problem: str = ""  # a sentence when unreachable or unhealthy

    def missing(self, task: str) -> str:
        """A sentence when this server cannot run `task` ("ask", "generate", "edit"), else ""."""
        if not self.reachable or not self.healthy:
            return self.problem
        if task in ("generate", "edit") and not self.image_generation:
            return (
                f"The server at {self.url} offers text and image understanding only; this "
                f"SGLang-Omni version has no image generation, so it cannot {task} images."
            )
        return ""

    def summary(self) -> str:
        if not self.reachable or not self.healthy:
            return self.problem
        tasks = "ask, generate, edit" if self.image_generation else "ask only (no image generation)"
        return f"{self.url}: {self.model or 'unnamed model'}, {tasks}."


def offers_images(openapi: dict) -> bool:
    paths = openapi.get("paths", {})
    schemas = json.dumps(openapi.get("components", {}).get("schemas", {}))
    return "/v1/images/generations" in paths or "image_generation" in schemas


# ------------------------------------------------------------------ errors as sentences


def error_for_status(status: int, body: bytes, url: str) -> RemoteError:
    """One sentence per documented failure (notes §4.2); never the key, never a traceback."""
    detail = _detail(body)
    host = urlsplit(url).netloc
    if status in (401, 403):
        return RemoteError(
            f"The server at {host} refused the API key ({status}); check the key in Settings › "
            f"Backend or {KEY_ENV}."
        )
    if status == 422:
        return RemoteError(f"The server refused a setting: {detail}.")
    if status == 404:
        return RemoteError(f"The server at {host} does not know this request: {detail}.")
    if status == 503 or "queue is full" in detail:
        return RemoteError(
            f"The server at {host} is busy or still starting ({status}); try again shortly.",
            before_result=True,
        )
    if status == 400:
        return RemoteError(f"The server refused the request: {detail}.")
    return RemoteError(f"The server at {host} failed on this job ({status}): {detail}.")


def _detail(body: bytes) -> str:
    """FastAPI {"detail": str | [{loc, msg}]} or OpenAI {"error": {"message"}}, as a phrase."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip() or "no reason given"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", "no reason given")).rstrip(".")
    detail = data.get("detail") if isinstance(data, dict) else data
    if isinstance(detail, list):
        items = []
        for item in detail[:3]:
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            items.append(f"{where}: {item.get('msg', '')}".strip(": "))
        return "; ".join(items) or "no reason given"
    return str(detail or "no reason given").rstrip(".")


def error_for_transport(error: httpx.HTTPError, url: str, read_timeout_s: float) -> RemoteError:
    host = urlsplit(url).netloc
    if isinstance(error, httpx.ConnectTimeout):
        return RemoteError(
            f"The server at {host} did not answer the connection.", before_result=True
        )
    if isinstance(error, httpx.ConnectError):
        if "CERTIFICATE" in str(error).upper():
            return RemoteError(
                f"The certificate of {host} could not be verified; give its CA file in "
                "Settings › Backend."
            )
        return RemoteError(
            f"Could not connect to {host}: the connection was refused or the host is unknown; "
            "is the server running?",
            before_result=True,
        )
    if isinstance(error, httpx.TimeoutException):
        return RemoteError(
            f"The server at {host} sent nothing for {read_timeout_s:g} s, so the job was stopped "
            "(the server may still be working on it).",
            timed_out=True,
        )
    return RemoteError(
        f"The connection to {host} broke off before an answer ({type(error).__name__}).",
        before_result=True,
    )


# ------------------------------------------------------------------ requests (notes §2.2-2.6)


def refuse_unexposed(request: Generate | Edit | Understand) -> None:
    """A setting the server takes no value for is refused before the job, not silently dropped;
    the official value (or none) passes, since the server's fixed loop stands for it."""
    for name, (what, official) in NOT_EXPOSED.items():
        value = getattr(request, name, None)
        if value is not None and value != official:
            raise BadInput(
                f"A remote server does not take {what} per request; set it back to "
                f"{'none' if official is None else official} or use the local engine."
            )


def png_bytes(image: np.ndarray) -> bytes:
    """[H, W, 3] uint8 as a PNG with stored (uncompressed) deflate blocks and no row filters.

    Lossless like any PNG, and about 20x faster to make than Pillow's compressed one (10 ms
    against 200-300 ms for 1024x1024 here); the cost is up to a third more bytes on the wire
    for a photo, which a LAN carries in less time than the compression took.
    """
    height, width, channels = image.shape
    rows = np.zeros((height, width * channels + 1), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = image.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def _decoder(turbo: bool | None, steps: int | None) -> dict:
    if turbo is False:
        return {"decode_mode": "normal", **({"decoder_steps": steps} if steps else {})}
    return {"decode_mode": "decoder-turbo", "decoder_steps": steps or TURBO_STEPS}


def generate_body(request: Generate) -> dict:
    refuse_unexposed(request)
    params = {
        "mode": "thinking" if request.thinking else "normal",
        **_decoder(request.turbo, request.decoder_steps),
        "cfg_scale": max(1.0, request.cfg_scale if request.cfg_scale is not None else OFFICIAL_CFG),
        "seed": request.seed,
        "image_h": request.height,
        "image_w": request.width,
    }
    if request.steps is not None:
        params["dllm_steps"] = request.steps
    if request.cfg_rescale is not None:
        params["cfg_rescale"] = request.cfg_rescale
    return {
        "messages": [{"role": "user", "content": request.prompt}],
        "modalities": ["text", "image"] if request.thinking else ["image"],
        "stream": False,
        "seed": request.seed,
        "image_generation": params,
    }


def edit_body(image: np.ndarray, request: Edit) -> dict:
    refuse_unexposed(request)
    if not request.instruction.strip():
        raise BadInput("Type an instruction that says how to edit the image.")
    params = {
        "cfg_text_scale": 4.0 if request.cfg_text_scale is None else request.cfg_text_scale,
        "cfg_image_scale": 0.0 if request.cfg_image_scale is None else request.cfg_image_scale,
        **_decoder(request.turbo, request.decoder_steps),
        "seed": request.seed,
    }
    if request.steps is not None:
        params["dllm_steps"] = request.steps
    if request.cfg_rescale is not None:
        params["cfg_rescale"] = request.cfg_rescale
    content = [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": request.instruction},
    ]
    return {
        "messages": [{"role": "user", "content": content}],
        "modalities": ["image"],
        "stream": False,
        "seed": request.seed,
        "image_generation": params,
    }


def understand_body(request: Understand) -> dict:
    refuse_unexposed(request)
    if request.steps not in (None, UNDERSTAND_STEPS):
        raise BadInput(
            f"A remote server answers at {UNDERSTAND_STEPS} steps per block; set the steps back "
            "or use the local engine."
        )
    turns = list(request.turns)
    if request.mask is not None and turns and turns[-1].images:
        last = turns[-1]  # ask about the region: its crop goes instead of the whole image
        region = masking.region_crop(last.images[-1], request.mask)
        turns[-1] = ChatTurn(last.role, last.text, (*last.images[:-1], region))
    body = {
        "messages": [_message(turn) for turn in turns],
        "modalities": ["text"],
        "stream": True,
        "seed": request.seed,
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    return body


def _message(turn: ChatTurn) -> dict:
    if not turn.images:
        return {"role": turn.role, "content": turn.text}
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in turn.images]
    return {"role": turn.role, "content": [*parts, {"type": "text", "text": turn.text}]}


def image_parameters(params: dict) -> dict[str, str]:
    """The server-side parameters of an image job under the local engine's metadata names."""
    found = {"decoder": "turbo" if params.get("decode_mode") == "decoder-turbo" else "normal"}
    names = {"dllm_steps": "steps", "mode": "mode"}
    for key, value in params.items():
        if key not in ("decode_mode", "seed", "image_h", "image_w"):
            found[names.get(key, key)] = str(value)
    return found


# ------------------------------------------------------------------ responses


def parse_image_response(data: dict) -> tuple[np.ndarray, str | None]:
    """(image [H, W, 3] uint8, the thinking text or None) from a chat completion: the image in
    `message.image` (native stack) or as an image_url part of `message.content` (t2i variant)."""
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise RemoteError("The server's answer held no choices; it may be another API.") from None
    text, encoded = message.get("content"), None
    if isinstance(message.get("image"), dict):
        encoded = message["image"].get("data")
    elif isinstance(text, list):
        for part in text:
            url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
            if url.startswith("data:image/"):
                encoded = url.partition(",")[2]
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict)) or None
    if not encoded:
        raise RemoteError("The server answered without an image; it may lack image generation.")
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as picture:
            image = np.asarray(picture.convert("RGB"))
    except (ValueError, OSError):
        raise RemoteError("The server sent an image that could not be read.") from None
    return image, (text or None)


def parse_sse_line(line: str) -> str | None:
    """The text a `data:` line of a chat stream adds; None at `[DONE]`; "" for anything else."""
    if not line.startswith("data:"):
        return ""
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise RemoteError("The server's text stream was garbled.") from None
    if isinstance(chunk, dict) and "error" in chunk:
        raise RemoteError(f"The server failed while answering: {_detail(payload.encode())}.")
    try:
        return chunk["choices"][0].get("delta", {}).get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


# ------------------------------------------------------------------ one server


class ServerClient:
    """One SGLang-Omni server (or sgl-router) at `url`: probe, chat, streamed chat."""

    def __init__(
        self,
        url: str,
        *,
        key: str = "",
        ca_file: str = "",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
    ):
        self.url = url.rstrip("/")
        self.read_timeout_s = read_timeout_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        verify = tls_context(ca_file) if self.url.startswith("https") else True
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, verify=verify, trust_env=False
        )
        self.capabilities = Capabilities(self.url)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        try:
            answer = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def probe(self) -> Capabilities:
        """`/health`, `/v1/models`, `/openapi.json` (notes §4.4); never raises."""
        found = Capabilities(self.url)
        try:
            health = await self._http.get("/health", timeout=10.0)
            found.reachable = True
            if health.status_code != 200:
                raise error_for_status(health.status_code, health.content, self.url)
            found.healthy = True
            models = await self._http.get("/v1/models", timeout=10.0)
            if models.status_code == 200:
                found.model = str((models.json().get("data") or [{}])[0].get("id", ""))
            elif models.status_code in (401, 403):
                raise error_for_status(models.status_code, models.content, self.url)
            schema = await self._http.get("/openapi.json", timeout=10.0)
            found.image_generation = schema.status_code == 200 and offers_images(schema.json())
        except httpx.HTTPError as error:
            found.healthy = False
            found.problem = str(error_for_transport(error, self.url, 10.0))
        except RemoteError as error:
            found.healthy = False
            found.problem = str(error)
        except ValueError:
            found.healthy = False
            found.problem = f"The server at {self.url} answered with something that is not JSON."
        self.capabilities = found
        return found

    async def chat(self, body: dict) -> dict:
        try:
            answer = await self._http.post(CHAT, json=body)
        except httpx.HTTPError as error:
            raise error_for_transport(error, self.url, self.read_timeout_s) from None
        if answer.status_code != 200:
            raise error_for_status(answer.status_code, answer.content, self.url)
        try:
            return answer.json()
        except ValueError:
            raise RemoteError(
                f"The server at {self.url} answered with something not JSON."
            ) from None

    async def stream_chat(self, body: dict) -> AsyncIterator[str]:
        """The answer's text pieces as they arrive (SSE). An error after the first piece is not
        `before_result`: a retry would repeat text the user has seen."""
        started = False
        try:
            async with self._http.stream("POST", CHAT, json=body) as answer:
                if answer.status_code != 200:
                    raise error_for_status(answer.status_code, await answer.aread(), self.url)
                async for line in answer.aiter_lines():
                    piece = parse_sse_line(line)
                    if piece is None:
                        return
                    if piece:
                        started = True
                        yield piece
        except httpx.HTTPError as error:
            failure = error_for_transport(error, self.url, self.read_timeout_s)
            failure.before_result = failure.before_result and not started
            raise failure from None


# ------------------------------------------------------------------ the backend


@dataclass
class RemoteOptions:
    urls: list[str]
    key: str = ""
    ca_file: str = ""
    per_server: int = 2  # requests in flight per server (notes §4.3: no batching gain beyond)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    probe_interval_s: float = 10.0  # a server out of rotation is probed again after this
    warnings: list[str] = field(default_factory=list)


class RemoteBackend:
    """The Backend (app/backend.py) whose jobs run on a ServerPool. Many jobs may run at once;
    each ends with exactly one Finished or Failed, and a cancelled one with the honest sentence."""

    pid = 0

    @property
    def capacity(self) -> int:
        """Jobs EngineClient may hand over at once: each server's share of requests in flight."""
        return max(1, len(self.pool.servers) * self.options.per_server)

    def __init__(self, options: RemoteOptions):
        from app.servers import ServerPool

        clients = [
            ServerClient(
                url,
                key=options.key,
                ca_file=options.ca_file,
                connect_timeout_s=options.connect_timeout_s,
                read_timeout_s=options.read_timeout_s,
            )
            for url in options.urls
        ]
        for warning in filter(None, map(plain_http_warning, options.urls)):
            log.warning("%s", warning)
            options.warnings.append(warning)
        self.options = options
        self.pool = ServerPool(clients, options.per_server, options.probe_interval_s)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task] = {}
        self._closed = asyncio.Event()
        self._watch: asyncio.Task | None = None  # health checks while jobs run
        self._events.put_nowait(Ready("", VERSION, self.pid))

    # ---------------------------------------------------------- the Backend interface

    def submit(self, request: Request) -> None:
        if isinstance(request, Cancel):
            return self.cancel(request.job_id)
        if isinstance(request, Status):
            return self.status(request.job_id)
        if isinstance(request, Shutdown):
            return self.shutdown()
        task = asyncio.ensure_future(self._run(request))
        self._tasks[request.job_id] = task
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_health())
        task.add_done_callback(lambda _t, job_id=request.job_id: self._tasks.pop(job_id, None))

    send = submit  # the Transport name, for EngineClient and tests that speak it

    def cancel(self, job_id: str) -> None:
        """Stop waiting and discard the result; the server cannot be told (notes §4.3)."""
        task = self._tasks.pop(job_id, None)
        if task is not None and not task.done():
            task.cancel()
            self._emit(Failed(job_id, CANCELLED, "cancelled"))

    def status(self, job_id: str) -> None:
        servers = self.pool.servers
        details = {s.url: s.describe() for s in servers}
        up = sum(s.in_rotation for s in servers)
        running = ",".join(self._tasks)
        report = StatusReport(job_id, f"remote: {up} of {len(servers)} servers", "", "", running)
        self._emit(StatusReport(**{**report.__dict__, "details": details}))

    async def _watch_health(self) -> None:
        """Every probe interval while jobs run: servers failing `/health` leave the rotation,
        and those out of it are asked again."""
        while self._tasks and not self._closed.is_set():
            await asyncio.sleep(self.options.probe_interval_s)
            await self.pool.check_health()

    async def receive(self) -> Event:
        event = await self._events.get()
        if event is None:
            raise EOFError("the remote backend was closed")
        return event

    def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()

    def close(self) -> None:
        self.shutdown()
        if not self._closed.is_set():
            self._closed.set()
            self._events.put_nowait(None)
            asyncio.ensure_future(self.pool.aclose())

    kill = close

    async def wait(self) -> int:
        await self._closed.wait()
        return 0

    # ---------------------------------------------------------- jobs

    def _emit(self, event: Event) -> None:
        self._events.put_nowait(event)

    async def _run(self, request: Request) -> None:
        job_id = request.job_id
        try:
            for event in await self._events_for(request):
                self._emit(event)
        except asyncio.CancelledError:
            raise
        except StudioError as error:
            self._emit(Failed(job_id, str(error), getattr(error, "code", "remote")))
            return
        except Exception:  # a bug here must still end the job
            log.exception("remote job %s failed", job_id)
            self._emit(
                Failed(job_id, "The remote job failed unexpectedly; see the log.", "internal")
            )
            return
        self._emit(Finished(job_id))

    async def _events_for(self, request: Request) -> list[Event]:
        match request:
            case LoadModel() | Unload():
                return await self._connect(request.job_id)
            case Generate():
                return [await self._image_job(request, "generate", generate_body(request))]
            case Edit():
                return [await self._edit(request)]
            case Understand():
                return await self._answer(request)
        raise BadInput(f"A remote server cannot run a {type(request).__name__} job.")

    async def _connect(self, job_id: str) -> list[Event]:
        found = await self.pool.probe_all()
        if not any(c.reachable and c.healthy for c in found):
            raise RemoteError(" ".join(c.problem for c in found))
        return []

    async def _image_job(self, request, task: str, body: dict) -> ImageResult:
        self._emit(Progress(request.job_id, "remote", 0, 1))
        started = time.monotonic()
        data, server = await self.pool.call(task, lambda client: client.chat(body))
        image, thinking = parse_image_response(data)
        self._emit(Progress(request.job_id, "remote", 1, 1))
        if thinking:
            self._emit(TextDelta(request.job_id, thinking))
        metadata = self._metadata(request, task, server)
        metadata.update(image_parameters(body["image_generation"]))
        metadata.update(width=str(image.shape[1]), height=str(image.shape[0]))
        metadata["elapsed_s"] = f"{time.monotonic() - started:.2f}"
        return ImageResult(request.job_id, image, metadata, thinking)

    async def _edit(self, request: Edit) -> ImageResult:
        image = np.ascontiguousarray(request.image[..., :3])
        mask = request.mask
        if mask is None or not masking.validate_mask(mask, image.shape).any():
            return await self._image_job(request, "edit", edit_body(image, request))
        plan = masking.plan_edit(image.shape[:2], mask)
        crop = masking.crop_to_bucket(image, plan)
        result = await self._image_job(request, "edit", edit_body(crop, request))
        merged = masking.composite(image, result.image, plan, mask)
        metadata = {**result.metadata, "masked": "remote edit of the crop, composited locally"}
        return ImageResult(request.job_id, merged, metadata, result.thinking)

    async def _answer(self, request: Understand) -> list[Event]:
        body = understand_body(request)
        pieces: list[str] = []

        async def stream(client: ServerClient) -> None:
            pieces.clear()
            async for piece in client.stream_chat(body):
                pieces.append(piece)
                self._emit(TextDelta(request.job_id, piece))

        await self.pool.call("ask", stream)
        return [TextResult(request.job_id, "".join(pieces))]

    def _metadata(self, request, task: str, server) -> dict[str, str]:
        """What made the result: never the key (the URL holds none: split_urls refuses one)."""
        text = getattr(request, "prompt", None) or getattr(request, "instruction", "")
        found = {
            "task": task,
            "prompt": text,
            "seed": str(request.seed),
            "backend": "sglang-omni",
            "server": server.url,
            "model": server.capabilities.model,
        }
        if request.steps is not None:
            found["steps"] = str(request.steps)
        return found

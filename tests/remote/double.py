"""A local HTTP test double of the SGLang-Omni server API subset LLaDA Studio uses.

It follows the native image stack as documented in ../shared/notes/sglang_omni_api.md, i.e.
sgl-project/sglang-omni `sglang_omni/serve/protocol.py@8eea11fc`, `serve/openai_api.py@022b6a3d`
and the LLaDA2.0-Uni cookbook `docs/cookbook/llada2_uni.md@068547ae` (stack #2257 -> #1499 ->
#1500 -> #1502, open PRs as of 2026-09-28): `POST /v1/chat/completions` (SSE text with
`data: [DONE]`; `image_generation` with the image in `message.image`; edits from a data-URL
image), `GET /health`, `GET /v1/models`, `GET /openapi.json`, FastAPI error bodies.
It is a double of a third-party API, not the model: images are made from the seed and the
source image, answers repeat what they were asked, so tests can check what crossed the wire.

Binds 127.0.0.1 only. Behaviours for failure tests: `busy_times` (that many chat requests get
503 "The request queue is full."), `hang_s`, `images=False` (a text-only server), `key` (401
without the Bearer key), `delay_s` (a fixed response time), `tls` (HTTPS with a given
certificate), `canned` (one PNG for every image, so a benchmark times the client, not the
double), `die()` (drops its connections and refuses new ones).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

MODEL = "llada2-uni"
GEN_SCHEMA = {"ImageGenerationParams": {"properties": {"mode": {}, "cfg_scale": {}}}}


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def seeded_image(seed: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def read_data_url(url: str) -> np.ndarray:
    head, _, data = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.asarray(image.convert("RGB"))


class DoubleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, **behaviour):
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = behaviour.get("images", True)
        self.key = behaviour.get("key", "")
        self.delay_s = behaviour.get("delay_s", 0.0)
        self.hang_s = behaviour.get("hang_s", 0.0)
        self.busy_times = behaviour.get("busy_times", 0)
        self.edit_scale = behaviour.get("edit_scale", 2)
        self.tls = behaviour.get("tls")  # (certificate file, key file): serve HTTPS
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.canned = behaviour.get("canned", "")  # a base64 PNG every t2i answer carries
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every chat body received
        self.headers_seen: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self.dead = False
        self.healthy = True  # False: /health answers 503
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> DoubleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone is expected here
            super().handle_error(request, client_address)

    def die(self) -> None:
        """In-flight requests are dropped without an answer; new connections are refused."""
        self.dead = True
        threading.Thread(target=self.stop, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    server: DoubleServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path == "/health":
            if not self.server.healthy:
                return self._json(503, {"status": "unhealthy", "running": False})
            return self._json(200, {"status": "healthy", "running": True})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if self.path == "/openapi.json":
            paths = {"/v1/chat/completions": {}, "/health": {}, "/v1/models": {}}
            schemas = {"ChatCompletionRequest": {"properties": {"messages": {}}}}
            if self.server.images:
                paths["/v1/images/generations"] = {}
                schemas.update(GEN_SCHEMA)
            return self._json(200, {"paths": paths, "components": {"schemas": schemas}})
        self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorised():
            return
        if self.path != "/v1/chat/completions":
            return self._json(404, {"detail": "Not Found"})
        server = self.server
        with server.lock:
            server.requests.append(body)
            if server.busy_times > 0:
                server.busy_times -= 1
                return self._json(503, {"detail": "The request queue is full."})
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)
        try:
            if not self._wait(server.hang_s or server.delay_s):
                return self._drop()
            self._chat(body)
        finally:
            with server.lock:
                server.in_flight -= 1

    # ---------------------------------------------------------------- the API

    def _chat(self, body: dict) -> None:
        gen = body.get("image_generation")
        if gen is None:
            return self._answer(body)
        if not self.server.images:
            return self._json(400, {"detail": "This pipeline does not support image output."})
        if body.get("stream"):
            return self._json(400, {"detail": "Image generation requires stream=false."})
        if gen.get("cfg_scale", 1.0) < 1.0:
            loc = ["body", "image_generation", "cfg_scale"]
            return self._json(422, {"detail": [{"loc": loc, "msg": "Input should be >= 1"}]})
        parts = body["messages"][-1]["content"]
        parts = parts if isinstance(parts, list) else []
        images = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        if images:
            if gen.get("mode") == "thinking":
                return self._json(400, {"detail": "Thinking mode does not support editing."})
            source = read_data_url(images[0])
            scale = self.server.edit_scale
            image = np.ascontiguousarray((255 - source).repeat(scale, 0).repeat(scale, 1))
        elif self.server.canned:
            image = None
        else:
            image = seeded_image(gen.get("seed") or 0, gen.get("image_w", 1024), gen["image_h"])
        data = self.server.canned if image is None else png_b64(image)
        message = {"role": "assistant", "image": {"data": data, "format": "png"}}
        if "text" in body.get("modalities", []):
            message["content"] = f"Thinking about {body['messages'][-1]['content']!r}."
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        self._json(200, self._completion([choice]))

    def _answer(self, body: dict) -> None:
        turns = body["messages"]
        last = turns[-1]["content"]
        question = last if isinstance(last, str) else last[-1]["text"]
        n_images = sum(
            isinstance(t["content"], list) and sum(p["type"] == "image_url" for p in t["content"])
            for t in turns
        )
        text = f"{len(turns)} turns, {n_images} images: you asked {question}"
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            return self._json(200, self._completion([{**choice, "finish_reason": "stop"}]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        for i, piece in enumerate(pieces):
            delta = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        end = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]}
        end["choices"][0]["finish_reason"] = "stop"
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True

    def _completion(self, choices: list) -> dict:
        return {
            "id": "chatcmpl-double",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }

    # ---------------------------------------------------------------- plumbing

    def _authorised(self) -> bool:
        self.server.headers_seen.append(dict(self.headers))
        if not self.server.key or self.headers.get("Authorization") == f"Bearer {self.server.key}":
            return True
        self._json(401, {"detail": "Unauthorized"})
        return False

    def _wait(self, seconds: float) -> bool:
        """Sleep as a busy server would; False when the server died meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.server.dead:
                return False
            time.sleep(min(0.01, end - time.monotonic()))
        return not self.server.dead

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve_in_process(argv: list[str]) -> None:
    """`python -m tests.remote.double [--noise SIDE] [--delay S]`: serve until stdin closes, so
    a benchmark can time its client alone; prints the URL first."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--noise", type=int, default=0, help="canned SIDExSIDE noise PNG")
    parser.add_argument("--delay", type=float, default=0.0)
    options = parser.parse_args(argv)
    canned = ""
    if options.noise:
        rng = np.random.default_rng(0)
        canned = png_b64(rng.integers(0, 256, (options.noise, options.noise, 3), dtype=np.uint8))
    with DoubleServer(canned=canned, delay_s=options.delay, edit_scale=1) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    serve_in_process(sys.argv[1:])

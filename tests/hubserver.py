"""A test double of the Hugging Face hub: a local HTTP server that serves one model folder in the
hub's HTTP layout, for download tests through HF_ENDPOINT (never a real hub, never a real model).

The layout follows what huggingface_hub 2.4 reads (file_download.py, hf_api.py, utils/_http.py):
- `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: JSON with `id`, `sha` (the commit) and
  `siblings` (`rfilename`; with blobs also `size`, `blobId` (the git blob sha1) and, for LFS
  files, `lfs: {size, sha256, pointerSize}`).
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: a small file answers 200 with `ETag` (its blob id) and
  `X-Repo-Commit`; an LFS file answers 302 to `/_cdn/{sha256}` with `X-Linked-Etag` (its
  sha256), `X-Linked-Size` and `X-Repo-Commit`, as the hub redirects to its CDN.
- `/_cdn/{sha256}` honours `Range: bytes=N-` with 206 and `Content-Range`, for resumed downloads.
- Errors carry the hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound,
  GatedRepo) so huggingface_hub raises its own exception types.

Tests read `requests` and `bytes_sent` to see what a client fetched, set `cut_after` to drop a
connection midway through a file, and `token` to make the repo gated.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".pt", ".bin")  # what the official repo's .gitattributes tracks
CHUNK = 64 * 1024


@dataclass(frozen=True)
class HubFile:
    path: str  # relative to the repo root, with forward slashes
    data: bytes
    blob_id: str  # git's sha1 of "blob {size}\0" + data
    sha256: str
    lfs: bool


@dataclass
class Served:
    """What one request asked for, as the test double saw it."""

    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubServer:
    """Serves `folder` as `repo_id` at commit `commit` on 127.0.0.1; use as a context manager."""

    folder: Path
    repo_id: str = "inclusionAI/LLaDA2.0-Uni"
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    token: str | None = None  # when set, the repo is gated: requests need this bearer token
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> drop the link after N bytes
    chunk_delay_s: float = 0.0  # a pause after each 64 kB of a file: a slow link, to cancel during
    requests: list[Served] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)  # path -> file bytes sent in total

    def __post_init__(self):
        self.files = {f.path: f for f in read_files(Path(self.folder))}
        self.by_sha256 = {f.sha256: f for f in self.files.values() if f.lfs}
        self._lock = threading.Lock()
        self._http = QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def file_requests(self) -> list[Served]:
        """Requests for file bytes (resolve or CDN GETs), not for metadata."""
        return [r for r in self.requests if r.method == "GET" and "/api/" not in r.path]

    def record(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + n

    def revision_json(self, blobs: bool) -> dict:
        siblings = []
        for f in sorted(self.files.values(), key=lambda f: f.path):
            entry: dict = {"rfilename": f.path}
            if blobs:
                entry |= {"size": len(f.data), "blobId": f.blob_id}
                if f.lfs:
                    entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        return {"id": self.repo_id, "sha": self.commit, "siblings": siblings}


class QuietServer(ThreadingHTTPServer):
    """Says nothing when a client hangs up midway, as a cancelled download does."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def read_files(folder: Path) -> list[HubFile]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = path.suffix in LFS_SUFFIXES
        rel = path.relative_to(folder).as_posix()
        files.append(HubFile(rel, data, blob_id, hashlib.sha256(data).hexdigest(), lfs))
    return files


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(HubHandler):
        server_hub = hub

    return Handler


class HubHandler(BaseHTTPRequestHandler):
    """Routes one request: the revision API, resolve URLs, and the CDN."""

    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def _route(self, send_body: bool) -> None:
        hub = self.server_hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        hub.record(
            Served(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._error(401, "GatedRepo", "Access to this model is restricted.")
        api = f"/api/models/{hub.repo_id}/revision/"
        resolve = f"/{hub.repo_id}/resolve/"
        if path.startswith(api):
            return self._revision(path[len(api) :], "blobs=true" in url.query, send_body)
        if path.startswith(resolve):
            revision, _, name = path[len(resolve) :].partition("/")
            return self._resolve(revision, name, send_body)
        if path.startswith("/_cdn/") and path[len("/_cdn/") :] in hub.by_sha256:
            return self._send_file(hub.by_sha256[path[len("/_cdn/") :]], send_body)
        if path.startswith(("/api/models/", "/")) and hub.repo_id not in path:
            return self._error(404, "RepoNotFound", "Repository not found")
        return self._error(404, "EntryNotFound", "Entry not found")

    def _known_revision(self, revision: str) -> bool:
        return revision in ("main", self.server_hub.commit)

    def _revision(self, revision: str, blobs: bool, send_body: bool) -> None:
        if not self._known_revision(revision):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        body = json.dumps(self.server_hub.revision_json(blobs)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _resolve(self, revision: str, name: str, send_body: bool) -> None:
        hub = self.server_hub
        if not self._known_revision(revision):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = hub.files.get(name)
        if file is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on main")
        if not file.lfs:
            return self._send_file(file, send_body, etag=file.blob_id)
        self.send_response(302)
        self.send_header("Location", f"/_cdn/{file.sha256}")
        self.send_header("X-Repo-Commit", hub.commit)
        self.send_header("X-Linked-Etag", f'"{file.sha256}"')
        self.send_header("X-Linked-Size", str(len(file.data)))
        self.send_header("ETag", f'"{file.blob_id}"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_file(self, file: HubFile, send_body: bool, etag: str | None = None) -> None:
        start = _range_start(self.headers.get("Range"))
        if start is not None and start >= len(file.data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(file.data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = file.data[start or 0 :]
        size = len(file.data)
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{etag or file.sha256}"')
        self.send_header("X-Repo-Commit", self.server_hub.commit)
        self.end_headers()
        if send_body:
            self._write_body(file.path, body)

    def _write_body(self, path: str, body: bytes) -> None:
        hub = self.server_hub
        limit = hub.cut_after.pop(path, None)  # each cut happens once
        sent = 0
        for offset in range(0, len(body), CHUNK):
            chunk = body[offset : offset + CHUNK]
            if limit is not None and sent + len(chunk) > limit:
                chunk = chunk[: limit - sent]
                self.wfile.write(chunk)
                hub.count(path, len(chunk))
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees a body cut short
                return
            self.wfile.write(chunk)
            hub.count(path, len(chunk))
            sent += len(chunk)
            if hub.chunk_delay_s:
                time.sleep(hub.chunk_delay_s)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _range_start(header: str | None) -> int | None:
    """N from `bytes=N-` (the only form huggingface_hub sends when it resumes)."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, _ = header[len("bytes=") :].partition("-")
    return int(first) if first.isdigit() else None

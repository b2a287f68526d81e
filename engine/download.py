"""Downloads LLaDA2.0-Uni from the Hugging Face hub, or a mirror at HF_ENDPOINT, into a folder.

Partial files resume with HTTP ranges, every file is checked against the hub's checksum (sha256
for LFS files, the git blob id for small ones), free disk space is checked before the first byte,
and with HF_HUB_OFFLINE=1 (or `offline=True`) the hub is never contacted. Partial files and the
download's record live in DIR/.llada-download/; config.json arrives last, so a folder whose
download stopped midway never passes as a model. Importing this module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import Cancelled, StudioError

REPOS = {"bf16": "inclusionAI/LLaDA2.0-Uni", "fp8": "inclusionAI/LLaDA2.0-Uni-FP8"}
DEFAULT_ENDPOINT = "https://huggingface.co"
STATE_FOLDER = ".llada-download"  # inside the model folder: record.json and partial/
RESERVE_BYTES = 200 * 10**6  # left free on the disk after the download, for logs and settings
LAST_FILE = "config.json"  # its arrival marks the folder as a model, so it comes last
PROGRESS_EVERY_S = 0.1
RATE_WINDOW_S = 10.0
WORKERS = 4  # files fetched at once
CHUNK_BYTES = 2**20  # read from the network between two progress checks


class DownloadError(StudioError):
    """The download cannot go on: no network, no access, no disk space, a corrupt transfer."""

    code = "download"


class Unreachable(Exception):
    """The hub did not answer at all (no network, a wrong HF_ENDPOINT, offline mode)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repo root, forward slashes
    size: int
    sha256: str | None = None  # LFS files: the hub's sha256 of the content
    blob_id: str | None = None  # small files: the git blob sha1


@dataclass
class Record:
    """What DIR/.llada-download/record.json keeps: the revision's file list, and which files
    matched their checksum at which (size, mtime), so a rerun need not hash them again."""

    repo_id: str
    revision: str  # the commit hash
    files: list[RemoteFile]
    verified: dict[str, list[int]] = field(default_factory=dict)  # path -> [size, mtime_ns]

    @classmethod
    def load(cls, folder: Path) -> Record | None:
        try:
            raw = json.loads((folder / STATE_FOLDER / "record.json").read_text())
            files = [RemoteFile(**f) for f in raw["files"]]
            return cls(raw["repo_id"], raw["revision"], files, dict(raw.get("verified", {})))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, folder: Path) -> None:
        path = folder / STATE_FOLDER / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    def is_verified(self, folder: Path, file: RemoteFile) -> bool:
        stamp = _stamp(folder / file.path)
        return stamp is not None and self.verified.get(file.path) == stamp


@dataclass(frozen=True)
class Progress:
    stage: str  # "checking" (hashing files already here), "downloading" or "verifying"
    done: int  # bytes
    total: int  # bytes
    rate: float | None  # bytes per second over the last few seconds, None until known
    seconds_left: float | None
    file: str  # the file being worked on

    def line(self) -> str:
        """Such as `downloading 12.3 GB of 47.0 GB, 85.1 MB/s, 6 min 48 s left`."""
        text = f"{self.stage} {_bytes(self.done)} of {_bytes(self.total)}"
        if self.rate:
            text += f", {_bytes(int(self.rate))}/s"
        if self.seconds_left is not None:
            text += f", {_duration(self.seconds_left)} left"
        return text


ProgressCallback = Callable[[Progress], None]


@dataclass
class Meter:
    """Turns byte counts into throttled Progress reports with a rate and time left. Several
    transfers share one Meter from their threads; `stop()` makes each of them end at its next
    chunk, as `should_stop` does."""

    total: int
    on_progress: ProgressCallback | None
    should_stop: Callable[[], bool] | None
    stage: str = "downloading"
    done: int = 0
    file: str = ""  # the file of the latest bytes
    fetched: int = 0  # bytes that came over the network in this run, for the rate
    samples: deque = field(default_factory=deque)  # (time, fetched)
    last_report: float = 0.0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int, file: str = "") -> None:
        if self.stopped or (self.should_stop is not None and self.should_stop()):
            self.stopped = True
            raise Cancelled("The download was cancelled; run it again to resume.")
        with self.lock:
            self.done += n
            self.file = file or self.file
            if self.stage == "downloading":
                self.fetched += n
        self.report()

    def take_back(self, n: int) -> None:
        """Bytes counted as done that are gone again (a part file started over)."""
        with self.lock:
            self.done -= n

    def stop(self) -> None:
        self.stopped = True

    def report(self, force: bool = False, stage: str = "", file: str = "") -> None:
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last_report < PROGRESS_EVERY_S:
                return
            self.last_report = now
            self.samples.append((now, self.fetched))
            while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
                self.samples.popleft()
            rate = left = None
            (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
            if t1 - t0 >= 0.5 and b1 > b0:
                rate = (b1 - b0) / (t1 - t0)
                left = max(self.total - self.done, 0) / rate
            progress = Progress(
                stage or self.stage, self.done, self.total, rate, left, file or self.file
            )
        if self.on_progress is not None:
            self.on_progress(progress)


class MeteredFile:
    """A binary file that reports each write to a Meter (which may raise Cancelled)."""

    def __init__(self, raw, meter: Meter, name: str):
        self.raw, self.meter, self.name = raw, meter, name

    def write(self, data: bytes) -> int:
        written = self.raw.write(data)
        self.meter.add(len(data), self.name)
        return written

    def seek(self, *args) -> int:
        return self.raw.seek(*args)

    def tell(self) -> int:
        return self.raw.tell()

    def truncate(self, *args) -> int:  # a server that ignored the range: start the file over
        before = self.raw.tell()
        size = self.raw.truncate(*args)
        self.meter.take_back(max(before - size, 0))
        return size


class NoBar:
    """Stands in for huggingface_hub's own progress bar, which would draw over ours."""

    def __init__(self, **options):
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


# Where things go


def default_folder(variant: str = "bf16") -> Path:
    from platformdirs import user_data_path

    return user_data_path("LLaDA Studio", appauthor=False) / "models" / REPOS[variant].split("/")[1]


def endpoint() -> str:
    """The hub's address: HF_ENDPOINT (a mirror) when set, read at call time."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# The download


@dataclass
class Download:
    """One run of `download`: plan from the hub's file list, check disk, fetch, verify, validate."""

    folder: Path
    repo_id: str = REPOS["bf16"]
    revision: str = "main"
    token: str | bool | None = None  # None: HF_TOKEN or the stored `hf auth login` token
    offline: bool | None = None  # None: HF_HUB_OFFLINE
    verify_all: bool = False  # hash every file, even those verified before and unchanged since
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None
    workers: int = WORKERS
    notes: list[str] = field(default_factory=list)  # what the user should know afterwards

    def run(self) -> Path:
        """Download what is missing and return the folder, validated as LLaDA2.0-Uni."""
        from filelock import FileLock, Timeout

        self.folder = Path(self.folder).expanduser()
        try:
            (self.folder / STATE_FOLDER).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DownloadError(
                f"Cannot write to {self.folder} ({_reason(error)}); choose another folder."
            ) from None
        lock = FileLock(self.folder / STATE_FOLDER / "lock")
        try:
            with lock.acquire(timeout=0):  # one download per folder: their parts would mix
                return self._run()
        except Timeout:
            raise DownloadError(
                f"Another download into {self.folder} is running; let it finish or stop it first."
            ) from None

    def _run(self) -> Path:
        from huggingface_hub import constants

        # huggingface_hub reads 10 MB before each write; 1 MB keeps progress and cancel prompt
        # on a slow link (this process is the download's own: the app runs it as a child).
        constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_BYTES)
        offline = offline_mode() if self.offline is None else self.offline
        record = Record.load(self.folder)
        if offline:
            return self._finish_offline(record)
        try:
            listed = self._listing()
        except Unreachable as error:  # what is here may still be whole
            if record is None and not (self.folder / LAST_FILE).exists():
                raise DownloadError(
                    f"Cannot reach {endpoint()} ({_reason(error)}); check the connection, or "
                    "HF_ENDPOINT for a mirror, and run the download again: it resumes."
                ) from None
            self.notes.append(f"Cannot reach {endpoint()}; checked the files already here.")
            return self._finish_offline(record)
        record = _carry_over(record, listed)
        todo = self._check_present(record)
        self._check_disk(todo)
        record.save(self.folder)
        self._fetch_all(record, todo)
        return self._validate()

    def _listing(self) -> Record:
        """The revision's commit and files with sizes and checksums, from the hub's API."""
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=endpoint(), token=self.token, library_name="llada-studio")
        try:
            info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        except GatedRepoError:
            raise DownloadError(
                f"{self.repo_id} needs you to accept its terms on the hub and a token: run "
                "`hf auth login` or set HF_TOKEN, then run the download again."
            ) from None
        except RepositoryNotFoundError:
            raise DownloadError(
                f"There is no model {self.repo_id} at {endpoint()}, or it is private and "
                "needs a token (HF_TOKEN)."
            ) from None
        except RevisionNotFoundError:
            raise DownloadError(f"{self.repo_id} has no revision {self.revision}.") from None
        except (httpx2.TransportError, OfflineModeIsEnabled) as error:
            raise Unreachable(_reason(error)) from error
        except HfHubHTTPError as error:
            raise DownloadError(
                f"{endpoint()} refused the file list ({_reason(error)}); try again later."
            ) from None
        files = [
            RemoteFile(
                s.rfilename,
                s.lfs.size if s.lfs else (s.size or 0),
                s.lfs.sha256 if s.lfs else None,
                None if s.lfs else s.blob_id,
            )
            for s in info.siblings or []
        ]
        if not files or not info.sha:
            raise DownloadError(f"{endpoint()} lists no files for {self.repo_id}.")
        files.sort(key=lambda f: (f.path == LAST_FILE, f.path))
        return Record(self.repo_id, info.sha, files)

    def _check_present(self, record: Record) -> list[RemoteFile]:
        """The files still to fetch; a present file whose checksum fails is deleted here."""
        suspects = [
            f
            for f in record.files
            if (self.folder / f.path).is_file()
            and (self.verify_all or not record.is_verified(self.folder, f))
        ]
        meter = self._meter(sum(f.size for f in suspects), "checking")
        for file in suspects:
            target = self.folder / file.path
            if target.stat().st_size == file.size and _matches(target, file, meter):
                record.verified[file.path] = _stamp(target)
            else:
                target.unlink()
                record.verified.pop(file.path, None)
                self.notes.append(f"{file.path} did not match its checksum; it was deleted.")
        return [f for f in record.files if not record.is_verified(self.folder, f)]

    def _check_disk(self, todo: list[RemoteFile]) -> None:
        need = sum(f.size - _partial_size(self._partial(f), f.size) for f in todo)
        free = shutil.disk_usage(self.folder).free
        if need + RESERVE_BYTES > free:
            raise DownloadError(
                f"The download needs {_bytes(need + RESERVE_BYTES)} free on the disk of "
                f"{self.folder}, which has {_bytes(free)}; free some space or choose another "
                "folder."
            )

    def _fetch_all(self, record: Record, todo: list[RemoteFile]) -> None:
        """Several files at once (the hub's CDN serves each stream at a limited rate), and
        config.json alone at the end, so a stopped download never looks like a model."""
        total = sum(f.size for f in record.files)
        meter = self._meter(total, "downloading")
        meter.done = total - sum(f.size for f in todo)
        lock = threading.Lock()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [
                pool.submit(self._fetch, record, f, meter, lock)
                for f in todo
                if f.path != LAST_FILE
            ]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:  # Cancelled, Ctrl+C or a failure: the others stop too
                meter.stop()
                pool.shutdown(cancel_futures=True)
                raise
        for file in todo:
            if file.path == LAST_FILE:
                self._fetch(record, file, meter, lock)
        meter.report(force=True)

    def _fetch(self, record: Record, file: RemoteFile, meter: Meter, lock: threading.Lock):
        """One file into partial/, resumed where a part is there; checked, then moved in place."""
        part = self._partial(file)
        for attempt in (1, 2):
            self._transfer(record, file, part, meter)
            meter.report(force=True, stage="verifying", file=file.path)  # seconds for 5 GB
            if _matches(part, file, None):
                break
            meter.take_back(file.size)
            part.unlink()
            if attempt == 2:
                raise DownloadError(
                    f"{file.path} arrived corrupt twice (its checksum does not match the "
                    "hub's); check the connection or the mirror, then run the download again."
                )
        target = self.folder / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        with lock:
            record.verified[file.path] = _stamp(target)
            record.save(self.folder)

    def _transfer(self, record: Record, file: RemoteFile, part: Path, meter: Meter) -> None:
        import httpx2
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        part.parent.mkdir(parents=True, exist_ok=True)
        have = _partial_size(part, file.size)
        if have == 0:
            part.unlink(missing_ok=True)
        with meter.lock:
            meter.done += have
        url = hf_hub_url(self.repo_id, file.path, revision=record.revision, endpoint=endpoint())
        headers = build_hf_headers(token=self.token, library_name="llada-studio")
        try:
            with part.open("ab") as raw:
                http_get(
                    url,
                    MeteredFile(raw, meter, file.path),  # type: ignore[arg-type]
                    resume_size=have,
                    headers=headers,
                    expected_size=file.size,
                    displayed_filename=file.path,
                    tqdm_class=NoBar,  # type: ignore[arg-type]
                )
        except (OSError, httpx2.HTTPError) as error:  # after http_get's own retries
            raise DownloadError(
                f"Downloading {file.path} stopped ({_reason(error)}); run the download "
                "again: it resumes where it stopped."
            ) from None

    def _finish_offline(self, record: Record | None) -> Path:
        """Offline: check the files against the record (no network at all), then validate."""
        if record is not None:
            todo = self._check_present(record)
            record.save(self.folder)
            if todo:
                raise DownloadError(
                    f"Offline, and {self.folder} still lacks {todo[0].path}"
                    f"{_and_more(len(todo) - 1)}; connect and run the download again to finish."
                )
        return self._validate()

    def _validate(self) -> Path:
        from engine.checkpoint import validate_model_folder  # knows FP8 experts' block scales

        return validate_model_folder(self.folder).root

    def _partial(self, file: RemoteFile) -> Path:
        return self.folder / STATE_FOLDER / "partial" / (file.path + ".part")

    def _meter(self, total: int, stage: str) -> Meter:
        return Meter(total, self.on_progress, self.should_stop, stage=stage)


def download(folder: Path | str, *, variant: str = "bf16", **options) -> Path:
    """Download `variant` ("bf16" or "fp8") into `folder`; see Download for the options."""
    if variant not in REPOS:
        raise DownloadError(f"There is no variant {variant!r}; choose bf16 or fp8.")
    options.setdefault("repo_id", REPOS[variant])
    return Download(Path(folder), **options).run()


def next_step(folder: Path) -> str:
    """What to do after the download: quantize for a smaller card, or open the app."""
    int4 = folder.with_name(folder.name + "-int4")
    return (
        f"The model is ready in {folder}. On a card with less than 48 GB, quantize it once: "
        f'python main.py quantize --model "{folder}" --bits 4 --out "{int4}" '
        f'(python main.py estimate --model "{folder}" shows what fits your card).'
    )


# Helpers


def _carry_over(old: Record | None, new: Record) -> Record:
    """The new listing, keeping verified stamps of files whose checksum did not change."""
    if old is None or old.repo_id != new.repo_id:
        return new
    before = {f.path: f for f in old.files}
    for file in new.files:
        if file.path in old.verified and before.get(file.path) == file:
            new.verified[file.path] = old.verified[file.path]
    return new


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _partial_size(part: Path, size: int) -> int:
    """Bytes a partial file holds, or 0 when there is none or it is longer than the file."""
    try:
        have = part.stat().st_size
    except OSError:
        return 0
    return have if have <= size else 0


def _matches(path: Path, file: RemoteFile, meter: Meter | None) -> bool:
    """Whether the content has the hub's checksum: sha256 for LFS files, else the git blob id."""
    if file.sha256:
        digest, want = hashlib.sha256(), file.sha256
    elif file.blob_id:
        digest, want = hashlib.sha1(b"blob %d\0" % path.stat().st_size), file.blob_id
    else:
        return True  # the hub gave no checksum: the size check has to do
    with path.open("rb") as stream:
        while chunk := stream.read(8 * 2**20):
            digest.update(chunk)
            if meter is not None:
                meter.add(len(chunk), file.path)
    return digest.hexdigest() == want


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text and text[0] else type(error).__name__


def _and_more(n: int) -> str:
    return "" if n == 0 else f" and {n} more file" + ("s" if n > 1 else "")


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


# The command: python main.py download


def add_command(sub) -> None:
    """The `download` subcommand on the CLI's subparsers."""
    from engine import args

    args.register(args.Rule("variant", "choice", "The model variant", choices=tuple(REPOS)))
    parser = sub.add_parser(
        "download", help="download the model (resumes, checks every file, works offline)"
    )
    args.add_flag(parser, "variant", default="bf16", help="bf16 (about 60 GB) or fp8 (about 33 GB)")
    parser.add_argument("--dir", type=Path, help="where to put it (default: the app's data folder)")
    parser.add_argument("--revision", default="main", help="a branch, tag or commit of the repo")
    parser.add_argument("--verify", action="store_true", help="hash every file again")
    parser.add_argument(
        "--offline", action="store_true", help="never contact the hub; check the files here"
    )
    parser.add_argument(
        "--json", action="store_true", help="progress as JSON lines on stdout, for the app"
    )
    parser.set_defaults(handler=run_command)


def run_command(options, out=None, err=None) -> int:
    """Run `download` from parsed options: 0 done, 1 failed, 130 cancelled (Ctrl+C)."""
    import sys

    out, err = out or sys.stdout, err or sys.stderr
    folder = options.dir or default_folder(options.variant)
    show = _json_progress(out) if options.json else _bar_progress(err)
    task = Download(
        Path(folder),
        repo_id=REPOS[options.variant],
        revision=options.revision,
        offline=True if options.offline else None,
        verify_all=options.verify,
        on_progress=show,
    )
    err.write(f"{task.repo_id} -> {folder}\n")
    try:
        root = task.run()
    except (Cancelled, KeyboardInterrupt):
        err.write("\ncancelled; run the same command again to resume\n")
        return 130
    except StudioError as error:  # DownloadError, or BadCheckpoint from the final validation
        err.write(f"\nerror: {error}\n")
        return 1
    err.write("\n")
    for note in task.notes:
        err.write(f"note: {note}\n")
    if options.json:
        out.write(json.dumps({"folder": str(root), "next": next_step(root)}) + "\n")
    else:
        out.write(next_step(root) + "\n")
    return 0


def _bar_progress(stream) -> ProgressCallback:
    def show(progress: Progress) -> None:
        name = progress.file if len(progress.file) <= 40 else "…" + progress.file[-39:]
        stream.write(f"\r{progress.line():<70} {name:<40}")
        stream.flush()

    return show


def _json_progress(stream) -> ProgressCallback:
    def show(progress: Progress) -> None:
        stream.write(json.dumps(asdict(progress)) + "\n")
        stream.flush()

    return show

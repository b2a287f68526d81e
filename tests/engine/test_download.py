"""Model download against tests/hubserver.py (a local test double of the hub) through HF_ENDPOINT:
resume, checksums, disk check, offline, cancel, gated access, progress."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from engine import download as dl
from engine.checkpoint import validate_model_folder
from engine.errors import BadCheckpoint, Cancelled, StudioError
from tests.hubserver import HubServer

SHARD = "model-00001-of-00003.safetensors"


@pytest.fixture
def hub(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token of this machine
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # Small reads, so a cancel or a dropped link can fall in the middle of a file.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    with HubServer(Path(tiny_checkpoint)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def same_files(a: Path, b: Path) -> bool:
    def digest(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file() and dl.STATE_FOLDER not in p.parts
        }

    return digest(a) == digest(b)


class StopAfter:
    """should_stop that says yes on its n-th call (one call per chunk written or hashed)."""

    def __init__(self, n: int):
        self.n, self.calls, self.lock = n, 0, threading.Lock()

    def __call__(self) -> bool:
        with self.lock:  # several files download at once, each in its own thread
            self.calls += 1
            return self.calls >= self.n


def test_download_fetches_everything_verified_and_valid(hub, tiny_checkpoint, tmp_path):
    reports = []
    folder = dl.download(tmp_path / "model", on_progress=reports.append)
    assert same_files(folder, Path(tiny_checkpoint))
    validate_model_folder(folder)
    total = sum(len(f.data) for f in hub.files.values())
    assert reports[-1].done == reports[-1].total == total
    assert {r.stage for r in reports} == {"downloading", "verifying"}
    verifying = [r for r in reports if r.stage == "verifying"]
    assert {r.file for r in verifying} == set(hub.files)  # each file is checked as it arrives
    assert "quantize" in dl.next_step(folder)


def test_cancelled_download_resumes_without_fetching_again(hub, tmp_path):
    target = tmp_path / "model"
    with pytest.raises(Cancelled):
        dl.download(target, should_stop=StopAfter(120))  # about half of the 13 MB
    parts = target / dl.STATE_FOLDER / "partial"
    have = {
        p.relative_to(parts).as_posix().removesuffix(".part"): p.stat().st_size
        for p in parts.rglob("*.part")
    }
    assert any(have.values())  # stopped in the middle of a file (several run at once)
    complete = [f for f in hub.files if (target / f).is_file()]
    assert complete
    sent_before = dict(hub.bytes_sent)
    hub.requests.clear()

    dl.download(target)
    sent = {path: hub.bytes_sent.get(path, 0) - sent_before.get(path, 0) for path in hub.files}
    assert all(sent[path] == 0 for path in complete)  # finished files are not fetched again
    ranges = {r.range for r in hub.file_requests()}
    for name, size in have.items():
        assert sent[name] == len(hub.files[name].data) - size  # only the rest of a partial one
        full = len(hub.files[name].data)  # written whole, stopped before its checksum
        assert size in (0, full) or f"bytes={size}-" in ranges
    validate_model_folder(target)


def test_dropped_connection_resumes_with_a_range_request(hub, tiny_checkpoint, tmp_path):
    hub.cut_after[SHARD] = 1_000_000
    folder = dl.download(tmp_path / "model")
    ranges = {r.range for r in hub.file_requests() if r.range}  # the resolve URL, then the CDN
    assert len(ranges) == 1
    start = int(ranges.pop().removeprefix("bytes=").rstrip("-"))
    # It asks again only for what it had not written yet (the client reads in 64 kB pieces).
    assert 1_000_000 - 64 * 1024 < start <= 1_000_000
    assert hub.bytes_sent[SHARD] == len(hub.files[SHARD].data) + 1_000_000 - start
    assert same_files(folder, Path(tiny_checkpoint))


def test_corrupt_file_is_detected_and_fetched_again(hub, tiny_checkpoint, tmp_path):
    folder = dl.download(tmp_path / "model")
    shard = folder / SHARD
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: only a checksum sees it
    shard.write_bytes(bytes(data))
    sent_before = dict(hub.bytes_sent)

    notes = []
    dl.Download(folder, on_progress=None, notes=notes).run()
    assert hub.bytes_sent[SHARD] - sent_before[SHARD] == len(data)
    others = [p for p in hub.files if p != SHARD]
    assert all(hub.bytes_sent[p] == sent_before[p] for p in others)
    assert any(SHARD in note and "checksum" in note for note in notes)
    assert same_files(folder, Path(tiny_checkpoint))


def test_verify_rehashes_a_file_changed_behind_its_timestamp(hub, tiny_checkpoint, tmp_path):
    folder = dl.download(tmp_path / "model")
    shard = folder / SHARD
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # in tensor data, where only a checksum sees it
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot keeps the timestamp

    dl.download(folder)  # trusts the recorded size and time
    assert shard.read_bytes() == bytes(data)
    dl.download(folder, verify_all=True)
    assert same_files(folder, Path(tiny_checkpoint))


def test_corrupt_transfer_is_refused(hub, tmp_path):
    file = hub.files[SHARD]
    bad = dataclasses.replace(file, data=bytes(len(file.data)))  # right size, wrong bytes
    hub.files[SHARD] = hub.by_sha256[file.sha256] = bad
    target = tmp_path / "model"
    with pytest.raises(dl.DownloadError, match="arrived corrupt twice"):
        dl.download(target)
    assert not (target / SHARD).exists()
    assert hub.bytes_sent[SHARD] == 2 * len(file.data)  # fetched once more, then refused


def test_too_little_disk_is_refused_before_the_first_byte(hub, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        dl.shutil, "disk_usage", lambda path: usage._replace(free=dl.RESERVE_BYTES + 1_000_000)
    )
    target = tmp_path / "new" / "model"
    with pytest.raises(dl.DownloadError, match="free some space") as error:
        dl.download(target)
    need = sum(len(f.data) for f in hub.files.values()) + dl.RESERVE_BYTES
    assert f"needs {dl._bytes(need)} free" in str(error.value)
    assert hub.file_requests() == []
    assert not target.exists() or not any(target.rglob("*.safetensors"))


def test_offline_with_files_present_never_contacts_the_hub(hub, tmp_path, monkeypatch):
    folder = dl.download(tmp_path / "model")
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert dl.download(folder) == folder
    assert hub.requests == []


def test_unreachable_hub_with_files_present_still_works(hub, tmp_path, monkeypatch):
    folder = dl.download(tmp_path / "model")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    notes = []
    assert dl.Download(folder, notes=notes).run() == folder
    assert any("Cannot reach" in note for note in notes)


def test_offline_without_the_files_says_what_is_missing(hub, tmp_path, monkeypatch):
    target = tmp_path / "model"
    with pytest.raises(Cancelled):
        dl.download(target, should_stop=StopAfter(40))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    with pytest.raises(dl.DownloadError, match="Offline, and .* still lacks"):
        dl.download(target)
    assert hub.requests == []


def test_unreachable_hub_without_files_is_one_sentence(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(dl.DownloadError, match="Cannot reach http://127.0.0.1:9"):
        dl.download(tmp_path / "model")


def test_cancel_never_leaves_a_folder_that_validates(hub, tmp_path):
    full = StopAfter(10**9)
    dl.download(tmp_path / "counted", should_stop=full)
    for n in (1, full.calls // 2, full.calls):  # the last call is config.json's only chunk
        target = tmp_path / f"cancel-{n}"
        with pytest.raises(Cancelled):
            dl.download(target, should_stop=StopAfter(n))
        with pytest.raises(BadCheckpoint):
            validate_model_folder(target)


def test_gated_repo_needs_the_token_and_never_shows_it(hub, tmp_path, monkeypatch):
    hub.token = "hf_secret_test_token"
    with pytest.raises(dl.DownloadError, match="HF_TOKEN") as error:
        dl.download(tmp_path / "model")
    assert "hf_secret" not in str(error.value)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    validate_model_folder(dl.download(tmp_path / "model"))


def test_unknown_repo_and_revision_are_one_sentence(hub, tmp_path):
    with pytest.raises(dl.DownloadError, match="There is no model someone/else"):
        dl.download(tmp_path / "a", repo_id="someone/else")
    with pytest.raises(dl.DownloadError, match="has no revision v9"):
        dl.download(tmp_path / "b", revision="v9")
    with pytest.raises(StudioError, match="choose bf16 or fp8"):
        dl.download(tmp_path / "c", variant="int3")


def test_progress_line_gives_bytes_rate_and_time_left():
    line = dl.Progress("downloading", 12_300_000_000, 47_000_000_000, 85_100_000, 408, "x").line()
    assert line == "downloading 12.3 GB of 47.0 GB, 85.1 MB/s, 6 min 48 s left"
    assert dl.Progress("checking", 0, 10, None, None, "x").line() == "checking 0 bytes of 10 bytes"


def test_meter_estimates_rate_and_time_left(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(dl.time, "monotonic", lambda: float(next(clock)))
    reports = []
    meter = dl.Meter(total=1000, on_progress=reports.append, should_stop=None)
    for _ in range(4):
        meter.add(100)  # 100 bytes a second
    assert reports[-1].rate == pytest.approx(100)
    assert reports[-1].seconds_left == pytest.approx(6)


def test_download_command_prints_progress_and_the_next_step(hub, tmp_path, capsys):
    from engine.cli import main as cli

    assert cli(["download", "--dir", str(tmp_path / "model"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-2]["stage"] == "downloading" and lines[-2]["done"] == lines[-2]["total"]
    assert lines[-1]["folder"] == str(tmp_path / "model") and "quantize" in lines[-1]["next"]
    assert cli(["download", "--dir", str(tmp_path / "model"), "--offline"]) == 0
    assert "python main.py quantize" in capsys.readouterr().out


def test_download_command_failures_are_one_sentence(hub, tmp_path, capsys, monkeypatch):
    from engine.cli import main as cli

    assert cli(["download", "--variant", "int3"]) == 2
    assert "The model variant must be one of bf16, fp8" in capsys.readouterr().err
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert cli(["download", "--dir", str(tmp_path / "model")]) == 1
    assert "error: Cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_a_second_download_into_the_same_folder_is_refused(hub, tmp_path):
    from filelock import FileLock

    target = tmp_path / "model"
    (target / dl.STATE_FOLDER).mkdir(parents=True)
    with FileLock(target / dl.STATE_FOLDER / "lock"):  # as another download process holds it
        with pytest.raises(dl.DownloadError, match="Another download into .* is running"):
            dl.download(target)
    assert hub.requests == []
    validate_model_folder(dl.download(target))  # once it is free


def test_a_folder_that_cannot_be_made_is_one_sentence(hub, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(dl.DownloadError, match="Cannot write to .*; choose another folder"):
        dl.download(blocker / "model")

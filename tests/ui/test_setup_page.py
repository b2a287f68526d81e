"""First run: an empty settings folder needs the set-up page; it lists copies in the Hugging Face
cache, checks a chosen folder in a child process with the exact sentence for what is broken, and
writes the demo model."""

import shutil

import pytest

from app import model_setup
from app.settings import Settings
from engine.checkpoint import validate_model_folder
from engine.errors import BadCheckpoint
from ui.setup_page import SetupPage


@pytest.fixture
def settings_path(tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_path", lambda: tmp_path / "config" / "settings.json")
    monkeypatch.setattr(model_setup, "data_folder", lambda: tmp_path / "data")
    return tmp_path / "config" / "settings.json"


def test_first_run_lists_cached_copies_and_a_broken_folder_gets_the_exact_sentence(
    qtbot, tmp_path, tiny_checkpoint, settings_path
):
    settings = Settings.load(settings_path)
    assert settings.needs_setup  # an empty settings folder: the set-up page shows
    cache = tmp_path / "hub"
    snapshots = cache / "models--inclusionAI--LLaDA2.0-Uni" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "abc123").symlink_to(tiny_checkpoint, target_is_directory=True)
    page = SetupPage(settings, caches=[cache])
    qtbot.addWidget(page)
    listed = page.found.itemAt(0).layout().itemAt(0).widget().text()
    assert listed == str(snapshots / "abc123")

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    next(broken.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(BadCheckpoint) as expected:
        validate_model_folder(broken)
    with qtbot.waitSignal(page.check.checked, timeout=120_000):
        page.use_folder(str(broken))
    assert page.status.text() == str(expected.value)
    assert Settings.load(settings_path).needs_setup

    with qtbot.waitSignal(page.model_chosen, timeout=120_000) as chosen:
        page.use_folder(str(cache))  # the cache folder itself: the snapshot is found
    assert chosen.args == [str(snapshots / "abc123")]
    assert Settings.load(settings_path).model_folder == str(snapshots / "abc123")


def test_try_a_demo_model_writes_it_and_says_it_is_noise(qtbot, tmp_path, settings_path):
    settings = Settings.load(settings_path)
    page = SetupPage(settings, caches=[])
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.model_chosen, timeout=120_000) as chosen:
        page.try_demo.click()
    folder = tmp_path / "data" / "demo-model"
    assert chosen.args == [str(folder)] and (folder / "config.json").is_file()
    assert "noise" in page.status.text()
    saved = Settings.load(settings_path)
    assert saved.model_folder == str(folder) and saved.demo_model


@pytest.fixture
def hub(tiny_checkpoint, monkeypatch, tmp_path):
    """The hub's test double, reached by the download's child process through HF_ENDPOINT."""
    from tests.hubserver import HubServer

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token of this machine
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(tiny_checkpoint) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_download_shows_progress_can_be_cancelled_and_resumes_to_a_chosen_model(
    qtbot, tmp_path, hub, settings_path
):
    page = SetupPage(Settings.load(settings_path), caches=[])
    qtbot.addWidget(page)
    page.target.setText(str(tmp_path / "models" / "uni"))
    reports = []
    page.download.progress.connect(lambda done, total, line: reports.append((done, total, line)))
    hub.chunk_delay_s = 0.02  # slow enough to cancel midway
    with qtbot.waitSignal(page.download.finished, timeout=120_000) as stopped:
        page.start_download.click()
        assert not page.start_download.isEnabled() and page.cancel_download.isVisibleTo(page)
        qtbot.waitUntil(lambda: any(0 < done < total for done, total, _ in reports), timeout=60_000)
        page.cancel_download.click()
    assert stopped.args[0] == "" and "paused" in page.download_line.text()
    assert not (tmp_path / "models" / "uni" / "config.json").exists()  # not a model yet
    assert page.start_download.isEnabled() and Settings.load(settings_path).needs_setup
    assert any(line.startswith("downloading ") and " of " in line for *_, line in reports)
    sent_before = sum(hub.bytes_sent.values())

    hub.chunk_delay_s = 0.0
    with qtbot.waitSignal(page.model_chosen, timeout=120_000) as chosen:
        page.start_download.click()
    assert chosen.args == [str(tmp_path / "models" / "uni")]
    assert Settings.load(settings_path).model_folder == chosen.args[0]
    total = reports[-1][1]
    assert sum(hub.bytes_sent.values()) < total + sent_before  # resumed, not started again


def test_a_download_that_cannot_reach_the_hub_says_so_in_one_sentence(
    qtbot, tmp_path, settings_path, monkeypatch
):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    page = SetupPage(Settings.load(settings_path), caches=[])
    qtbot.addWidget(page)
    page.target.setText(str(tmp_path / "models" / "uni"))
    with qtbot.waitSignal(page.download.finished, timeout=120_000):
        page.start_download.click()
    text = page.download_line.text()
    assert text.startswith("The download stopped: ") and "\n" not in text
    assert "Traceback" not in text and page.start_download.isEnabled()

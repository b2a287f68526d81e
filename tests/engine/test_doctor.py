"""`python main.py doctor`: ready on the tiny checkpoint, the exact problem for a broken folder or
no model, and nothing private in what it prints."""

from __future__ import annotations

import json
import shutil

import pytest

from engine import doctor
from engine.cli import main as cli

SHARD = "model-00001-of-00003.safetensors"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A throwaway home with its own config folder, engine log and user name."""
    home = tmp_path / "home" / "zelda-tester"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USER", "zelda-tester")
    monkeypatch.setenv("LOGNAME", "zelda-tester")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv(doctor.LOG_ENV, str(home / "logs" / "engine.log"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def save_settings(home, model_folder: str) -> None:
    path = doctor.settings_path()
    assert path.is_relative_to(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_folder": model_folder, "device": "auto"}))


def run_doctor(capsys, *argv: str) -> tuple[int, str]:
    status = cli(["doctor", *argv])
    return status, capsys.readouterr().out


def test_ready_on_the_tiny_checkpoint_named_in_the_settings(home, tiny_checkpoint, capsys):
    save_settings(home, str(tiny_checkpoint))
    status, text = run_doctor(capsys)
    assert status == 0, text
    assert "status: complete" in text
    assert "ready: the app can run a job" in text
    for section in ("[system]", "[torch]", "[model]", "[disk]", "[settings]", "[engine log]"):
        assert section in text
    assert "build: CPU" in text or "build: CUDA" in text


def test_broken_folder_names_the_exact_problem(home, tiny_checkpoint, tmp_path, capsys):
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    shard = broken / SHARD
    shard.write_bytes(shard.read_bytes()[:-1000])
    status, text = run_doctor(capsys, "--model", str(broken))
    assert status == 1
    assert f"problem: {SHARD} in" in text and "is truncated" in text
    assert "not ready" in text


def test_no_model_set_says_how_to_get_one(home, capsys):
    status, text = run_doctor(capsys)
    assert status == 1
    assert "folder: not set" in text
    assert "python main.py download" in text


def test_report_holds_no_user_name_home_or_token(home, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenValue123")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror-user:mirror-pass@mirror.example")
    model = shutil.copytree(tiny_checkpoint, home / "models" / "LLaDA2.0-Uni")
    save_settings(home, str(model))
    log = home / "logs" / "engine.log"
    log.parent.mkdir()
    log.write_text(
        f"engine started by zelda-tester in {home}\n"
        "loaded with token hf_SecretTokenValue123 and hf_OtherToken9876\n"
    )
    status, text = run_doctor(capsys)
    assert status == 0, text
    for secret in (str(home), "zelda-tester", "SecretToken", "OtherToken", "mirror-pass"):
        assert secret not in text
    assert "folder: ~/models/LLaDA2.0-Uni" in text
    assert "line: engine started by <user> in ~" in text
    assert "token in environment: set" in text


def test_unreadable_settings_warn_but_do_not_stop(home, tiny_checkpoint, capsys):
    path = doctor.settings_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    report = doctor.collect(tiny_checkpoint)
    assert report.ok
    assert any("settings file" in w for w in report.warnings)

"""The API key: in the system keychain where there is one (never in the settings file then), in
the owner-only settings file where there is none, and moved to the keychain once one appears."""

import json
import os
import stat

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from app import keychain
from app.backend import remote_options
from app.settings import Settings


class MemoryKeychain(KeyringBackend):
    """A keychain in a dict (keyring's own interface), standing in for the desktop's."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def set_password(self, service, username, password):
        self.store[service, username] = password

    def get_password(self, service, username):
        return self.store.get((service, username))

    def delete_password(self, service, username):
        del self.store[service, username]


@pytest.fixture
def desktop():
    before = keyring.get_keyring()
    chain = MemoryKeychain()
    keyring.set_keyring(chain)
    yield chain
    keyring.set_keyring(before)


@pytest.fixture
def headless():
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(before)


def test_with_a_keychain_the_key_never_reaches_the_settings_file(desktop, tmp_path):
    settings = Settings(backend="remote", backend_urls=["https://gpu.example:30000"])
    assert keychain.store_key(settings, " sk-secret ") == keychain.IN_KEYCHAIN
    settings.save(tmp_path / "settings.json")
    assert "sk-secret" not in (tmp_path / "settings.json").read_text()
    loaded = Settings.load(tmp_path / "settings.json")
    assert keychain.key_of(loaded) == "sk-secret" and remote_options(loaded).key == "sk-secret"
    assert keychain.store_key(loaded, "") == "" and desktop.store == {}  # forgetting it
    assert keychain.key_of(loaded) == "" and not loaded.backend_key_in_keychain


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_without_a_keychain_it_stays_in_a_file_only_its_owner_reads(headless, tmp_path):
    settings = Settings(backend="remote")
    assert keychain.store_key(settings, "sk-secret") == keychain.IN_FILE
    settings.save(tmp_path / "settings.json")
    mode = stat.S_IMODE((tmp_path / "settings.json").stat().st_mode)
    assert mode == 0o600
    assert json.loads((tmp_path / "settings.json").read_text())["backend_key"] == "sk-secret"
    assert keychain.where(settings) == keychain.IN_FILE


def test_a_key_left_in_the_file_moves_to_the_keychain_when_one_is_there(desktop, tmp_path):
    old = Settings(backend_key="sk-old")  # as an older version saved it
    assert keychain.move_to_keychain(old)
    assert old.backend_key == "" and keychain.key_of(old) == "sk-old"
    assert not keychain.move_to_keychain(old)  # once


def test_a_keychain_that_refuses_leaves_the_key_in_the_file(desktop, monkeypatch):
    def refuse(*_args):
        raise keyring.errors.PasswordSetError("locked")

    monkeypatch.setattr(desktop, "set_password", refuse)
    settings = Settings()
    assert keychain.store_key(settings, "sk-secret") == keychain.IN_FILE
    assert settings.backend_key == "sk-secret" and keychain.key_of(settings) == "sk-secret"

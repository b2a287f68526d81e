"""The remote servers' API key, kept in the system keychain where there is one. No widgets.

keyring (macOS Keychain, Windows Credential Locker, the Secret Service of GNOME or KDE) holds the
key under "LLaDA Studio"; the settings file then only says that it is there. Where no keychain is
reachable (a headless Linux box, a locked or missing Secret Service) the key stays in the settings
file, which is written readable by its owner only (app/settings.py), and the settings dialog says
which of the two holds it. A key stored in the file by an older version moves to the keychain the
next time the app starts, if one is there.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SERVICE = "LLaDA Studio"
ACCOUNT = "remote servers API key"
IN_KEYCHAIN = "Kept in the system keychain."
IN_FILE = (
    "There is no system keychain here, so it is kept in the settings file, readable by you only."
)


def _keyring():
    """The keyring module when a real keychain backs it, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:  # pragma: no cover (a pinned dependency)
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
        return None
    return keyring


def _keychain_set(key: str) -> bool:
    """Store (or, for "", delete) the key in the keychain; False when there is none to use."""
    keyring = _keyring()
    if keyring is None:
        return False
    try:
        if key:
            keyring.set_password(SERVICE, ACCOUNT, key)
        elif keyring.get_password(SERVICE, ACCOUNT) is not None:
            keyring.delete_password(SERVICE, ACCOUNT)
    except Exception as error:  # keyring.errors.KeyringError, or the Secret Service's own
        log.warning("the system keychain refused the key: %s", type(error).__name__)
        return False
    return True


def _keychain_get() -> str | None:
    keyring = _keyring()
    if keyring is None:
        return None
    try:
        return keyring.get_password(SERVICE, ACCOUNT)
    except Exception as error:
        log.warning("the system keychain could not be read: %s", type(error).__name__)
        return None


def store_key(settings, key: str) -> str:
    """Keep `key` (stripped; "" forgets it) for the settings; returns where it went, a sentence.

    The caller saves the settings afterwards, as for any other change."""
    key = key.strip()
    if _keychain_set(key):
        settings.backend_key, settings.backend_key_in_keychain = "", bool(key)
        return IN_KEYCHAIN if key else ""
    settings.backend_key, settings.backend_key_in_keychain = key, False
    return IN_FILE if key else ""


def key_of(settings) -> str:
    """The key the settings stand for ("" for none): from the keychain or the file."""
    if settings.backend_key_in_keychain:
        return _keychain_get() or ""
    return settings.backend_key


def where(settings) -> str:
    """Where the settings' key is kept, a sentence ("" without a key)."""
    if settings.backend_key_in_keychain:
        return IN_KEYCHAIN
    return IN_FILE if settings.backend_key else ""


def move_to_keychain(settings) -> bool:
    """A key still in the settings file moves to the keychain if there is one; True when it
    moved (save the settings then)."""
    if not settings.backend_key or settings.backend_key_in_keychain:
        return False
    key = settings.backend_key
    if not _keychain_set(key):
        return False
    settings.backend_key, settings.backend_key_in_keychain = "", True
    return True

"""Shared fixtures: one tiny checkpoint per test session, written through engine.tiny."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def no_real_keychain():
    """Tests never read or write the developer's own keychain: by default there is none (as on
    a headless machine); tests/app/test_keychain.py puts in one of its own."""
    import keyring
    from keyring.backends import fail

    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from engine.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "LLaDA2.0-Uni", seed=0)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def qasync_loop(qapp):
    """One asyncio loop on Qt for the whole session, as in the app, where it runs for good.

    A loop per test leaves Qt timers of closed loops behind, which crash a later test.
    """
    import asyncio

    import qasync

    loop = qasync.QEventLoop(qapp, already_running=False)
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)

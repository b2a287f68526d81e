"""The Backend settings page: local or remote, its fields round-trip the settings, and "Test
connection" shows what each server offers, or the sentence for what went wrong."""

from __future__ import annotations

import asyncio

from app.settings import Settings
from tests.remote.double import DoubleServer
from ui.backend_page import BackendPage


def test_the_page_round_trips_the_backend_settings(qtbot):
    page = BackendPage()
    qtbot.addWidget(page)
    assert page.local.isChecked() and not page.test_button.isEnabled()
    page.load(
        Settings(
            backend="remote",
            backend_urls=["https://a:1", "https://b:2"],
            backend_key="k",
            backend_in_flight=3,
        )
    )
    assert page.remote.isChecked() and page.test_button.isEnabled()
    changed = Settings()
    page.apply(changed)
    assert changed.backend == "remote" and changed.backend_urls == ["https://a:1", "https://b:2"]
    assert (changed.backend_key, changed.backend_in_flight) == ("k", 3)
    assert "settings file" in page.key_place.text()  # no keychain in tests: it says where


def test_test_connection_shows_each_servers_tasks_and_the_key_sentence(qtbot, qasync_loop):
    page = BackendPage()
    qtbot.addWidget(page)
    with (
        DoubleServer() as full,
        DoubleServer(images=False) as text_only,
        DoubleServer(key="secret") as locked,
    ):
        page.load(Settings(backend="remote", backend_urls=[full.url, text_only.url, locked.url]))
        shown = qasync_loop.run_until_complete(asyncio.wait_for(page.test_connection(), 20))
    lines = shown.splitlines()
    assert lines[0] == f"{full.url}: llada2-uni, ask, generate, edit."
    assert lines[1] == f"{text_only.url}: llada2-uni, ask only (no image generation)."
    assert "refused the API key (401)" in lines[2]
    assert page.result.text() == shown


def test_test_connection_names_a_bad_address(qtbot, qasync_loop):
    page = BackendPage()
    qtbot.addWidget(page)
    page.load(Settings(backend="remote", backend_urls=["gpu-box:8000"]))
    shown = qasync_loop.run_until_complete(page.test_connection())
    assert shown == "'gpu-box:8000' is not a server address; write it like https://host:8000."

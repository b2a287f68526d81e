"""BackendPage: the settings page that chooses where jobs run, the local engine or SGLang-Omni
servers (addresses, API key, CA file, requests per server), with "Test connection" showing what
each server offers. A widget the settings dialog adds as a tab: `load(settings)`, `apply(settings)`.
"""

from __future__ import annotations

import asyncio

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.keychain import key_of, store_key, where
from app.remote import KEY_ENV, ServerClient, api_key, plain_http_warning, split_urls
from app.settings import Settings
from engine.errors import StudioError

MASKED_NOTE = (
    "On remote servers a masked edit runs half remote: the server edits the crop and this "
    "computer blends it back, so pixels outside the mask stay as they are. The token-exact start "
    "from the unmasked pixels needs the local engine."
)


class BackendPage(QWidget):
    """Local or remote; the probe's findings appear under "Test connection"."""

    tested = Signal(str)  # the text the last test showed

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.local = QRadioButton(self.tr("This computer (the local engine)"))
        self.remote = QRadioButton(self.tr("SGLang-Omni servers"))
        group = QButtonGroup(self)
        group.addButton(self.local)
        group.addButton(self.remote)
        self.urls = QPlainTextEdit()
        self.urls.setPlaceholderText("https://gpu-1:8000\nhttps://gpu-2:8000")
        self.urls.setToolTip(self.tr("One server or sgl-router address per line"))
        self.urls.setMaximumHeight(90)
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText(self.tr("empty: read {}").format(KEY_ENV))
        self.ca_file = QLineEdit()
        self.ca_file.setToolTip(self.tr("PEM certificates of a private CA, for HTTPS"))
        self.in_flight = QSpinBox()
        self.in_flight.setRange(1, 16)
        self.in_flight.setToolTip(self.tr("Requests each server works on at a time"))
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(10, 7200)
        self.timeout.setSuffix(" s")
        self.key_place = QLabel(wordWrap=True)  # the keychain, or the settings file
        self.key_place.setEnabled(False)  # dimmed: a note, not a control
        self.test_button = QPushButton(self.tr("Test connection"))
        self.test_button.clicked.connect(self.start_test)
        self.result = QLabel()
        self.result.setWordWrap(True)
        note = QLabel(self.tr(MASKED_NOTE))
        note.setWordWrap(True)
        form = QFormLayout()
        form.addRow(self.tr("Servers"), self.urls)
        form.addRow(self.tr("API key"), self.key)
        form.addRow("", self.key_place)
        form.addRow(self.tr("CA file"), self.ca_file)
        form.addRow(self.tr("Requests per server"), self.in_flight)
        form.addRow(self.tr("Give up after"), self.timeout)
        column = QVBoxLayout(self)
        for widget in (self.local, self.remote):
            column.addWidget(widget)
        column.addLayout(form)
        column.addWidget(self.test_button)
        column.addWidget(self.result)
        column.addWidget(note)
        column.addStretch(1)
        self.remote.toggled.connect(self._enable)
        self._test: asyncio.Task | None = None
        self.load(Settings())

    def load(self, settings: Settings) -> None:
        (self.remote if settings.backend == "remote" else self.local).setChecked(True)
        self.urls.setPlainText("\n".join(settings.backend_urls))
        self.key.setText(key_of(settings))
        self.key_place.setText(self.tr(where(settings)))
        self.ca_file.setText(settings.backend_ca_file)
        self.in_flight.setValue(settings.backend_in_flight)
        self.timeout.setValue(settings.backend_timeout_s)
        self._enable()

    def apply(self, settings: Settings) -> None:
        """Write the page into `settings` (addresses as typed; the test says if they are bad)."""
        settings.backend = "remote" if self.remote.isChecked() else "local"
        settings.backend_urls = [u for u in self.urls.toPlainText().split() if u]
        self.key_place.setText(self.tr(store_key(settings, self.key.text())))
        settings.backend_ca_file = self.ca_file.text().strip()
        settings.backend_in_flight = self.in_flight.value()
        settings.backend_timeout_s = self.timeout.value()

    def _enable(self) -> None:
        on = self.remote.isChecked()
        for widget in (self.urls, self.key, self.ca_file, self.in_flight, self.timeout):
            widget.setEnabled(on)
        self.test_button.setEnabled(on)

    # ------------------------------------------------------------ test connection

    def start_test(self) -> None:
        if self._test is None or self._test.done():
            self.result.setText(self.tr("Testing…"))
            self.test_button.setEnabled(False)
            self._test = asyncio.ensure_future(self.test_connection())

    async def test_connection(self) -> str:
        """Probe every server (health, models, what it offers); show and return the findings."""
        try:
            urls = split_urls(self.urls.toPlainText())
            clients = [
                ServerClient(url, key=api_key(self.key.text()), ca_file=self.ca_file.text().strip())
                for url in urls
            ]
        except StudioError as error:
            return self._show(str(error))
        try:
            found = await asyncio.gather(*(client.probe() for client in clients))
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))
        lines = [caps.summary() for caps in found]
        lines += list(filter(None, map(plain_http_warning, urls)))
        return self._show("\n".join(lines))

    def _show(self, text: str) -> str:
        self.result.setText(text)
        self.test_button.setEnabled(self.remote.isChecked())
        self.tested.emit(text)
        return text

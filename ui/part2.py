"""Part 2 in the main window: chat, queue and history docks, queue progress in the status bar and
title, Settings, About, Collect diagnostics, the shortcut list, first-run set-up, and the offer to
restore after a crash. `install(window)` adds it all to a MainWindow with small, additive changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app import diagnostics
from app.batch_queue import BatchQueue
from app.model_setup import reload_model
from app.session import Session
from app.settings import data_folder
from ui.about_dialog import AboutDialog
from ui.batch_dialog import BatchDialog
from ui.chat_panel import ChatPanel
from ui.export_dialog import ExportDialog
from ui.help_dialog import HelpDialog
from ui.history_browser import HistoryBrowser
from ui.jobs_panel import JobProgress, JobsPanel
from ui.settings_dialog import SettingsDialog
from ui.setup_page import SetupPage


class ChatDock(QStackedWidget):
    """One ChatPanel per open document; shows the current document's."""

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session, self.workspace = session, session.workspace
        self.panels: dict[int, ChatPanel] = {}
        self.hint = QLabel(self.tr("Open an image to ask about it."), wordWrap=True,
                           alignment=Qt.AlignmentFlag.AlignCenter, objectName="hint")  # fmt: skip
        self.addWidget(self.hint)
        self.workspace.current_changed.connect(self.show_current)
        self.workspace.documents_changed.connect(self._forget_closed)
        self.show_current()

    def panel(self, document) -> ChatPanel:
        key = id(document)
        if key not in self.panels:

            def context(document=document):
                return document.image, document.mask_snapshot()

            def sources(document=document):
                return [(d.title, d.image) for d in self.workspace.documents if d is not document]

            panel = ChatPanel(self.session.chat_for(document), context, sources)
            self.panels[key] = panel
            self.addWidget(panel)
        return self.panels[key]

    def show_current(self) -> None:
        document = self.workspace.current
        self.setCurrentWidget(self.panel(document) if document is not None else self.hint)

    def _forget_closed(self) -> None:
        open_ids = {id(d) for d in self.workspace.documents}
        for key in [k for k in self.panels if k not in open_ids]:
            panel = self.panels.pop(key)
            self.removeWidget(panel)
            panel.deleteLater()
        self.show_current()


class _QuitWatcher(QObject):
    """Saves the session (and releases the crash lock) when the window closes."""

    def __init__(self, session: Session, window: QMainWindow):
        super().__init__(window)
        self.session = session
        window.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close and event.isAccepted():
            self.session.autosave.finish()
        return False


def install(
    window: QMainWindow, data: Path | None = None, *, offer_restore: bool = True
) -> Session:
    """Add part 2 to `window` (which has settings, client, workspace and a chat dock)."""
    session = Session(window.settings, window.client, window.workspace, data or data_folder(),
                      parent=window)  # fmt: skip
    window.client.add_handler(session.handle, first=True)  # results on disk before on screen
    window.session = session
    _docks(window, session)
    window.job_progress = JobProgress(session.jobs, window)
    window.statusBar().addPermanentWidget(window.job_progress)
    session.notice.connect(lambda text: window.statusBar().showMessage(text, 15000))
    _menus(window, session)
    _QuitWatcher(session, window)
    if window.settings.needs_setup:
        show_setup(window)
    if offer_restore and session.crashed:
        offer_restore_dialog(window, session)
    return session


def _docks(window: QMainWindow, session: Session) -> None:
    window.chat_view = ChatDock(session)
    window.chat_dock.setWidget(window.chat_view)
    window.jobs_panel = JobsPanel(session.jobs)
    window.queue_dock = _dock(window, "queue", window.tr("Queue"), window.jobs_panel)
    window.history_browser = HistoryBrowser(session.history)
    window.history_browser.open_requested.connect(lambda entry: _open_entry(window, entry))
    window.history_dock = _dock(window, "history", window.tr("History"), window.history_browser)
    window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, window.history_dock)
    window.history_dock.hide()  # opened from View > History
    window.tabifyDockWidget(window.chat_dock, window.queue_dock)
    window.chat_dock.raise_()


def _dock(window: QMainWindow, name: str, title: str, widget: QWidget) -> QDockWidget:
    dock = QDockWidget(title, window, objectName=f"{name}Dock")
    dock.setWidget(widget)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    return dock


def _open_entry(window: QMainWindow, entry) -> None:
    from ui import files

    files.open_path(window, str(entry.path))


def _menus(window: QMainWindow, session: Session) -> None:
    bar = window.menuBar()
    menus = {m.title().replace("&", ""): m for m in (a.menu() for a in bar.actions()) if m}
    view = menus.get("View") or bar.addMenu(window.tr("&View"))
    view.addAction(window.queue_dock.toggleViewAction())
    history = window.history_dock.toggleViewAction()
    history.setShortcut("Ctrl+H")
    view.addAction(history)
    file = menus.get("File") or bar.addMenu(window.tr("&File"))
    settings = QAction(window.tr("&Settings…"), window, shortcut="Ctrl+,")
    settings.setToolTip(window.tr("Model, device, precision, folders, theme and defaults"))
    settings.triggered.connect(lambda: show_settings(window))
    export = QAction(window.tr("&Export images…"), window, shortcut="Ctrl+Shift+E")
    export.setToolTip(window.tr("Write chosen, starred or searched history images to a folder"))
    export.triggered.connect(lambda: show_export(window))
    batch = QAction(window.tr("&Batch…"), window, shortcut="Ctrl+Shift+B")
    batch.setToolTip(window.tr("Queue a prompt list or a folder of images with today's settings"))
    batch.triggered.connect(lambda: show_batch(window))
    for action in (export, batch, settings):
        file.insertAction(_quit_action(file), action)
    helpmenu = menus.get("Help") or bar.addMenu(window.tr("&Help"))
    shortcuts = getattr(window, "actions_by_name", {}).get("shortcuts")
    if shortcuts is not None:  # the searchable list of every shortcut
        shortcuts.triggered.disconnect()
        shortcuts.triggered.connect(lambda: HelpDialog(window).exec())
    collect = QAction(window.tr("&Collect diagnostics"), window)
    collect.setToolTip(window.tr("Copy a report for a bug report, with nothing private"))
    collect.triggered.connect(lambda: collect_diagnostics(window))
    about = QAction(window.tr("&About LLaDA Studio"), window)
    about.triggered.connect(lambda: AboutDialog(window.client, window.settings.model_folder,
                                                window).exec())  # fmt: skip
    for action in (collect, about):
        helpmenu.addAction(action)


def _quit_action(menu) -> QAction | None:
    return next((a for a in menu.actions() if "Quit" in a.text().replace("&", "")), None)


def show_export(window: QMainWindow) -> None:
    browser = window.history_browser
    ExportDialog(window.session.history, browser.selected(), browser.search.text(), window).exec()


def show_batch(window: QMainWindow) -> None:
    """The batch dialog over the job queue; each task's values are the panels' at Start."""
    if getattr(window, "batch_queue", None) is None:
        window.batch_queue = BatchQueue(window.client.submit, window.client.cancel, window)
        window.client.event_received.connect(window.batch_queue.handle)
    BatchDialog(window.batch_queue, lambda task: batch_values(window, task), window).exec()


def batch_values(window: QMainWindow, task: str) -> dict:
    """The request fields a batch item of `task` takes from the panels and settings now."""
    workspace, settings = window.workspace, window.settings
    if task == "generate":
        return dataclasses.asdict(workspace.form.requests()[0])
    if task == "edit":
        return workspace.edit_parameters()
    return {"steps": settings.understand_steps, "max_tokens": settings.answer_tokens}


def show_settings(window: QMainWindow) -> None:
    dialog = SettingsDialog(window.settings, window)
    dialog.reload_needed.connect(lambda: _reload(window))
    dialog.theme_changed.connect(lambda theme: _apply_theme(theme))
    dialog.exec()


def _reload(window: QMainWindow) -> None:
    if window.settings.model_folder:
        reload_model(window.client, window.settings)
        if hasattr(window, "show_model"):
            window.show_model()


def _apply_theme(theme: str) -> None:
    from ui.theme import apply_theme

    apply_theme(QApplication.instance(), theme)


def show_setup(window: QMainWindow) -> QDialog:
    """The first-run page in a dialog; choosing a model loads it."""
    dialog = QDialog(window)
    dialog.setWindowTitle(window.tr("Set up LLaDA Studio"))
    page = SetupPage(window.settings, parent=dialog)
    QVBoxLayout(dialog).addWidget(page)
    dialog.resize(640, 560)
    window.setup_page = page

    def chosen(_folder: str) -> None:
        _reload(window)
        dialog.accept()

    page.model_chosen.connect(chosen)
    dialog.show()
    return dialog


def offer_restore_dialog(window: QMainWindow, session: Session) -> None:
    states, _ = session.store.read()
    if not states:
        return
    titles = ", ".join(s.title for s in states[:5]) + ("…" if len(states) > 5 else "")
    answer = QMessageBox.question(
        window, window.tr("Restore your work?"),
        window.tr("LLaDA Studio did not close normally. Restore the {0} image(s) that were open "
                  "({1}) with their masks, versions, chats and unfinished jobs?").format(
            len(states), titles),
    )  # fmt: skip
    if answer == QMessageBox.StandardButton.Yes:
        for problem in session.restore():
            window.statusBar().showMessage(problem, 15000)
    else:
        session.discard()


def collect_diagnostics(window: QMainWindow) -> None:
    window.statusBar().showMessage(window.tr("Collecting diagnostics…"))

    async def run() -> None:
        text = await diagnostics.collect(window.client, window.settings.model_folder)
        QGuiApplication.clipboard().setText(text)
        window.statusBar().showMessage(
            window.tr("Diagnostics copied to the clipboard: paste them into your report."), 10000
        )

    asyncio.ensure_future(run())

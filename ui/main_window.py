"""MainWindow: documents as tabs in the centre, tool options on top, the instruction box and the
versions strip below, the generate panel and the chat as docks, a status bar for the engine.

It wires widgets to the Workspace and the EngineClient; the actions' shortcuts are listed in
`shortcuts()` (and in Help > Keyboard shortcuts)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.engine_client import EngineClient
from app.settings import Settings
from app.workspace import Workspace
from engine.protocol import LoadProgress, Progress
from ui import files
from ui.document_page import NORMAL, SIDE, SPLIT, DocumentPage
from ui.edit_bar import EditBar
from ui.generate_panel import GeneratePanel
from ui.progress_overlay import STAGE_NAMES, ProgressOverlay
from ui.theme import icon
from ui.tool_bar import ToolOptions
from ui.versions_strip import VersionsStrip

ENGINE_STATES = {"stopped": "Engine stopped", "starting": "Engine starting…", "ready": "Ready"}


class MainWindow(QMainWindow):
    def __init__(
        self,
        settings: Settings,
        client: EngineClient | None = None,
        workspace: Workspace | None = None,
        open_paths: list[str] | tuple[str, ...] = (),
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.settings = settings
        self.client = client or EngineClient(parent=self)
        self.workspace = workspace or Workspace(settings, self.client.submit, parent=self)
        self.pages: dict[int, DocumentPage] = {}  # id(document) -> its tab
        self.setWindowTitle("LLaDA Studio")
        self.setWindowIcon(icon("app"))
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.actions_by_name: dict[str, QAction] = {}
        self._build_centre()
        self._build_docks()
        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._connect()
        self.show_model()
        QApplication.instance().installEventFilter(self)  # hold-Tab flips to the parent
        for path in open_paths:
            files.open_path(self, path)

    # ------------------------------------------------------------ building

    def _build_centre(self) -> None:
        self.tabs = QTabWidget(documentMode=True, tabsClosable=True, movable=True)
        self.tabs.tabCloseRequested.connect(lambda i: self.close_document(self.tabs.widget(i)))
        self.tabs.currentChanged.connect(self._tab_changed)
        self.empty = QLabel(alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.empty.setObjectName("hint")
        self.empty.setText(
            self.tr(
                "<p style='font-size:16pt; color:#d6dae2'>Open an image to edit it</p>"
                "<p>Ctrl+O opens a file · drop an image here · Ctrl+V pastes one<br>"
                "or describe a new image in the Generate panel and press Ctrl+Enter</p>"
            )
        )
        self.pages_stack = QStackedWidget()
        self.pages_stack.addWidget(self.empty)
        self.pages_stack.addWidget(self.tabs)
        self.generate_overlay = ProgressOverlay(self.pages_stack)
        self.generate_overlay.cancel_requested.connect(self.client.cancel)
        self.tool_options = ToolOptions(self.workspace)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.tool_options)
        self.edit_bar = EditBar(self.workspace)
        self.versions = VersionsStrip(self.workspace)
        centre = QWidget()
        column = QVBoxLayout(centre)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.pages_stack, 1)
        column.addWidget(self.edit_bar)
        column.addWidget(self.versions)
        self.versions.hide()
        self.setCentralWidget(centre)

    def _build_docks(self) -> None:
        self.generate_panel = GeneratePanel(self.workspace.form)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(self.generate_panel)
        scroll.setMinimumWidth(330)
        self.generate_dock = self._dock("generate", self.tr("Generate"), scroll)
        self.chat_placeholder = QLabel(
            self.tr("Ask about the image here: the chat arrives with the next update."),
            alignment=Qt.AlignmentFlag.AlignCenter,
            wordWrap=True,
            objectName="hint",
        )
        self.chat_dock = self._dock("chat", self.tr("Chat"), self.chat_placeholder)
        self.tabifyDockWidget(self.generate_dock, self.chat_dock)
        self.generate_dock.raise_()

    def _dock(self, name: str, title: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self, objectName=f"{name}Dock")
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        return dock

    def _build_status_bar(self) -> None:
        self.engine_label = QLabel()
        self.engine_label.setToolTip(self.tr("What the engine is doing"))
        self.model_label = QLabel(objectName="hint")
        self.statusBar().addWidget(self.engine_label, 1)
        self.statusBar().addPermanentWidget(self.model_label)

    def _action(self, name: str, text: str, slot, keys=(), tip: str = "", icon_name: str = ""):
        action = QAction(icon(icon_name) if icon_name else icon(name), text, self)
        action.setShortcuts([QKeySequence(k) for k in keys])
        shown = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()]
        tip = tip or text.replace("&", "").rstrip("…")
        action.setToolTip(f"{tip} ({shown[0]})" if shown else tip)
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        self.actions_by_name[name] = action
        return action

    def _build_actions(self) -> None:
        a, tr = self._action, self.tr
        a("open", tr("&Open…"), lambda: files.open_dialog(self), [QKeySequence.StandardKey.Open])
        a("save", tr("&Save"), lambda: files.save(self), [QKeySequence.StandardKey.Save])
        a("save_as", tr("Save &as…"), lambda: files.save_as(self), ["Ctrl+Shift+S"],
          icon_name="save")  # fmt: skip
        a("paste", tr("&Paste image"), lambda: files.paste(self), [QKeySequence.StandardKey.Paste],
          tr("Open the image on the clipboard as a new document"), "open")  # fmt: skip
        a("close_tab", tr("&Close tab"), self.close_current, [QKeySequence.StandardKey.Close])
        a("model", tr("Choose &model folder…"), self.choose_model)
        a("quit", tr("&Quit"), self.close, [QKeySequence.StandardKey.Quit])
        a("undo", tr("&Undo"), lambda: self._document_call("undo"), ["Ctrl+Z"])
        a("redo", tr("&Redo"), lambda: self._document_call("redo"), ["Ctrl+Shift+Z", "Ctrl+Y"])
        a("fit", tr("&Fit"), lambda: self._canvas_call("fit"), ["Ctrl+0"],
          tr("Fit the image in the window (Esc on the canvas)"))  # fmt: skip
        a("actual", tr("&100 %"), lambda: self._canvas_call("actual_size"), ["Ctrl+1"])
        a("compare", tr("Compare (&split)"), lambda: self.set_compare(SPLIT), ["C"],
          tr("Before and after with a split slider"), "split")  # fmt: skip
        a("side", tr("Compare side &by side"), lambda: self.set_compare(SIDE), ["Shift+C"],
          icon_name="side")  # fmt: skip
        a("make_current", tr("&Make version current"), self.versions.make_current, ["Ctrl+M"],
          icon_name="current")  # fmt: skip
        a("star", tr("S&tar version"), self.versions.toggle_star, ["S"])
        a("run_edit", tr("Run &edit"), self.run_edit, ["Ctrl+E"],
          tr("Run the instruction under the canvas"), "run")  # fmt: skip
        a("generate", tr("&Generate"), self.generate, ["Ctrl+Return", "Ctrl+Enter"],
          tr("Generate from the panel's prompt"))  # fmt: skip
        a("cancel", tr("&Cancel running job"), self.cancel_running, ["Ctrl+."], icon_name="stop")
        a("shortcuts", tr("&Keyboard shortcuts"), self.show_shortcuts, ["F1"])
        for name in ("compare", "side"):
            self.actions_by_name[name].setCheckable(True)

    def _build_menus(self) -> None:
        bar, names = self.menuBar(), self.actions_by_name
        file = bar.addMenu(self.tr("&File"))
        for name in ("open", "paste"):
            file.addAction(names[name])
        self.recent_menu = file.addMenu(self.tr("Open &recent"))
        for name in ("save", "save_as", "close_tab", None, "model", None, "quit"):
            file.addSeparator() if name is None else file.addAction(names[name])
        edit = bar.addMenu(self.tr("&Edit"))
        for name in ("undo", "redo", None, "run_edit", "generate", "cancel"):
            edit.addSeparator() if name is None else edit.addAction(names[name])
        edit.addSeparator()
        for action in self.tool_options.mask_actions:
            edit.addAction(action)
        view = bar.addMenu(self.tr("&View"))
        for name in ("fit", "actual", None, "compare", "side", None, "make_current", "star"):
            view.addSeparator() if name is None else view.addAction(names[name])
        view.addSeparator()
        view.addAction(self.generate_dock.toggleViewAction())
        view.addAction(self.chat_dock.toggleViewAction())
        bar.addMenu(self.tr("&Help")).addAction(names["shortcuts"])
        self.show_recent()

    def _connect(self) -> None:
        ws = self.workspace
        ws.documents_changed.connect(self.show_documents)
        ws.current_changed.connect(self.show_current)
        ws.recent_changed.connect(self.show_recent)
        ws.generating_changed.connect(self.show_generating)
        ws.error_changed.connect(self.show_error)
        self.client.state_changed.connect(self.show_engine_state)
        self.client.event_received.connect(self.show_engine_event)
        self.client.stopped.connect(self.show_error)
        self.client.add_handler(ws.handle)
        self.show_engine_state(self.client.state)

    # ------------------------------------------------------------ documents and tabs

    def page(self, document=None) -> DocumentPage | None:
        document = document or self.workspace.current
        return self.pages.get(id(document)) if document is not None else None

    def show_documents(self) -> None:
        open_ids = {id(d) for d in self.workspace.documents}
        for key in [k for k in self.pages if k not in open_ids]:
            page = self.pages.pop(key)
            self.tabs.removeTab(self.tabs.indexOf(page))
            page.deleteLater()
        for document in self.workspace.documents:
            if id(document) not in self.pages:
                page = DocumentPage(document, self.workspace.tools)
                self.pages[id(document)] = page
                index = self.tabs.addTab(page, document.title)
                self.tabs.setTabToolTip(index, document.path or document.title)
        self.pages_stack.setCurrentWidget(self.tabs if self.pages else self.empty)
        self.versions.setVisible(bool(self.pages))  # no document, no versions
        self.show_current()

    def show_current(self) -> None:
        page = self.page()
        if page is not None and self.tabs.currentWidget() is not page:
            self.tabs.setCurrentWidget(page)
        for name in ("save", "save_as", "close_tab", "undo", "redo", "fit", "actual", "compare"):
            self.actions_by_name[name].setEnabled(page is not None)
        self._show_compare_checks()

    def _tab_changed(self, index: int) -> None:
        page = self.tabs.widget(index)
        if isinstance(page, DocumentPage):
            self.workspace.set_current(page.document)

    def close_document(self, page: QWidget) -> None:
        if not isinstance(page, DocumentPage):
            return
        for job_id in list(page.document.jobs):
            self.client.cancel(job_id)
        self.workspace.close(page.document)

    def close_current(self) -> None:
        if (page := self.page()) is not None:
            self.close_document(page)

    def _document_call(self, method: str) -> None:
        if self.workspace.current is not None:
            getattr(self.workspace.current, method)()

    def _canvas_call(self, method: str) -> None:
        if (page := self.page()) is not None:
            page.set_mode(NORMAL)
            getattr(page.canvas, method)()

    # ------------------------------------------------------------ compare and Tab

    def set_compare(self, mode: str) -> None:
        """Toggle a compare mode on the current tab (a second press returns to the canvas)."""
        page = self.page()
        if page is None:
            return
        page.set_mode(NORMAL if page.mode == mode else mode)
        if page.mode == NORMAL and mode != NORMAL and page.before_version() is None:
            self.statusBar().showMessage(self.tr("Only one version: nothing to compare yet."), 4000)
        self._show_compare_checks()

    def _show_compare_checks(self) -> None:
        mode = self.page().mode if self.page() else NORMAL
        self.actions_by_name["compare"].setChecked(mode == SPLIT)
        self.actions_by_name["side"].setChecked(mode == SIDE)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and self.isActiveWindow():
            if event.key() == Qt.Key.Key_Tab and not event.modifiers() and not _typing():
                if not event.isAutoRepeat() and (page := self.page()) is not None:
                    page.flip_to_parent(kind == QEvent.Type.KeyPress)
                return True
        return super().eventFilter(watched, event)

    # ------------------------------------------------------------ jobs

    def run_edit(self) -> None:
        if not self.edit_bar.instruction.text().strip():
            self.edit_bar.instruction.setFocus()
            return
        self.edit_bar.run()

    def generate(self) -> None:
        self.generate_dock.show()
        self.generate_dock.raise_()
        self.generate_panel.generate()

    def cancel_running(self) -> None:
        if self.client.running is not None:
            self.client.cancel(self.client.running.job_id)

    def show_generating(self) -> None:
        generating = self.workspace.generating
        if not generating:
            self.generate_overlay.finish()
            return
        job_id = next((j for j, p in generating.items() if p is not None), next(iter(generating)))
        self.generate_overlay.setGeometry(self.pages_stack.rect())
        waiting = len(generating) - 1
        what = self.tr("Generating") + (
            self.tr(" (+{0} waiting)").format(waiting) if waiting else ""
        )
        self.generate_overlay.show_progress(job_id, generating[job_id], what)

    # ------------------------------------------------------------ engine state

    def show_engine_state(self, state: str) -> None:
        self.engine_label.setText(self.tr(ENGINE_STATES.get(state, state)))

    def show_engine_event(self, event) -> None:
        match event:
            case Progress(stage=stage):  # the step and time left show beside, per job
                words = self.tr(STAGE_NAMES.get(stage, stage))
                self.engine_label.setText(self.tr("Engine: {0}").format(words.lower()))
            case LoadProgress(stage=stage, step=step, total=total):
                self.engine_label.setText(
                    self.tr("Loading the model: {0} ({1} of {2})").format(stage, step, total)
                )
            case _ if type(event).__name__ in ("Finished", "Failed"):
                QTimer.singleShot(0, self._idle_text)

    def _idle_text(self) -> None:
        if self.client.running is None:
            queued = len(self.client.queued)
            text = self.tr(ENGINE_STATES.get(self.client.state, self.client.state))
            self.engine_label.setText(
                text + (self.tr(" · {0} queued").format(queued) if queued else "")
            )

    def show_model(self) -> None:
        folder = self.settings.model_folder
        self.model_label.setText(
            self.tr("Model: {0}").format(Path(folder).name) if folder else self.tr("No model set")
        )
        self.model_label.setToolTip(folder or self.tr("File > Choose model folder"))

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("LLaDA2.0-Uni model folder"))
        if folder:
            self.settings.model_folder = folder
            self.settings.save()
            self.show_model()
            self.client.submit(self.settings.load_request(folder), front=True)

    def show_error(self, text: str) -> None:
        if text:
            self.statusBar().showMessage(text, 10000)

    # ------------------------------------------------------------ files

    def show_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent_files:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.triggered.connect(lambda _=False, p=path: files.open_path(self, p))
        self.recent_menu.setEnabled(bool(self.settings.recent_files))
        if self.settings.recent_files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction(self.tr("Clear the list"), self.workspace.clear_recent)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if files.dropped_images(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for path in files.dropped_images(event.mimeData()):
            files.open_path(self, path)
        event.acceptProposedAction()

    # ------------------------------------------------------------ help, closing

    def shortcuts(self) -> list[tuple[str, str]]:
        """(action, keys) for every action with a shortcut, and the canvas keys."""
        rows = []
        for action in self.actions_by_name.values():
            keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText)
                             for k in action.shortcuts())  # fmt: skip
            if keys:
                rows.append((action.text().replace("&", ""), keys))
        rows += self.tool_options.shortcuts()
        rows.append((self.tr("Show the parent version"), self.tr("hold Tab")))
        return rows

    def show_shortcuts(self) -> None:
        text = "\n".join(f"{keys:<24} {what}" for what, keys in self.shortcuts())
        box = QMessageBox(self)
        box.setWindowTitle(self.tr("Keyboard shortcuts"))
        view = QPlainTextEdit(text, readOnly=True)
        view.setMinimumSize(460, 420)
        box.layout().addWidget(view, 0, 0, 1, box.layout().columnCount())
        box.exec()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.generate_overlay.setGeometry(self.pages_stack.rect())

    def closeEvent(self, event: QCloseEvent) -> None:
        QApplication.instance().removeEventFilter(self)
        super().closeEvent(event)


def _typing() -> bool:
    """True when the keyboard focus is in a text box, where Tab and letters belong to it."""
    focus = QApplication.focusWidget()
    return (
        isinstance(focus, QLineEdit | QPlainTextEdit) or focus.inherits("QAbstractSpinBox")
        if focus is not None
        else False
    )

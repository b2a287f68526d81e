"""SetupPage: the first-run page. It says what LLaDA2.0-Uni needs, offers the copies found in the
Hugging Face cache, downloads the model (with progress, cancel and resume), checks a chosen folder
and says exactly what is missing, or writes the demo."""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.model_setup import DEMO_NOTE, DemoWriter, ModelCheck, ModelDownload, find_cached_models
from app.settings import PRECISION_NEEDS, Settings
from engine.download import default_folder  # torch-free
from ui.files import folder_field

VARIANTS = {  # engine/download.py REPOS: what each download is
    "bf16": "bf16: the original weights, about 60 GB",
    "fp8": "fp8: the official FP8 release, about 33 GB",
}


def free_disk_gb(folder: Path) -> float | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free / 1e9
    return None


class SetupPage(QWidget):
    """Shown until a model folder is chosen; `model_chosen` fires once one checks out."""

    model_chosen = Signal(str)  # the model folder's root

    def __init__(self, settings: Settings, caches: list[Path] | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.check = ModelCheck(self)
        self.check.checked.connect(self._checked)
        self.demo = DemoWriter(self)
        self.demo.written.connect(self._demo_written)
        self.download = ModelDownload(self)
        self.download.progress.connect(self._download_progress)
        self.download.finished.connect(self._downloaded)
        title = QLabel(self.tr("<h2>Set up LLaDA2.0-Uni</h2>"))
        intro = QLabel(self.tr(
            "LLaDA Studio runs the LLaDA2.0-Uni model on this computer. It needs the model's "
            "folder (download it once from Hugging Face, inclusionAI/LLaDA2.0-Uni) and a GPU with "
            "enough memory for the precision you choose:"
        ), wordWrap=True)  # fmt: skip
        column = QVBoxLayout(self)
        column.addWidget(title)
        column.addWidget(intro)
        column.addLayout(self._needs_table())
        self.found = QVBoxLayout()
        column.addWidget(QLabel(self.tr("<b>Copies found in the Hugging Face cache</b>")))
        column.addLayout(self.found)
        column.addWidget(QLabel(self.tr("<b>Download from Hugging Face</b>")))
        column.addLayout(self._download_rows())
        self.choose = QPushButton(self.tr("Choose model folder…"))
        self.choose.setToolTip(self.tr("The folder that holds config.json, or a Hugging Face "
                                       "cache folder"))  # fmt: skip
        self.choose.clicked.connect(self.choose_folder)
        self.try_demo = QPushButton(self.tr("Try a demo model"))
        self.try_demo.setToolTip(DEMO_NOTE)
        self.try_demo.clicked.connect(self.write_demo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.choose)
        buttons.addWidget(self.try_demo)
        buttons.addStretch()
        column.addLayout(buttons)
        self.status = QLabel(wordWrap=True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.status)
        column.addStretch()
        self._list_cached(caches)

    def _download_rows(self) -> QVBoxLayout:
        self.variant = QComboBox()
        for variant, text in VARIANTS.items():
            self.variant.addItem(self.tr(text), variant)
        self.variant.setToolTip(self.tr(
            "Either runs in every precision: int8 and int4 are made from it later with "
            "“python main.py quantize”"))  # fmt: skip
        self.target = QLineEdit(str(default_folder("bf16")))
        self.target.setToolTip(self.tr("Where the model goes; a stopped download resumes here"))
        self.variant.currentIndexChanged.connect(self._variant_changed)
        self.target.textChanged.connect(self._show_free_space)
        self.start_download = QPushButton(self.tr("Download"), objectName="primary")
        self.start_download.setToolTip(self.tr("Resumes where an earlier download stopped, and "
                                               "checks every file"))  # fmt: skip
        self.start_download.clicked.connect(self.begin_download)
        self.cancel_download = QPushButton(self.tr("Cancel"))
        self.cancel_download.setToolTip(self.tr("Stop now; Download later goes on from here"))
        self.cancel_download.clicked.connect(self.download.cancel)
        self.cancel_download.hide()
        self.download_bar = QProgressBar(textVisible=False)
        self.download_bar.hide()
        self.download_line = QLabel(wordWrap=True)
        first, second = QHBoxLayout(), QHBoxLayout()
        first.addWidget(self.variant)
        first.addWidget(folder_field(self.target, self.tr("Where to put the model"),
                                     self.tr("Change…")), 1)  # fmt: skip
        second.addWidget(self.start_download)
        second.addWidget(self.cancel_download)
        second.addWidget(self.download_bar, 1)
        second.addStretch()  # the button keeps its size while no bar shows
        rows = QVBoxLayout()
        rows.addLayout(first)
        rows.addLayout(second)
        rows.addWidget(self.download_line)
        self._show_free_space()
        return rows

    def _needs_table(self) -> QGridLayout:
        grid = QGridLayout()
        heads = (self.tr("Precision"), self.tr("Disk"), self.tr("GPU memory: images"),
                 self.tr("GPU memory: chat only"))  # fmt: skip
        for col, text in enumerate(heads):
            grid.addWidget(QLabel(f"<b>{text}</b>"), 0, col)
        for row, (precision, need) in enumerate(PRECISION_NEEDS.items(), start=1):
            cells = (precision, f"~{need['disk_gb']} GB", f"~{need['vram_gb']} GB",
                     f"~{need['understand_vram_gb']} GB")  # fmt: skip
            for col, text in enumerate(cells):
                grid.addWidget(QLabel(text), row, col)
        note = QLabel(self.tr("int8 and int4 are made once from the bf16 download with "
                              "“python main.py quantize”; lower VRAM presets in Settings trade "
                              "speed for memory."), wordWrap=True)  # fmt: skip
        grid.addWidget(note, len(PRECISION_NEEDS) + 1, 0, 1, len(heads))
        return grid

    def _list_cached(self, caches: list[Path] | None) -> None:
        copies = find_cached_models(caches)
        if not copies:
            self.found.addWidget(QLabel(self.tr("None found.")))
        for folder, problem in copies:
            row = QHBoxLayout()
            label = QLabel(str(folder) + (f" — {problem}" if problem else ""), wordWrap=True)
            row.addWidget(label, 1)
            use = QPushButton(self.tr("Use this"))
            use.setToolTip(self.tr("Check this copy and use it"))
            use.clicked.connect(lambda _=False, f=str(folder): self.use_folder(f))
            row.addWidget(use)
            self.found.addLayout(row)

    def begin_download(self) -> None:
        folder = self.target.text().strip()
        if not folder:
            self.download_line.setText(self.tr("Choose where the model should go first."))
            return
        self.start_download.setEnabled(False)
        self.variant.setEnabled(False)
        self.target.setEnabled(False)
        self.cancel_download.show()
        self.download_bar.setRange(0, 0)  # busy until the first report gives the size
        self.download_bar.show()
        self.download_line.setText(self.tr("Asking Hugging Face for the file list…"))
        self.download.start(self.variant.currentData(), folder)

    def _download_progress(self, done: int, total: int, line: str) -> None:
        scale = max(1, total // 1_000_000_000)  # a QProgressBar holds ints up to 2**31
        self.download_bar.setRange(0, max(1, total // scale))
        self.download_bar.setValue(done // scale)
        self.download_line.setText(line)

    def _downloaded(self, folder: str, sentence: str) -> None:
        self.start_download.setEnabled(True)
        self.variant.setEnabled(True)
        self.target.setEnabled(True)
        self.cancel_download.hide()
        self.download_bar.hide()
        self._show_free_space()
        if folder:
            self.download_line.setText(self.tr("Downloaded to {0}.").format(folder))
            self.use_folder(folder)
        else:
            self.download_line.setText(sentence)

    def _variant_changed(self) -> None:
        """A folder still at one variant's default follows to the other's."""
        defaults = {str(default_folder(v)) for v in VARIANTS}
        if self.target.text().strip() in defaults:
            self.target.setText(str(default_folder(self.variant.currentData())))

    def _show_free_space(self) -> None:
        free = free_disk_gb(Path(self.target.text().strip() or "."))
        if free is not None and not self.download.running:
            self.download_line.setText(self.tr("Free disk space there: {0:.0f} GB.").format(free))

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("LLaDA2.0-Uni model folder"))
        if folder:
            self.use_folder(folder)

    def use_folder(self, folder: str) -> None:
        """Check the folder (in a child process); `model_chosen` follows if it is complete."""
        self._busy(self.tr("Checking {0}…").format(folder))
        self.check.check(folder)

    def write_demo(self) -> None:
        self._busy(self.tr("Writing the demo model (a few seconds)…"))
        self.demo.write()

    def _checked(self, root: str, sentence: str) -> None:
        self._idle()
        if sentence:
            self.status.setText(sentence)
            self.status.setStyleSheet("color: #d9534f")
            return
        self._accept(root, demo=False)

    def _demo_written(self, folder: str, sentence: str) -> None:
        self._idle()
        self.status.setText(sentence)
        self.status.setStyleSheet("" if folder else "color: #d9534f")
        if folder:
            self._accept(folder, demo=True)

    def _accept(self, folder: str, demo: bool) -> None:
        self.settings.model_folder, self.settings.demo_model = folder, demo
        self.settings.save()
        if not demo:
            self.status.setText(self.tr("The model folder {0} is complete.").format(folder))
            self.status.setStyleSheet("")
        self.model_chosen.emit(folder)

    def _busy(self, text: str) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("")
        self.choose.setEnabled(False)
        self.try_demo.setEnabled(False)

    def _idle(self) -> None:
        self.choose.setEnabled(True)
        self.try_demo.setEnabled(True)

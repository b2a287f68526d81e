"""SettingsDialog: model, device, precision and VRAM preset, where results go, theme, brush and
canvas defaults, and the default advanced parameters. OK writes them to the Settings and saves."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.settings import (
    DEVICES,
    PRECISION_HINTS,
    PRECISIONS,
    THEMES,
    VRAM_LABELS,
    VRAM_PRESETS,
    Settings,
)
from ui.backend_page import BackendPage
from ui.files import folder_field

# Changing one of these reloads the engine's model (the engine takes them with LoadModel).
RELOAD_FIELDS = ("model_folder", "device", "precision", "vram_preset", "allow_lower_preset")


class SettingsDialog(QDialog):
    """Edits a copy of the settings; OK stores it back and emits what changed."""

    reload_needed = Signal()  # the model, device, precision, VRAM preset or lower preset changed
    theme_changed = Signal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle(self.tr("Settings"))
        tabs = QTabWidget()
        tabs.addTab(self._model_tab(), self.tr("Model"))
        tabs.addTab(self._look_tab(), self.tr("Canvas and look"))
        tabs.addTab(self._defaults_tab(), self.tr("Default parameters"))
        tabs.addTab(self._backend_tab(), self.tr("Backend"))
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        column = QVBoxLayout(self)
        column.addWidget(tabs)
        column.addWidget(buttons)
        self.load(settings)

    # ------------------------------------------------------------ tabs

    def _backend_tab(self) -> QWidget:
        self.backend = BackendPage()
        note = QLabel(self.tr("A change of backend takes effect when LLaDA Studio starts again."))
        note.setWordWrap(True)
        column = QVBoxLayout()
        column.addWidget(self.backend)
        column.addWidget(note)
        column.addStretch()
        page = QWidget()
        page.setLayout(column)
        return page

    def _model_tab(self) -> QWidget:
        self.model_folder = QLineEdit()
        self.model_folder.setToolTip(self.tr("The LLaDA2.0-Uni folder (holding config.json)"))
        self.device = QComboBox(editable=True)
        self.device.addItems(DEVICES)
        self.device.setToolTip(self.tr("Where the model runs: auto picks the GPU if there is "
                                       "one; cuda:1 names the second GPU"))  # fmt: skip
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setToolTip(self.tr(
            "bf16 is the original; int8 and int4 need less GPU memory, and load fast from a "
            "quantized folder"))  # fmt: skip
        self.precision_hint = self._hint()
        self.precision.currentTextChanged.connect(self._show_hints)
        self.vram = QComboBox()
        for preset, meaning in VRAM_PRESETS.items():
            self.vram.addItem(self.tr(VRAM_LABELS[preset]), preset)
            self.vram.setItemData(self.vram.count() - 1, self.tr(meaning), 3)  # Qt.ToolTipRole
        self.vram.setToolTip(self.tr("The card's memory: how much of the model stays on the GPU"))
        self.vram_hint = self._hint()
        self.vram.currentIndexChanged.connect(self._show_hints)
        self.allow_lower = QCheckBox(
            self.tr("Allow a lower preset after running out of GPU memory")
        )
        self.allow_lower.setToolTip(self.tr(
            "When a job runs out of GPU memory, reload the model once at the next smaller preset "
            "(less precision, or backbone and decoder taking turns) and run the job again. "
            "Off: the job fails and says which preset would fit."))  # fmt: skip
        self.results_folder = QLineEdit(placeholderText=str(self.settings.results_path))
        self.results_folder.setToolTip(self.tr("Where every result and the history are saved"))
        choose = self.tr("Choose a folder")
        form = QFormLayout()
        form.addRow(self.tr("Model folder"), folder_field(self.model_folder, choose))
        form.addRow(self.tr("Device"), self.device)
        form.addRow(self.tr("Precision"), self._with_hint(self.precision, self.precision_hint))
        form.addRow(self.tr("VRAM preset"), self._with_hint(self.vram, self.vram_hint))
        form.addRow("", self.allow_lower)
        form.addRow(self.tr("Results folder"), folder_field(self.results_folder, choose))
        return self._page(form)

    def _look_tab(self) -> QWidget:
        self.theme = QComboBox()
        self.theme.addItems(THEMES)
        self.theme.setToolTip(self.tr("Dark, light, or follow the system's setting"))
        self.brush_size = QSpinBox(minimum=1, maximum=1000, suffix=" px")
        self.brush_size.setToolTip(self.tr("The brush's diameter on the image ([ and ] change it)"))
        self.brush_hardness = self._fraction(self.tr("0: soft edge, 1: hard edge"))
        self.mask_opacity = self._fraction(self.tr("How strongly the mask tints the image"))
        self.checkerboard = QCheckBox(self.tr("Checkerboard behind the image"))
        self.checkerboard.setToolTip(self.tr("Shows where the picture ends"))
        self.autosave = QDoubleSpinBox(minimum=1, maximum=600, suffix=" s", decimals=0)
        self.autosave.setToolTip(self.tr("Open documents are saved this long after each change"))
        form = QFormLayout()
        form.addRow(self.tr("Theme"), self.theme)
        form.addRow(self.tr("Brush size"), self.brush_size)
        form.addRow(self.tr("Brush hardness"), self.brush_hardness)
        form.addRow(self.tr("Mask opacity"), self.mask_opacity)
        form.addRow("", self.checkerboard)
        form.addRow(self.tr("Autosave after"), self.autosave)
        return self._page(form)

    def _defaults_tab(self) -> QWidget:
        self.generate_steps = self._steps(self.tr("Denoising steps per block for new images"))
        self.generate_cfg = self._scale(self.tr("Guidance for new images (official: 2)"))
        self.edit_steps = self._steps(self.tr("Denoising steps per block for edits"))
        self.edit_cfg_text = self._scale(self.tr("How strongly edits follow the instruction "
                                                 "(official: 4)"))  # fmt: skip
        self.edit_cfg_image = self._scale(self.tr("How strongly edits keep the source image "
                                                  "(official: 0)"))  # fmt: skip
        self.understand_steps = self._steps(self.tr("Denoising steps per block for answers"))
        self.answer_tokens = QSpinBox(minimum=32, maximum=8192, singleStep=32)
        self.answer_tokens.setToolTip(self.tr("The longest answer, in tokens (official: 2048)"))
        self.turbo = QCheckBox(self.tr("Turbo decoder (8 steps)"))
        self.turbo.setToolTip(self.tr("About ten times faster decoding than the 50-step one"))
        form = QFormLayout()
        form.addRow(self.tr("Generate steps"), self.generate_steps)
        form.addRow(self.tr("Generate guidance"), self.generate_cfg)
        form.addRow(self.tr("Edit steps"), self.edit_steps)
        form.addRow(self.tr("Edit text guidance"), self.edit_cfg_text)
        form.addRow(self.tr("Edit image guidance"), self.edit_cfg_image)
        form.addRow(self.tr("Answer steps"), self.understand_steps)
        form.addRow(self.tr("Answer length"), self.answer_tokens)
        form.addRow("", self.turbo)
        return self._page(form)

    # ------------------------------------------------------------ values

    def load(self, s: Settings) -> None:
        self.model_folder.setText(s.model_folder)
        self.device.setCurrentText(s.device)
        self.precision.setCurrentText(s.precision)
        self.vram.setCurrentIndex(max(0, self.vram.findData(s.vram_preset)))
        self._show_hints()
        self.allow_lower.setChecked(s.allow_lower_preset)
        self.results_folder.setText(s.results_folder)
        self.theme.setCurrentText(s.theme)
        self.brush_size.setValue(s.brush_size)
        self.brush_hardness.setValue(s.brush_hardness)
        self.mask_opacity.setValue(s.mask_opacity)
        self.checkerboard.setChecked(s.canvas_checkerboard)
        self.autosave.setValue(s.autosave_seconds)
        self.generate_steps.setValue(s.generate_steps)
        self.generate_cfg.setValue(s.generate_cfg)
        self.edit_steps.setValue(s.edit_steps)
        self.edit_cfg_text.setValue(s.edit_cfg_text)
        self.edit_cfg_image.setValue(s.edit_cfg_image)
        self.understand_steps.setValue(s.understand_steps)
        self.answer_tokens.setValue(s.answer_tokens)
        self.turbo.setChecked(s.turbo_decoder)
        self.backend.load(s)

    def values(self) -> Settings:
        """The settings as the dialog shows them (the stored ones are unchanged until OK)."""
        shown = replace(
            self.settings,
            model_folder=self.model_folder.text().strip(),
            device=self.device.currentText().strip() or "auto",
            precision=self.precision.currentText(),
            vram_preset=self.vram.currentData(),
            allow_lower_preset=self.allow_lower.isChecked(),
            results_folder=self.results_folder.text().strip(),
            theme=self.theme.currentText(),
            brush_size=self.brush_size.value(),
            brush_hardness=self.brush_hardness.value(),
            mask_opacity=self.mask_opacity.value(),
            canvas_checkerboard=self.checkerboard.isChecked(),
            autosave_seconds=self.autosave.value(),
            generate_steps=self.generate_steps.value(),
            generate_cfg=self.generate_cfg.value(),
            edit_steps=self.edit_steps.value(),
            edit_cfg_text=self.edit_cfg_text.value(),
            edit_cfg_image=self.edit_cfg_image.value(),
            understand_steps=self.understand_steps.value(),
            answer_tokens=self.answer_tokens.value(),
            turbo_decoder=self.turbo.isChecked(),
        )
        self.backend.apply(shown)
        return shown

    def accept(self) -> None:
        new, old = self.values(), replace(self.settings)
        for name, value in vars(new).items():
            setattr(self.settings, name, value)
        self.settings.save()
        super().accept()
        if any(getattr(new, f) != getattr(old, f) for f in RELOAD_FIELDS):
            self.reload_needed.emit()
        if new.theme != old.theme:
            self.theme_changed.emit(new.theme)

    # ------------------------------------------------------------ small parts

    def _show_hints(self) -> None:
        """The lines under the precision and the VRAM preset say what the chosen one means."""
        self.precision_hint.setText(self.tr(PRECISION_HINTS.get(self.precision.currentText(), "")))
        self.vram_hint.setText(self.tr(VRAM_PRESETS[self.vram.currentData()]))

    def _hint(self) -> QLabel:
        """A line under a choice saying what the chosen value means."""
        hint = QLabel(wordWrap=True)
        hint.setEnabled(False)  # drawn dimmed, as secondary text
        return hint

    def _with_hint(self, choice: QWidget, hint: QLabel) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(choice)
        column.addWidget(hint)
        return box

    def _page(self, form: QFormLayout) -> QWidget:
        page = QWidget()
        page.setLayout(form)
        return page

    def _fraction(self, tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox(minimum=0, maximum=1, singleStep=0.05, decimals=2)
        box.setToolTip(tip)
        return box

    def _steps(self, tip: str) -> QSpinBox:
        box = QSpinBox(minimum=1, maximum=256)
        box.setToolTip(tip)
        return box

    def _scale(self, tip: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox(minimum=0, maximum=20, singleStep=0.5, decimals=1)
        box.setToolTip(tip)
        return box

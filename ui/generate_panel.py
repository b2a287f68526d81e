"""GeneratePanel: the text-to-image controls; shows a GenerateForm and forwards edits to it."""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.generate import CUSTOM, MAX_COUNT, MAX_SEED, MAX_SIDE, MIN_SIDE, PRESETS, GenerateForm
from ui.theme import icon


class GeneratePanel(QWidget):
    def __init__(self, form: GenerateForm, parent: QWidget | None = None):
        super().__init__(parent)
        self.form = form
        self.prompt = QPlainTextEdit(placeholderText=self.tr("Describe the image to make…"))
        self.prompt.setToolTip(self.tr("The prompt. Ctrl+Enter generates."))
        self.prompt.setMinimumHeight(80)
        self.prompt.setMaximumHeight(140)
        self.prompt.textChanged.connect(lambda: form.set_prompt(self.prompt.toPlainText()))
        column = QVBoxLayout(self)
        column.setContentsMargins(8, 8, 8, 8)
        column.addWidget(self.prompt)
        column.addLayout(self._basic_rows())
        self.advanced_toggle = QToolButton(text=self.tr("Advanced"), checkable=True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setToolTip(self.tr("Steps, guidance and decoder, at the defaults"))
        self.advanced_toggle.toggled.connect(self._fold)
        column.addWidget(self.advanced_toggle)
        self.advanced = QWidget()
        self.advanced.setLayout(self._advanced_rows())
        self.advanced.setVisible(False)
        column.addWidget(self.advanced)
        self.error = QLabel(objectName="errorLabel", wordWrap=True)
        column.addWidget(self.error)
        self.generate_button = QPushButton(icon("generate"), self.tr("Generate"))
        self.generate_button.setObjectName("primary")
        self.generate_button.setToolTip(self.tr("Make the image(s) (Ctrl+Enter)"))
        self.generate_button.clicked.connect(self.generate)
        column.addWidget(self.generate_button)
        self.thinking_label = QLabel(self.tr("Thinking"), objectName="hint")
        self.thinking_text = QPlainTextEdit(readOnly=True)
        self.thinking_text.setToolTip(self.tr("The model's reasoning, as it streams"))
        column.addWidget(self.thinking_label)
        column.addWidget(self.thinking_text, 1)
        column.addStretch(0)
        form.changed.connect(self.show_form)
        form.thinking_changed.connect(self.show_thinking)
        form.error_changed.connect(self.error.setText)
        self.show_form()
        self.show_thinking()

    def _basic_rows(self) -> QFormLayout:
        rows = QFormLayout()
        self.preset = QComboBox()
        for name, (w, h) in PRESETS.items():
            self.preset.addItem(f"{name}  ({w}×{h})", name)
        self.preset.addItem(self.tr("Custom"), CUSTOM)
        self.preset.setToolTip(self.tr("Aspect ratio at the model's size"))
        self.preset.activated.connect(lambda: self.form.set_preset(self.preset.currentData()))
        rows.addRow(self.tr("Size"), self.preset)
        self.width_box, self.height_box = (self._side_box() for _ in range(2))
        sizes = QHBoxLayout()
        sizes.addWidget(self.width_box)
        sizes.addWidget(QLabel("×"))
        sizes.addWidget(self.height_box)
        rows.addRow("", sizes)
        self.seed = QSpinBox(maximum=MAX_SEED)
        self.seed.setToolTip(self.tr("The seed: the same seed and settings make the same image"))
        self.seed.valueChanged.connect(self.form.set_seed)
        self.lock = QToolButton(checkable=True)
        self.lock.setToolTip(self.tr("Lock the seed (otherwise a new one after each run)"))
        self.lock.toggled.connect(self.form.set_seed_locked)
        self.dice = QToolButton(icon=icon("random"))
        self.dice.setToolTip(self.tr("A random seed"))
        self.dice.clicked.connect(self.form.randomize_seed)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.lock)
        seed_row.addWidget(self.dice)
        rows.addRow(self.tr("Seed"), seed_row)
        self.thinking = QCheckBox(self.tr("Think first"))
        self.thinking.setToolTip(self.tr("The model reasons in text before it paints; slower"))
        self.thinking.toggled.connect(self.form.set_thinking)
        self.count = QSpinBox(minimum=1, maximum=MAX_COUNT)
        self.count.setToolTip(self.tr("How many images, with successive seeds"))
        self.count.valueChanged.connect(self.form.set_count)
        options = QHBoxLayout()
        options.addWidget(self.thinking, 1)
        options.addWidget(QLabel(self.tr("Count")))
        options.addWidget(self.count)
        rows.addRow("", options)
        return rows

    def _side_box(self) -> QSpinBox:
        box = QSpinBox(minimum=MIN_SIDE // 2, maximum=MAX_SIDE * 2, singleStep=32, suffix=" px")
        box.setToolTip(self.tr("{0} to {1} px in steps of 32").format(MIN_SIDE, MAX_SIDE))
        box.editingFinished.connect(self._size_edited)
        box.valueChanged.connect(lambda: box.hasFocus() or self._size_edited())
        return box

    def _advanced_rows(self) -> QFormLayout:
        a = self.form.advanced
        rows = QFormLayout()
        rows.setContentsMargins(12, 0, 0, 0)
        self.steps = QSpinBox(minimum=1, maximum=64, value=a.steps)
        self.steps.setToolTip(self.tr("Denoising steps per block of 32 tokens (official: 8)"))
        self.steps.valueChanged.connect(lambda v: self.form.set_advanced(steps=v))
        rows.addRow(self.tr("Steps"), self.steps)
        self.cfg = QDoubleSpinBox(minimum=0.0, maximum=20.0, singleStep=0.5, value=a.cfg_scale)
        self.cfg.setToolTip(self.tr("How strongly the image follows the prompt (official: 2.0)"))
        self.cfg.valueChanged.connect(lambda v: self.form.set_advanced(cfg_scale=v))
        rows.addRow(self.tr("CFG scale"), self.cfg)
        self.rescale = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.1)
        self.rescale.setToolTip(self.tr("Tempers strong guidance (official: 0)"))
        self.rescale.valueChanged.connect(lambda v: self.form.set_advanced(cfg_rescale=v))
        rows.addRow(self.tr("CFG rescale"), self.rescale)
        self.decoder = QComboBox()
        self.decoder.addItem(self.tr("Turbo (8 steps)"), True)
        self.decoder.addItem(self.tr("Normal (50 steps)"), False)
        self.decoder.setToolTip(self.tr("The image decoder: turbo is fast, normal is finer"))
        self.decoder.activated.connect(
            lambda: self.form.set_advanced(turbo=self.decoder.currentData())
        )
        rows.addRow(self.tr("Decoder"), self.decoder)
        self.decoder_steps = QSpinBox(minimum=0, maximum=100)
        self.decoder_steps.setSpecialValueText(self.tr("default"))
        self.decoder_steps.setToolTip(self.tr("The decoder's steps; default: 8 turbo, 50 normal"))
        self.decoder_steps.valueChanged.connect(lambda v: self.form.set_advanced(decoder_steps=v))
        rows.addRow(self.tr("Decoder steps"), self.decoder_steps)
        self.thinking_length = QSpinBox(minimum=32, maximum=8192, singleStep=256)
        self.thinking_length.setToolTip(self.tr("The most tokens thinking may write"))
        self.thinking_length.valueChanged.connect(
            lambda v: self.form.set_advanced(thinking_length=v)
        )
        rows.addRow(self.tr("Thinking length"), self.thinking_length)
        reset = QPushButton(self.tr("Official defaults"))
        reset.setToolTip(self.tr("Put every advanced parameter back to its official default"))
        reset.clicked.connect(self.form.reset_advanced)
        rows.addRow("", reset)
        return rows

    # ------------------------------------------------------------ input

    def generate(self) -> None:
        self._size_edited()
        self.form.generate()

    def _size_edited(self) -> None:
        size = (self.width_box.value(), self.height_box.value())
        if size != (self.form.width, self.form.height):
            self.form.set_size(*size)

    def _fold(self, unfolded: bool) -> None:
        self.advanced.setVisible(unfolded)
        arrow = Qt.ArrowType.DownArrow if unfolded else Qt.ArrowType.RightArrow
        self.advanced_toggle.setArrowType(arrow)

    # ------------------------------------------------------------ showing the form

    def show_form(self) -> None:
        f, a = self.form, self.form.advanced
        widgets = (self.preset, self.width_box, self.height_box, self.seed, self.lock)
        widgets += (self.thinking, self.count, self.steps, self.cfg, self.rescale, self.decoder)
        widgets += (self.decoder_steps, self.thinking_length)
        blockers = [QSignalBlocker(w) for w in widgets]
        if self.prompt.toPlainText() != f.prompt:
            with QSignalBlocker(self.prompt):
                self.prompt.setPlainText(f.prompt)
        self.preset.setCurrentIndex(self.preset.findData(f.preset))
        self.width_box.setValue(f.width)
        self.height_box.setValue(f.height)
        self.seed.setValue(f.seed)
        self.lock.setChecked(f.seed_locked)
        self.lock.setIcon(icon("lock" if f.seed_locked else "unlock"))
        self.thinking.setChecked(f.thinking)
        self.count.setValue(f.count)
        self.steps.setValue(a.steps)
        self.cfg.setValue(a.cfg_scale)
        self.rescale.setValue(a.cfg_rescale)
        self.decoder.setCurrentIndex(self.decoder.findData(a.turbo))
        self.decoder_steps.setValue(a.decoder_steps)
        self.thinking_length.setValue(a.thinking_length)
        del blockers
        label = self.tr("Generate") if f.count == 1 else self.tr("Generate {0}").format(f.count)
        self.generate_button.setText(label)
        self.show_thinking()

    def show_thinking(self) -> None:
        text = self.form.thinking_text
        if self.thinking_text.toPlainText() != text:
            self.thinking_text.setPlainText(text)
            bar = self.thinking_text.verticalScrollBar()
            bar.setValue(bar.maximum())
        visible = bool(text) or self.form.thinking
        self.thinking_label.setVisible(visible)
        self.thinking_text.setVisible(visible)

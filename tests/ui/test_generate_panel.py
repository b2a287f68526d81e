"""ui/generate_panel.py shows the GenerateForm and forwards what the user types and clicks."""

from PySide6.QtCore import Qt

from app.generate import GenerateForm
from ui.generate_panel import GeneratePanel


def test_typing_and_clicking_generate_sends_the_jobs(qtbot):
    sent = []
    form = GenerateForm(sent.append)
    panel = GeneratePanel(form)
    qtbot.addWidget(panel)
    qtbot.keyClicks(panel.prompt, "a lighthouse")
    panel.preset.setCurrentIndex(panel.preset.findData("16:9"))
    panel.preset.activated.emit(panel.preset.currentIndex())
    panel.count.setValue(2)
    panel.lock.setChecked(True)
    panel.seed.setValue(5)
    qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    assert [(r.prompt, r.width, r.height, r.seed) for r in sent] == [
        ("a lighthouse", 1024, 576, 5),
        ("a lighthouse", 1024, 576, 6),
    ]
    assert panel.generate_button.text() == "Generate 2"


def test_a_bad_custom_size_shows_the_sentence_and_sends_nothing(qtbot):
    sent = []
    form = GenerateForm(sent.append)
    form.set_prompt("x")
    panel = GeneratePanel(form)
    qtbot.addWidget(panel)
    panel.width_box.setValue(500)
    panel.generate()
    assert sent == [] and "steps of 32" in panel.error.text()
    assert panel.preset.currentData() == "custom"


def test_restored_parameters_show_and_thinking_streams_into_the_panel(qtbot):
    form = GenerateForm(lambda r: None)
    panel = GeneratePanel(form)
    qtbot.addWidget(panel)
    form.restore({"prompt": "a boat", "seed": "12", "steps": "20", "decoder": "normal",
                  "width": "768", "height": "1024"})  # fmt: skip
    assert panel.prompt.toPlainText() == "a boat" and panel.seed.value() == 12
    assert panel.lock.isChecked() and panel.steps.value() == 20
    assert panel.decoder.currentData() is False and panel.preset.currentData() == "3:4"
    form.jobs.append("j")
    form.add_thinking("j", "Because boats float.")
    assert panel.thinking_text.toPlainText() == "Because boats float."
    assert not panel.thinking_text.isHidden()

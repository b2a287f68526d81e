"""ExportDialog: starred, selected and searched history entries written as chosen."""

import numpy as np

from app.history import History
from engine import imagefile
from ui.export_dialog import ExportDialog


def test_export_starred_as_webp_with_a_template(qtbot, tmp_path):
    history = History(tmp_path / "history")
    fox = history.add(np.zeros((16, 24, 3), np.uint8), {"task": "generate", "prompt": "a red fox",
                                                        "seed": "3"})  # fmt: skip
    cat = history.add(np.ones((16, 24, 3), np.uint8), {"task": "generate", "prompt": "a cat",
                                                       "seed": "4"})  # fmt: skip
    history.star(fox.id)
    dialog = ExportDialog(history, search_text="cat")
    qtbot.addWidget(dialog)
    assert dialog.scope.currentData() == "starred"  # nothing selected
    dialog.folder.setText(str(tmp_path / "out"))
    dialog.template.setText("{slug}-{seed}")
    dialog.format.setCurrentIndex(dialog.format.findData("webp"))
    dialog.lossless.setChecked(True)
    assert not dialog.quality.isEnabled()
    settings = dialog.settings()
    dialog.template.setText("{seed}")  # a later change does not alter the snapshot
    assert settings.template == "{slug}-{seed}"
    dialog.template.setText("{slug}-{seed}")
    dialog.export_button.click()
    assert [p.name for p in dialog.report.written] == ["a-red-fox-3.webp"]
    assert (imagefile.read_image(dialog.report.written[0]) == 0).all()
    assert imagefile.read_metadata(dialog.report.written[0])["prompt"] == "a red fox"
    dialog.scope.setCurrentIndex(dialog.scope.findData("search"))
    dialog.export_button.click()
    assert [p.name for p in dialog.report.written] == ["a-cat-4.webp"]
    dialog.template.setText("{colour}")
    dialog.export_button.click()
    assert "{colour}" in dialog.message.text()
    history.close()
    assert cat.prompt == "a cat"

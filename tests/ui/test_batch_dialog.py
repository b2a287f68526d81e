"""BatchDialog: a prompt list queued with the settings of Start, progress per item, cancel."""

from app.batch_queue import BatchQueue
from engine.protocol import Failed
from ui.batch_dialog import BatchDialog


def test_prompt_list_is_queued_and_shown_per_item(qtbot):
    sent, cancelled = [], []
    queue = BatchQueue(sent.append, cancelled.append)
    settings = {"width": 512, "height": 512, "steps": 8}
    dialog = BatchDialog(queue, lambda task: settings)
    qtbot.addWidget(dialog)
    dialog.start_button.click()
    assert "at least one prompt" in dialog.message.text() and not sent
    dialog.prompts.setPlainText("a fox\n\na cat\n")
    dialog.seeds.setText("1-2")
    dialog.start_button.click()
    settings["steps"] = 99  # a later change does not reach queued items
    assert [(r.prompt, r.seed, r.steps) for r in sent] == [("a fox", 1, 8), ("a fox", 2, 8)]
    assert dialog.items.count() == 4 and not dialog.start_button.isEnabled()
    queue.handle(Failed(sent[0].job_id, "The prompt is too long.", "bad_input"))
    assert "1 failed" in dialog.message.text() and "too long" in dialog.message.text()
    assert sent[2].steps == 8
    dialog.cancel_button.click()
    assert cancelled == [sent[1].job_id, sent[2].job_id]
    for job_id in cancelled:
        queue.handle(Failed(job_id, "The job was cancelled.", "cancelled"))
    assert dialog.start_button.isEnabled()
    dialog.seeds.setText("x")
    dialog.start_button.click()
    assert "1-4" in dialog.message.text()

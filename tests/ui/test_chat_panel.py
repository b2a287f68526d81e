"""ChatPanel with the fake engine: an answer appears token by token and Stop stops it, the region
toggle sends the mask, Markdown renders, and a message can be copied."""

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.chat import STOPPED, Conversation
from engine import protocol as p
from tests.app.test_chat import PHOTO, conversation, sent, slow
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)
from tests.app.test_jobs import until
from ui.chat_panel import ChatPanel

REGION = np.zeros(PHOTO.shape[:2], bool)
REGION[2:10, 3:20] = True


@scenario
async def test_answer_appears_token_by_token_and_stop_stops_it(client, tmp_path):
    chat = conversation(client)
    panel = ChatPanel(chat, lambda: (PHOTO, REGION))
    panel.resize(360, 500)  # not shown: closing the last window would stop the session's loop
    slow(client, 0.04)
    shown = []
    chat.message_updated.connect(lambda i: shown.append(panel.views[i].body.toPlainText()))
    panel.question.setPlainText("What is in it?")
    panel.send.click()
    assert panel.question.toPlainText() == "" and panel.stop.isEnabled()
    assert not panel.send.isEnabled()
    await until(lambda: len([t for t in shown if t]) >= 3)
    panel.stop.click()
    await until(lambda: not chat.busy, timeout=2)
    answer = panel.views[-1]
    assert chat.messages[-1].state == STOPPED and "stopped" in answer.who.text()
    texts = [t for t in shown if t]
    assert texts == sorted(texts, key=len) and len(set(texts)) >= 3  # grew a word at a time
    assert answer.body.toPlainText() == texts[-1]
    assert len(answer.body.toPlainText().split()) < 9  # the whole answer has 9 words
    assert panel.send.isEnabled() and panel.regenerate.isEnabled()


@scenario
async def test_region_toggle_sends_the_mask(client, tmp_path):
    chat = conversation(client)
    panel = ChatPanel(chat, lambda: (PHOTO, REGION))
    panel.question.setPlainText("What is this part?")
    panel.region.setChecked(True)
    panel.send.click()
    await until(lambda: not chat.busy)
    (request,) = sent(client)
    assert np.array_equal(request.mask, REGION)
    assert "painted region" in panel.views[0].who.text()
    panel.question.setPlainText("And the whole picture?")
    panel.region.setChecked(False)
    panel.send.click()
    await until(lambda: not chat.busy)
    assert sent(client)[-1].mask is None


def test_markdown_renders_and_copy_takes_the_text(qtbot):
    requests = []
    chat = Conversation(requests.append, lambda job_id: None)
    panel = ChatPanel(chat, lambda: (PHOTO, None))
    qtbot.addWidget(panel)
    panel.question.setPlainText("Describe it as a report.")
    qtbot.keyClick(panel.question, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    answer = (
        "# Report\n\n- a fox\n- a tree\n\n```\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    chat.handle(p.TextResult(requests[-1].job_id, answer))
    chat.handle(p.Finished(requests[-1].job_id))
    html = panel.views[-1].body.toHtml()
    assert "<h1" in html and "<li" in html and "<table" in html and "print(1)" in html
    panel.views[-1].copy.click()
    assert QGuiApplication.clipboard().text() == answer
    panel.region.setChecked(True)
    panel.question.setPlainText("What about the region?")
    panel.ask()
    assert "Paint the region first" in panel.error.text() and len(requests) == 1
    panel.clear.click()
    assert panel.views == [] and not panel.empty.isHidden()

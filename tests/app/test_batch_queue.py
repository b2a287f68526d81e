"""BatchQueue: items sent two at a time with the settings of the start, states per item,
unreadable images failed with their sentence, cancel the rest."""

import numpy as np
from PIL import Image

from app.batch_queue import CANCELLED, DONE, FAILED, BatchQueue, folder_items, prompt_items
from engine.protocol import Edit, Failed, Finished, Generate, TextResult, Understand


def queue():
    sent, cancelled = [], []
    return BatchQueue(sent.append, cancelled.append), sent, cancelled


def test_prompt_list_runs_with_the_start_settings_and_lists_failures():
    batch, sent, _ = queue()
    values = {"width": 512, "height": 512, "steps": 8}
    items = prompt_items(["a fox", "", "a cat"], [1, 2], values)
    values["steps"] = 99  # a later change in the panel
    batch.start(items)
    assert [(r.prompt, r.seed, r.steps) for r in sent] == [("a fox", 1, 8), ("a fox", 2, 8)]
    assert all(isinstance(r, Generate) and r.width == 512 for r in sent)
    ended = []
    batch.finished.connect(lambda: ended.append(True))
    batch.handle(Finished(sent[0].job_id))
    batch.handle(Failed(sent[1].job_id, "The prompt is too long.", "bad_input"))
    assert len(sent) == 4  # two more went out as two ended
    for request in sent[2:]:
        batch.handle(Finished(request.job_id))
    assert batch.counts()[DONE] == 3
    assert batch.failures == [("a fox (seed 2)", "The prompt is too long.")]
    assert ended == [True]


def test_folder_edit_and_ask_and_cancel_the_rest(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    batch, sent, cancelled = queue()
    batch.start(folder_items(tmp_path, "edit", "make it blue", {"seed": 3, "cfg_text_scale": 4}))
    assert [type(r) for r in sent] == [Edit, Edit] and sent[0].instruction == "make it blue"
    assert sent[0].seed == 3 and sent[0].cfg_text_scale == 4
    batch.handle(Finished(sent[0].job_id))  # a.png done; broken.png fails, c.png goes out
    assert [i.label for i in batch.items if i.state == FAILED] == ["broken.png"]
    assert "broken.png" in batch.failures[0][1] and len(sent) == 3
    batch.cancel_rest()
    assert cancelled == [sent[1].job_id, sent[2].job_id]
    for job_id in cancelled:
        batch.handle(Failed(job_id, "The job was cancelled.", "cancelled"))
    assert [i.state for i in batch.items] == [DONE, CANCELLED, FAILED, CANCELLED]
    ask, asked, _ = queue()
    ask.start(folder_items(tmp_path, "ask", "What is it?", {"max_tokens": 16}))
    assert isinstance(asked[0], Understand) and asked[0].turns[0].text == "What is it?"
    ask.handle(TextResult(asked[0].job_id, "A black square."))
    ask.handle(Finished(asked[0].job_id))
    assert [i.answer for i in ask.items if i.state == DONE] == ["A black square."]

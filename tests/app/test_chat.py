"""Conversation over EngineClient and FakeEngine: streaming, Stop, region questions, multi-turn
context, Regenerate, the context check, and saving."""

import json

import numpy as np

from app.chat import ASSISTANT, DONE, STOPPED, Conversation, image_tokens
from engine import protocol as p
from tests.app.test_engine_client import loop, scenario  # noqa: F401 (a fixture and a wrapper)
from tests.app.test_jobs import until

PHOTO = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def conversation(client) -> Conversation:
    chat = Conversation(client.submit, client.cancel)
    client.add_handler(chat.handle)
    return chat


def sent(client) -> list[p.Understand]:
    return [r for r in client.engines[-1].requests if isinstance(r, p.Understand)]


def slow(client, step_s=0.03):
    for engine in client.engines:
        engine._worker._pipeline.step_s = step_s


@scenario
async def test_answer_streams_token_by_token_and_stop_stops_it(client, tmp_path):
    chat = conversation(client)
    shown = []
    chat.message_updated.connect(lambda i: shown.append(chat.messages[i].text))
    chat.ask("What is this?", PHOTO, seed=5)
    await until(lambda: chat.messages[-1].state == DONE)
    full = "I see 1 images and 1 turns; seed 5."
    assert chat.messages[-1].text == full
    partial = [t for t in shown if t and t != full]
    assert len(partial) >= 5 and all(full.startswith(t) for t in partial)
    assert partial == sorted(partial, key=len)  # grows word by word

    slow(client, 0.05)
    chat.ask("And now?", PHOTO)
    await until(lambda: chat.messages[-1].text.count(" ") >= 1)
    chat.stop()
    await until(lambda: not chat.busy, timeout=2)
    answer = chat.messages[-1]
    assert answer.state == STOPPED and answer.error == "" and chat.error == ""
    words = answer.text.count(" ") + 1
    assert 2 <= words <= 4  # stopped within a step of pressing Stop; the full answer has 9
    assert "I see 1 images and 3 turns".startswith(answer.text.rstrip(" ;"))


@scenario
async def test_region_question_sends_the_mask_with_the_image_first(client, tmp_path):
    chat = conversation(client)
    region = np.zeros(PHOTO.shape[:2], bool)
    region[5:20, 10:30] = True
    chat.ask("What is in the circled part?", PHOTO, region=region)
    await until(lambda: not chat.busy)
    (request,) = sent(client)
    assert np.array_equal(request.mask, region)
    assert np.array_equal(request.turns[-1].images[0], PHOTO)
    assert chat.messages[0].region is not None
    chat.ask("Anything odd?", PHOTO, region=np.zeros_like(region))
    assert "region is empty" in chat.error and len(sent(client)) == 1


@scenario
async def test_earlier_turns_and_images_stay_in_context(client, tmp_path):
    chat = conversation(client)
    other = np.zeros((32, 32, 3), np.uint8)
    chat.ask("Describe it.", PHOTO, seed=1)
    await until(lambda: not chat.busy)
    chat.attach(other)
    chat.ask("Compare with this one.", PHOTO, seed=2)
    await until(lambda: not chat.busy)
    second = sent(client)[-1]
    assert [t.role for t in second.turns] == ["user", "assistant", "user"]
    assert second.turns[1].text == "I see 1 images and 1 turns; seed 1."
    assert len(second.turns[0].images) == 1  # the photo, sent once
    assert [im.shape for im in second.turns[2].images] == [other.shape]  # only the new image
    assert chat.messages[-1].text == "I see 2 images and 3 turns; seed 2."
    chat.regenerate()
    await until(lambda: not chat.busy)
    again = sent(client)[-1]
    assert [t.text for t in again.turns] == [t.text for t in second.turns] and again.seed != 2
    assert len(chat.messages) == 4 and chat.messages[-1].seed == again.seed
    chat.clear()
    assert chat.messages == []


@scenario
async def test_a_question_that_would_pass_the_context_is_not_sent(client, tmp_path):
    chat = conversation(client)
    chat.context_tokens = 1000
    assert image_tokens(800, 800) == 50 * 50 + 5 and image_tokens(32, 32) == 8 * 8 + 5
    assert chat.ask("What is this?", np.zeros((32, 32, 3), np.uint8))
    await until(lambda: not chat.busy)
    assert chat.ask("Now read this: " + "long words " * 300) == ""
    assert "would not fit in the model's context of 1000 tokens" in chat.error
    assert len(sent(client)) == 1 and len(chat.messages) == 2


def test_conversation_survives_save_and_reload():
    requests = []
    chat = Conversation(requests.append, lambda job_id: None)
    region = np.zeros(PHOTO.shape[:2], bool)
    region[1:4, 2:9] = True
    chat.ask("What is it?", PHOTO, region=region, seed=3)
    job_id = requests[-1].job_id
    for event in (p.TextDelta(job_id, "A **fox**"), p.TextResult(job_id, "A **fox**."),
                  p.Finished(job_id)):  # fmt: skip
        chat.handle(event)
    chat.ask("Where?", PHOTO)  # cut off mid-answer, as by a crash
    chat.handle(p.TextDelta(requests[-1].job_id, "In the"))
    restored = Conversation(requests.append, lambda job_id: None)
    restored.load_dict(json.loads(json.dumps(chat.to_dict())))
    assert [(m.role, m.text) for m in restored.messages] == [
        ("user", "What is it?"), (ASSISTANT, "A **fox**."),
        ("user", "Where?"), (ASSISTANT, "In the"),
    ]  # fmt: skip
    assert np.array_equal(restored.messages[0].images[0], PHOTO)
    assert np.array_equal(restored.messages[0].region, region)
    assert restored.messages[-1].state == STOPPED and not restored.busy

"""Conversation: a chat about a document's image (or a masked region of it). No widgets.

Every question is sent with the whole conversation so far (turns and images), as an Understand
request; the answer streams in as TextDelta events. A conversation belongs to its document, is
saved with it (`to_dict`/`from_dict`) and checks before sending that the question and the answer
fit in the model's context.
"""

from __future__ import annotations

import base64
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, Signal

from engine.buckets import understanding_size
from engine.protocol import (
    ChatTurn,
    Event,
    Failed,
    Finished,
    Request,
    TextDelta,
    TextResult,
    Understand,
    new_job_id,
)

# The model's limits (backbone_facts.md: max_position_embeddings 8192; the pipeline's answer
# length 2048, written in blocks of 32) and the understanding resize rule (vision_facts.md §2.2a).
CONTEXT_TOKENS = 8192
ANSWER_TOKENS = 2048
BLOCK_TOKENS = 32
PROMPT_TOKENS = 24  # the system segment and role tags around the turns
IMAGE_EXTRA_TOKENS = 5  # <|image|>, height, width, <boi>, <|/image|> around each grid
CHARS_PER_TOKEN = 3  # a cautious estimate of the text tokenizer, which the GUI does not load
MAX_SEED = 2**31 - 1

USER, ASSISTANT = "user", "assistant"
DONE, STREAMING, STOPPED, FAILED = "done", "streaming", "stopped", "failed"


@dataclass
class Message:
    role: str  # "user" or "assistant"
    text: str
    images: tuple[np.ndarray, ...] = ()  # [H, W, 3] uint8, sent with this turn
    region: np.ndarray | None = None  # [H, W] bool over the first image: asked about this part
    state: str = DONE  # an answer is "streaming" until it ends "done", "stopped" or "failed"
    seed: int = 0
    job_id: str = ""
    error: str = ""  # the engine's sentence when the answer failed


def image_tokens(height: int, width: int, n_images: int = 1) -> int:
    """Tokens one image takes in a chat: one per 16x16 patch of its resized size, plus its tags."""
    h, w = understanding_size(height, width, n_images)
    return (h // 16) * (w // 16) + IMAGE_EXTRA_TOKENS


def region_box(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box around a region; the engine asks about that crop."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return mask.shape[:2]
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


class Conversation(QObject):
    """A multi-turn chat. `submit(request)` queues a job; `cancel(job_id)` stops one."""

    messages_changed = Signal()  # a message was added or removed
    message_updated = Signal(int)  # index: its text or state changed (streaming)
    busy_changed = Signal(bool)
    error_changed = Signal(str)  # a sentence for the user, "" when cleared

    def __init__(
        self,
        submit: Callable[[Request], object],
        cancel: Callable[[str], None],
        *,
        context_tokens: int = CONTEXT_TOKENS,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self._submit, self._cancel = submit, cancel
        self.context_tokens = context_tokens
        self.answer_tokens: int | None = None  # the longest answer; None: the engine's 2048
        self.steps: int | None = None  # denoising steps per block; None: the official 32
        self.messages: list[Message] = []
        self.attachments: list[np.ndarray] = []  # images added for the next question
        self.error = ""

    # ------------------------------------------------------------ reading

    @property
    def busy(self) -> bool:
        return bool(self.messages) and self.messages[-1].state == STREAMING

    def owns(self, job_id: str) -> bool:
        return any(m.job_id == job_id for m in self.messages if m.role == ASSISTANT)

    def prompt_tokens(self, turns: list[Message]) -> int:
        """An upper estimate of the prompt's length in tokens."""
        n_images = sum(len(m.images) for m in turns)
        total = PROMPT_TOKENS
        for message in turns:
            total += math.ceil(len(message.text.encode()) / CHARS_PER_TOKEN) + 2
            for i, image in enumerate(message.images):
                h, w = image.shape[:2]
                if i == 0 and message.region is not None:
                    h, w = region_box(message.region)
                total += image_tokens(h, w, n_images)
        return total

    def context_problem(self, turns: list[Message], answer_tokens: int = ANSWER_TOKENS) -> str:
        """A sentence when the answer would not fit in the context, else ""."""
        room = self.context_tokens - self.prompt_tokens(turns)
        if room < BLOCK_TOKENS:
            return (
                f"This question would not fit in the model's context of {self.context_tokens} "
                f"tokens (the chat and its images take about {self.prompt_tokens(turns)}); "
                "clear the chat or ask about fewer images."
            )
        if room < min(answer_tokens, 256):
            return (
                f"Only about {room} tokens are left for the answer, so it would be cut short; "
                "clear the chat or ask about fewer images."
            )
        return ""

    # ------------------------------------------------------------ asking

    def ask(
        self,
        text: str,
        image: np.ndarray | None = None,
        *,
        region: np.ndarray | None = None,
        seed: int | None = None,
    ) -> str:
        """Ask about `image` (the document's picture), or about the `region` of it; returns the
        job id, or "" when the question cannot be sent (`error` then says why)."""
        if self.busy:
            return self._fail("Wait for the answer, or press Stop, before asking again.")
        text = text.strip()
        if not text:
            return self._fail("Type a question first.")
        if region is not None and (image is None or region.shape != image.shape[:2]):
            raise ValueError("a region needs the image it was painted on, at the same size")
        if region is not None and not region.any():
            return self._fail("The region is empty; paint over the part to ask about.")
        images = self._images_for_turn(image, region is not None)
        question = Message(USER, text, images, region)
        problem = self.context_problem([*self.messages, question],
                                       self.answer_tokens or ANSWER_TOKENS)  # fmt: skip
        if problem:
            return self._fail(problem)
        self.messages.append(question)
        self.attachments = []
        return self._send(seed)

    def attach(self, image: np.ndarray) -> None:
        """Add an image (e.g. another open document's) to the next question."""
        self.attachments.append(np.ascontiguousarray(image))
        self.messages_changed.emit()

    def stop(self) -> None:
        """Stop the answer being written, within one step; what it wrote so far stays."""
        if self.busy:
            self._cancel(self.messages[-1].job_id)

    def regenerate(self) -> str:
        """Write the last answer again with a new seed."""
        if self.busy or len(self.messages) < 2 or self.messages[-1].role != ASSISTANT:
            return ""
        self.messages.pop()
        self.messages_changed.emit()
        return self._send(None)

    def clear(self) -> None:
        self.stop()
        self.messages, self.attachments = [], []
        self._set_error("")
        self.messages_changed.emit()

    def handle(self, event: Event) -> None:
        """Apply an engine event for one of this conversation's answers."""
        index = next((i for i, m in enumerate(self.messages)
                      if m.role == ASSISTANT and m.job_id == event.job_id), None)  # fmt: skip
        if index is None:
            return
        answer = self.messages[index]
        match event:
            case TextDelta(text=delta) if answer.state == STREAMING:
                answer.text += delta
            case TextResult(text=whole) if answer.state == STREAMING:
                answer.text = whole
            case Finished() if answer.state == STREAMING:
                answer.state = DONE
            case Failed(message=message, code=code) if answer.state == STREAMING:
                answer.state = STOPPED if code == "cancelled" else FAILED
                answer.error = "" if code == "cancelled" else message
                if answer.error:
                    self._set_error(message)
            case _:
                return
        self.message_updated.emit(index)
        if answer.state != STREAMING:
            self.busy_changed.emit(False)

    # ------------------------------------------------------------ saving

    def to_dict(self) -> dict:
        """The conversation as JSON-ready data (images as PNG, regions as packed bits)."""
        return {"messages": [_message_to_dict(m) for m in self.messages]}

    def load_dict(self, data: dict) -> bool:
        """Replace the messages with saved ones; an answer cut off (by a crash) shows as stopped.
        Returns True when the last answer was cut off, so the caller may ask again."""
        self.messages = [_message_from_dict(m) for m in data.get("messages", [])]
        cut_off = bool(self.messages) and self.messages[-1].state == STREAMING
        for message in self.messages:
            if message.state == STREAMING:
                message.state = STOPPED
        self.messages_changed.emit()
        return cut_off

    # ------------------------------------------------------------ inside

    def _images_for_turn(self, image: np.ndarray | None, region: bool) -> tuple[np.ndarray, ...]:
        """The document's image when it is new to the chat (or the region needs it first),
        then the attachments."""
        images = list(self.attachments)
        if image is not None and (region or not self._already_sent(image)):
            images.insert(0, np.ascontiguousarray(image))
        return tuple(images)

    def _already_sent(self, image: np.ndarray) -> bool:
        for message in reversed(self.messages):
            for sent in message.images:
                if sent.shape == image.shape and np.array_equal(sent, image):
                    return True
        return False

    def _send(self, seed: int | None) -> str:
        question = self.messages[-1]
        seed = random.randint(0, MAX_SEED) if seed is None else seed
        turns = tuple(ChatTurn(m.role, m.text, m.images) for m in self.messages
                      if m.state in (DONE, STOPPED) and m.text)  # fmt: skip
        job_id = new_job_id()
        region = question.region
        self.messages.append(Message(ASSISTANT, "", state=STREAMING, seed=seed, job_id=job_id))
        self._set_error("")
        self.messages_changed.emit()
        self.busy_changed.emit(True)
        self._submit(Understand(job_id, turns, seed=seed, mask=region, steps=self.steps,
                                max_tokens=self.answer_tokens))  # fmt: skip
        return job_id

    def _fail(self, sentence: str) -> str:
        self._set_error(sentence)
        return ""

    def _set_error(self, sentence: str) -> None:
        if sentence != self.error:
            self.error = sentence
            self.error_changed.emit(sentence)


def encode_png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as picture:
        return np.asarray(picture.convert("RGB")).copy()


def _message_to_dict(message: Message) -> dict:
    data = {
        "role": message.role,
        "text": message.text,
        "images": [encode_png(im) for im in message.images],
        "state": message.state,
        "seed": message.seed,
        "error": message.error,
    }
    if message.region is not None:
        bits = base64.b64encode(np.packbits(message.region)).decode("ascii")
        data["region"] = {"shape": list(message.region.shape), "bits": bits}
    return data


def _message_from_dict(data: dict) -> Message:
    region = None
    if data.get("region"):
        shape = tuple(data["region"]["shape"])
        bits = np.frombuffer(base64.b64decode(data["region"]["bits"]), np.uint8)
        region = np.unpackbits(bits)[: shape[0] * shape[1]].reshape(shape).astype(bool)
    return Message(
        role=data["role"],
        text=data["text"],
        images=tuple(decode_png(im) for im in data.get("images", [])),
        region=region,
        state=data.get("state", DONE),
        seed=int(data.get("seed", 0)),
        error=data.get("error", ""),
    )

"""The text tokenizer (tokenizer.json) and one prompt builder per task, with the official strings.

A prompt is a list of pieces: `str` runs of text (special tokens spelled as text) and `ImageCodes`
(VQ codes of one image, without the LLM offset). Strings: shared/notes/backbone_facts.md §4.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engine.errors import BadCheckpoint, BadInput

# Special tokens, looked up by these strings in tokenizer.json; ids never live in code.
MASK = "<|mask|>"  # id 156895 in the official vocabulary (facts §4.1, name unconfirmed)
IMAGE_START = "<|image|>"
IMAGE_END = "<|/image|>"
BEGIN_IMAGE = "<boi>"
UNCONDITION = "<uncondition>"
ROLE_SYSTEM, ROLE_HUMAN, ROLE_ASSISTANT = (
    "<role>SYSTEM</role>",
    "<role>HUMAN</role>",
    "<role>ASSISTANT</role>",
)

SYSTEM_T2I = "You are a text-to-image generation assistant."
SYSTEM_T2I_THINKING = "You are a text-to-image generation assistant with a thinking process."
SYSTEM_UNDERSTAND = "You are a multimodal understanding assistant."
SYSTEM_EDIT = "You are an image editing assistant."


@dataclass(frozen=True, eq=False)
class ImageCodes:
    """One image's VQ codes in raster order, as the image tokenizer gives them."""

    codes: np.ndarray  # [h, w] int, 0 <= code < 16384

    @property
    def grid(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageCodes) and np.array_equal(self.codes, other.codes)


Piece = str | ImageCodes


def reserved(n: int) -> str:
    return f"<|reserved_token_{n}|>"


def image_header(h: int, w: int) -> str:
    """What precedes an image's codes: h and w are token-grid sizes (16 px per token)."""
    return f"{IMAGE_START}{reserved(h)}{reserved(w)}{BEGIN_IMAGE}"


def image_block(image: ImageCodes) -> list[Piece]:
    return [image_header(*image.grid), image, IMAGE_END]


def system(text: str) -> str:
    return f"{ROLE_SYSTEM} {text} "


def text_to_image(prompt: str, h: int, w: int) -> list[Piece]:
    return [f"{system(SYSTEM_T2I)}{ROLE_HUMAN}{prompt}{ROLE_ASSISTANT}{image_header(h, w)}"]


def text_to_image_uncond(h: int, w: int) -> list[Piece]:
    return text_to_image(UNCONDITION, h, w)


def thinking(prompt: str) -> list[Piece]:
    """Phase 1 of thinking mode: the model writes its thoughts, then its own image header."""
    return [f"{system(SYSTEM_T2I_THINKING)}{ROLE_HUMAN}{prompt}{ROLE_ASSISTANT}"]


def understanding(turns: Sequence[tuple[str, str, Sequence[ImageCodes]]]) -> list[Piece]:
    """A chat: (role, text, images) turns, images at the start of their message; ends on ASSISTANT.

    One turn is the official single-question format; later turns follow the same pattern.
    """
    pieces: list[Piece] = [system(SYSTEM_UNDERSTAND)]
    for role, text, images in turns:
        pieces.append(ROLE_HUMAN if role == "user" else ROLE_ASSISTANT)
        for image in images:
            pieces += image_block(image)
        pieces.append(text)
    pieces.append(ROLE_ASSISTANT)
    return merge(pieces)


def edit(source: ImageCodes, instruction: str) -> list[Piece]:
    """Conditional edit branch; the output grid equals the source grid."""
    h, w = source.grid
    return merge(
        [f"{system(SYSTEM_EDIT)}{ROLE_HUMAN}", *image_block(source)]
        + [f"{instruction}{ROLE_ASSISTANT}{image_header(h, w)}"]
    )


def edit_no_text(source: ImageCodes) -> list[Piece]:
    return edit(source, UNCONDITION)


def edit_no_image(instruction: str, h: int, w: int) -> list[Piece]:
    return [
        f"{system(SYSTEM_EDIT)}{ROLE_HUMAN}{IMAGE_START}{instruction}{ROLE_ASSISTANT}"
        f"{image_header(h, w)}"
    ]


def merge(pieces: list[Piece]) -> list[Piece]:
    """Join neighbouring strings, so each text run is tokenized as one string."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        elif not (isinstance(piece, str) and piece == ""):
            out.append(piece)
    return out


class TextTokenizer:
    """tokenizer.json through the `tokenizers` library; adds no BOS or EOS of its own."""

    def __init__(self, path: Path, image_token_offset: int, eos_id: int):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:
            raise BadCheckpoint(f"The tokenizer file {path} cannot be read ({error}).") from None
        self.image_token_offset = image_token_offset
        self.eos_id = eos_id
        self.mask_id = self.token_id(MASK)
        self.begin_image_id = self.token_id(BEGIN_IMAGE)
        self.image_end_id = self.token_id(IMAGE_END)

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise BadCheckpoint(f"tokenizer.json has no special token {token}.")
        return token_id

    def encode(self, pieces: Sequence[Piece]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, ImageCodes):
                ids += (piece.codes.reshape(-1).astype(np.int64) + self.image_token_offset).tolist()
            else:
                self._check_reserved(piece)
                ids += self.tokenizer.encode(piece, add_special_tokens=False).ids
        return ids

    def _check_reserved(self, text: str) -> None:
        start = 0
        while (start := text.find("<|reserved_token_", start)) >= 0:
            end = text.index("|>", start) + 2
            if self.tokenizer.token_to_id(text[start:end]) is None:
                size = text[start + len("<|reserved_token_") : end - 2]
                raise BadInput(f"An image grid of {size} tokens is larger than the model supports.")
            start = end

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        text_ids = [i for i in ids if i < self.image_token_offset]
        return self.tokenizer.decode(text_ids, skip_special_tokens=skip_special)

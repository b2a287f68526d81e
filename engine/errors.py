"""Errors the engine raises on purpose: each message is one sentence a user can act on."""


class StudioError(Exception):
    """A problem the user can fix; `code` lets the app pick a remedy without parsing text."""

    code = "error"


class BadInput(StudioError):
    """An image, mask, prompt or parameter the task cannot take."""

    code = "bad_input"


class BadCheckpoint(StudioError):
    """A model folder that is missing a part, is truncated, or holds some other model."""

    code = "bad_checkpoint"


class OutOfMemory(StudioError):
    code = "out_of_memory"


class Cancelled(Exception):
    """Raised from an `on_step` callback to stop a run between two denoising steps."""

    code = "cancelled"

"""UndoStack: a bounded list of steps with a cursor; the owner knows how to undo each kind."""

from __future__ import annotations

from typing import Any

DEPTH = 200  # steps kept; the oldest are dropped beyond this
BUDGET = 512 << 20  # bytes of step data kept; the oldest steps are dropped beyond this


class UndoStack:
    """Steps done so far and steps undone that can be redone. A new step drops the redo side."""

    def __init__(self, depth: int = DEPTH, budget: int = BUDGET):
        self.depth = depth
        self.budget = budget
        self._done: list[Any] = []
        self._undone: list[Any] = []

    def push(self, step: Any) -> None:
        """Add a done step; the redo side is dropped, and the oldest steps beyond the depth or
        the byte budget (the newest step is always kept)."""
        self._done.append(step)
        self._undone.clear()
        if len(self._done) > self.depth:
            del self._done[0]
        while len(self._done) > 1 and self.nbytes > self.budget:
            del self._done[0]

    def undo(self) -> Any | None:
        """The step to undo now (it moves to the redo side), or None."""
        if not self._done:
            return None
        step = self._done.pop()
        self._undone.append(step)
        return step

    def redo(self) -> Any | None:
        if not self._undone:
            return None
        step = self._undone.pop()
        self._done.append(step)
        return step

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def __len__(self) -> int:
        return len(self._done)

    @property
    def nbytes(self) -> int:
        """Bytes held by the steps' own data (images shared with versions are not counted)."""
        return sum(getattr(step, "nbytes", 0) for step in (*self._done, *self._undone))

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()

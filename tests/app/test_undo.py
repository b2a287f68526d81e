"""UndoStack: bounded by depth and by bytes, newest kept; a new step drops the redo side."""

from dataclasses import dataclass

from app.undo import UndoStack


@dataclass
class Step:
    name: str
    nbytes: int = 0


def test_depth_and_budget_drop_the_oldest_steps():
    stack = UndoStack(depth=3, budget=100)
    for name in "abcd":
        stack.push(Step(name, 10))
    assert len(stack) == 3 and stack.undo().name == "d"
    stack.redo()
    stack.push(Step("big", 90))  # depth drops "b"; then c + d + big = 110 > 100: "c" goes
    assert len(stack) == 2 and stack.nbytes == 100
    stack.push(Step("huge", 500))  # alone over budget: still kept, it is the newest
    assert len(stack) == 1 and stack.undo().name == "huge"


def test_new_step_drops_redo():
    stack = UndoStack()
    stack.push(Step("a"))
    stack.push(Step("b"))
    assert stack.undo().name == "b" and stack.can_redo
    stack.push(Step("c"))
    assert not stack.can_redo and stack.redo() is None
    assert [stack.undo().name, stack.undo().name, stack.undo()] == ["c", "a", None]

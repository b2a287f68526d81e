"""Document: one open image, its mask, its versions and its jobs, with undo. No widgets.

- `versions` holds every image this document has had: the opened one, then one per result. Each
  knows its parent (the version the job started from) and the job that made it. `current` is the
  version new work starts from and the one saved; `viewed` is the one on screen (a click on a
  thumbnail views a version without making it current). An edit starts from the viewed version.
- `mask` is a MaskLayer over the current version's pixels: uint8 coverage, soft at brush edges.
  It changes through brush strokes (`begin_stroke`, `stroke_to`, `end_stroke`), rectangle and
  lasso selections (added or subtracted), invert, clear, fill and grow/shrink. An edit sends
  `mask.as_bool()` (coverage >= 128, see app/mask.py) taken at that moment, as a new array, so
  painting on while the job runs changes nothing in it. No coverage: a global edit.
- One undo stack holds mask changes (only the 256-px tiles they touched, compressed) and version
  changes (which version is current, a deletion). A result arriving adds its version for good (it
  cost minutes of compute and is never undone away) and makes it current; undo makes the version
  it started from current again, and redo returns to the result.

Every change goes through a method that emits: `mask_changed(x, y, w, h)` with the dirty rect in
image pixels, `image_changed` when the viewed pixels change, `versions_changed`, `undo_changed`,
`progress_changed(job_id)`, `error_changed(text)`, `job_finished(job_id)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QObject, Signal

from app import qt_workaround
from app.mask import MaskLayer, MaskStep, Rect, clip_rect, polygon_mask
from app.undo import UndoStack
from engine.protocol import (
    Edit,
    Event,
    Failed,
    Finished,
    ImageResult,
    Progress,
    Request,
    TextDelta,
    new_job_id,
)

OTHER_SIZE = (
    "The mask was painted on a version of another size; make this version current to paint a "
    "mask on it, or clear the mask for a global edit."
)
LAST_VERSION = "A document keeps at least one version; close the tab to drop this one."
NO_INSTRUCTION = "Type an instruction first, for example 'make the sky a sunset'."


@dataclass(eq=False)
class Version:
    """One image of the document. `metadata` is what the engine returned (prompt, seed, ...)."""

    id: str
    image: np.ndarray  # [H, W, 3] uint8, never written after the version is made
    metadata: dict[str, str]
    parent: str | None  # the version the job started from; None for the opened image
    job_id: str | None  # the job that made it; None for the opened image
    starred: bool = False
    created: float = field(default_factory=time.time)
    thinking: str | None = None  # the reasoning text, for thinking-mode results


@dataclass
class DocumentJob:
    """A job this document sent and that has not ended; `progress` is its last Progress."""

    job_id: str
    request: Request
    source: str | None  # the version it started from
    progress: Progress | None = None
    thinking: str = ""  # TextDelta text so far
    started: float = field(default_factory=time.time)


_VersionState = tuple[tuple[Version, ...], str, str]  # versions, current, viewed


@dataclass(frozen=True)
class VersionStep:
    """An undoable change of the version list or of the current version.

    When the current version's size changes, the mask is replaced; the old and new coverage ride
    along (compressed) so undo brings the old mask back.
    """

    before: _VersionState
    after: _VersionState
    masks: tuple[MaskLayer, MaskLayer] | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.masks is None else sum(m.coverage.nbytes for m in self.masks)


class Document(QObject):
    image_changed = Signal()  # the viewed version's pixels changed
    mask_changed = Signal(int, int, int, int)  # dirty rect in image pixels: x, y, w, h
    versions_changed = Signal()  # the list, the current one, a star
    undo_changed = Signal()  # can_undo / can_redo may have changed
    progress_changed = Signal(str)  # job id: its progress or thinking text moved on
    error_changed = Signal(str)  # "" when the error is cleared
    job_finished = Signal(str)  # job id: it ended (result, failure or cancel)

    def __init__(
        self,
        image: np.ndarray,
        submit: Callable[[Request], object],
        *,
        path: str | None = None,
        title: str = "",
        metadata: dict[str, str] | None = None,
    ):
        super().__init__()
        image = _checked_image(image)
        self._submit = submit  # EngineClient.submit, or a list's append in tests
        self.path = path
        self.title = title or (path.replace("\\", "/").rsplit("/", 1)[-1] if path else "Untitled")
        first = Version("v1", image, dict(metadata or {}), None, None)
        self.versions: list[Version] = [first]
        self.current = first.id
        self.viewed = first.id
        self.mask = MaskLayer(*image.shape[:2])
        self.jobs: dict[str, DocumentJob] = {}
        self.error = ""
        self.history = UndoStack()
        self._serial = 1
        self._stroke: dict | None = None  # the open brush stroke's brush and last point

    # ------------------------------------------------------------ reading

    @property
    def image(self) -> np.ndarray:
        """The viewed version's pixels, [H, W, 3] uint8."""
        return self.version(self.viewed).image

    def version(self, version_id: str | None) -> Version | None:
        return next((v for v in self.versions if v.id == version_id), None)

    @property
    def current_version(self) -> Version:
        return self.version(self.current)  # type: ignore[return-value]

    @property
    def viewed_version(self) -> Version:
        return self.version(self.viewed)  # type: ignore[return-value]

    @property
    def can_undo(self) -> bool:
        return self.history.can_undo or self._stroke is not None

    @property
    def can_redo(self) -> bool:
        return self.history.can_redo

    def mask_snapshot(self) -> np.ndarray | None:
        """The bool mask an edit would send now (a new array), or None when nothing is masked."""
        return self.mask.as_bool() if self.mask.any() else None

    # ------------------------------------------------------------ brush strokes

    def begin_stroke(
        self, x: float, y: float, radius: float, hardness: float = 1.0, erase: bool = False
    ) -> None:
        """Start a stroke with one dab at image point (x, y); radius in image pixels."""
        self.end_stroke()
        self._stroke = {"brush": (radius, hardness, erase), "at": (x, y), "carry": 0.0}
        self._emit_mask(self.mask.dab(x, y, radius, hardness, erase))

    def stroke_to(self, x: float, y: float) -> None:
        """Continue the stroke to (x, y) with dabs spaced along the way, so no gap is left."""
        if self._stroke is None:
            return
        radius, hardness, erase = self._stroke["brush"]
        rect, self._stroke["carry"] = self.mask.line(
            self._stroke["at"], (x, y), radius, hardness, erase, self._stroke["carry"]
        )
        self._stroke["at"] = (x, y)
        self._emit_mask(rect)

    def end_stroke(self) -> None:
        """Close the stroke: it becomes one undo step."""
        if self._stroke is None:
            return
        self._stroke = None
        self._push_mask_step(self.mask.commit(), emit=False)  # its dabs were reported as made

    def paint_line(
        self,
        points: Sequence[tuple[float, float]],
        radius: float,
        hardness: float = 1.0,
        erase: bool = False,
    ) -> None:
        """A whole stroke through `points` at once (scripts, tests)."""
        (x, y), *rest = points
        self.begin_stroke(x, y, radius, hardness, erase)
        for px, py in rest:
            self.stroke_to(px, py)
        self.end_stroke()

    # ------------------------------------------------------------ whole-mask actions

    def invert_mask(self) -> None:
        self.end_stroke()
        step = self.mask.invert()
        self.history.push(step)
        self._emit_mask(step.bounds)
        self.undo_changed.emit()

    def clear_mask(self) -> None:
        self._set_whole_mask(0)

    def grow_mask(self, pixels: int) -> None:
        """Grow the masked area by `pixels` all round, or shrink it when negative."""
        self.end_stroke()
        self.mask.grow(int(pixels))
        self._push_mask_step(self.mask.commit())

    def fill_mask(self) -> None:
        self._set_whole_mask(255)

    def _set_whole_mask(self, value: int) -> None:
        self.end_stroke()
        height, width = self.mask.shape
        self.mask.set_region((0, 0, width, height), value)
        self._push_mask_step(self.mask.commit())

    def select_rect(
        self, x0: float, y0: float, x1: float, y1: float, subtract: bool = False
    ) -> None:
        """Add (or subtract) the pixels whose centres lie in the rectangle between two corners."""
        self.end_stroke()
        left, right = sorted((x0, x1))
        top, bottom = sorted((y0, y1))
        ix0, iy0 = int(np.ceil(left - 0.5)), int(np.ceil(top - 0.5))
        ix1, iy1 = int(np.floor(right - 0.5)) + 1, int(np.floor(bottom - 0.5)) + 1
        self.mask.set_region((ix0, iy0, ix1 - ix0, iy1 - iy0), 0 if subtract else 255)
        self._push_mask_step(self.mask.commit())

    def select_lasso(self, points: Sequence[tuple[float, float]], subtract: bool = False) -> None:
        """Add (or subtract) the inside of the closed polygon through `points` (image pixels)."""
        self.end_stroke()
        if len(points) < 3:
            return
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (int(min(xs)) - 1, int(min(ys)) - 1)
        rect = clip_rect(
            (*box, int(max(xs)) + 2 - box[0], int(max(ys)) + 2 - box[1]), self.mask.shape
        )
        if rect is None:
            return
        inside = polygon_mask(points, rect)
        self.mask.set_region(rect, 0 if subtract else 255, where=inside)
        self._push_mask_step(self.mask.commit())

    # ------------------------------------------------------------ undo

    def undo(self) -> None:
        self.end_stroke()
        step = self.history.undo()
        if step is not None:
            self._apply(step, undo=True)
            self.undo_changed.emit()

    def redo(self) -> None:
        self.end_stroke()
        step = self.history.redo()
        if step is not None:
            self._apply(step, undo=False)
            self.undo_changed.emit()

    def _apply(self, step: MaskStep | VersionStep, undo: bool) -> None:
        if isinstance(step, VersionStep):
            self._set_state(step.before if undo else step.after)
            if step.masks is not None:
                self.mask = step.masks[0 if undo else 1]
                self._emit_mask((0, 0, self.mask.shape[1], self.mask.shape[0]))
            return
        rect = self.mask.undo(step) if undo else self.mask.redo(step)
        self._emit_mask(rect)

    def _push_mask_step(self, step: MaskStep | None, emit: bool = True) -> None:
        """Close a mask change: one undo step, and (unless the change reported its own rects)
        the changed tiles' rect to repaint."""
        if step is not None:
            self.history.push(step)
            if emit:
                self._emit_mask(step.bounds)
            self.undo_changed.emit()

    def _emit_mask(self, rect: Rect | None) -> None:
        if rect is not None:
            qt_workaround.check()  # each emit loses a reference to True on PySide6 6.12 + Py 3.11
            self.mask_changed.emit(*rect)

    # ------------------------------------------------------------ versions

    def view_version(self, version_id: str) -> None:
        """Show a version without making it current (not an undo step)."""
        if self.version(version_id) is None or version_id == self.viewed:
            return
        self.viewed = version_id
        self.image_changed.emit()
        self.versions_changed.emit()

    def make_current(self, version_id: str) -> None:
        """Make a version the one new work starts from and the one saved; it is viewed too."""
        if self.version(version_id) is None:
            return
        self._change_versions(self.versions, version_id, version_id)

    def delete_version(self, version_id: str) -> None:
        """Drop a version (undoable). The current one falls back to its parent or the newest."""
        gone = self.version(version_id)
        if gone is None:
            return
        if len(self.versions) == 1:
            self.set_error(LAST_VERSION)
            return
        rest = [v for v in self.versions if v is not gone]
        ids = {v.id for v in rest}
        fallback = gone.parent if gone.parent in ids else rest[-1].id
        current = fallback if self.current == version_id else self.current
        viewed = current if self.viewed == version_id else self.viewed
        self._change_versions(rest, current, viewed)

    def star_version(self, version_id: str, starred: bool | None = None) -> None:
        """Star or unstar a version (toggles when `starred` is None); not an undo step."""
        version = self.version(version_id)
        if version is None:
            return
        version.starred = (not version.starred) if starred is None else starred
        self.versions_changed.emit()

    def _change_versions(self, versions: Sequence[Version], current: str, viewed: str) -> None:
        self.end_stroke()
        before = (tuple(self.versions), self.current, self.viewed)
        after = (tuple(versions), current, viewed)
        if before == after:
            return
        masks = None
        new_shape = next(v for v in versions if v.id == current).image.shape[:2]
        if new_shape != self.mask.shape:
            masks = (self.mask, MaskLayer(*new_shape))
        step = VersionStep(before, after, masks)
        self.history.push(step)
        self._apply(step, undo=False)
        self.undo_changed.emit()

    def _set_state(self, state: _VersionState) -> None:
        versions, current, viewed = state
        pixels_before = self.image
        self.versions, self.current, self.viewed = list(versions), current, viewed
        if self.image is not pixels_before:
            self.image_changed.emit()
        self.versions_changed.emit()

    def restore(
        self,
        versions: Sequence[Version],
        current: str,
        viewed: str,
        mask: np.ndarray | None = None,
    ) -> None:
        """Put back a saved state (autosave, crash recovery): versions, which is current and
        viewed, and the mask's coverage ([H, W] uint8, or bool). Undo history starts afresh."""
        ids = [v.id for v in versions]
        if not versions or current not in ids or viewed not in ids:
            raise ValueError(
                "A restored document needs its versions, and current and viewed among them."
            )
        self.end_stroke()
        self.versions = list(versions)
        self.current, self.viewed = current, viewed
        numbers = [int(i[1:]) for i in ids if i[:1] == "v" and i[1:].isdigit()]
        self._serial = max([self._serial, *numbers])  # new versions continue the numbering
        self.mask = MaskLayer(*self.current_version.image.shape[:2])
        if mask is not None and mask.shape == self.mask.shape:
            self.mask.coverage[...] = np.where(mask, 255, 0) if mask.dtype == bool else mask
        self.history.clear()
        self.image_changed.emit()
        self.versions_changed.emit()
        self.undo_changed.emit()
        self._emit_mask((0, 0, self.mask.shape[1], self.mask.shape[0]))

    def _add_version(self, image: np.ndarray, metadata: dict[str, str], parent: str | None,
                     job_id: str | None, thinking: str | None = None) -> Version:  # fmt: skip
        self._serial += 1
        version = Version(
            f"v{self._serial}", _checked_image(image), dict(metadata), parent, job_id,
            thinking=thinking,
        )  # fmt: skip
        self.versions.append(version)
        return version

    # ------------------------------------------------------------ jobs

    def edit(self, instruction: str, **params) -> Edit | None:
        """Send an edit of the viewed version: masked when the mask covers anything, else global.

        `params` are Edit's optional fields (seed, steps, cfg_text_scale, ...). The request holds a
        snapshot of the mask, so later painting changes nothing in it. Returns the request sent,
        or None (with `error` set) when there is nothing to send.
        """
        self.end_stroke()
        if not instruction.strip():
            self.set_error(NO_INSTRUCTION)
            return None
        source = self.viewed_version
        mask = self.mask_snapshot()
        if mask is not None and mask.shape != source.image.shape[:2]:
            self.set_error(OTHER_SIZE)
            return None
        request = Edit(new_job_id(), source.image, instruction.strip(), mask=mask, **params)
        return request if self.track(request, source.id) else None

    def track(self, request: Request, source: str | None = None) -> bool:
        """Send a request whose events this document handles (its results become versions).

        False, with `error` set to the client's sentence, when the client refused it.
        """
        self.jobs[request.job_id] = DocumentJob(request.job_id, request, source)
        self.set_error("")
        try:
            self._submit(request)
        except Exception as error:  # e.g. EngineError: the engine is gone; keep everything else
            del self.jobs[request.job_id]
            self.set_error(str(error) or "The engine did not take the job.")
            return False
        return True

    def handle(self, event: Event) -> bool:
        """Apply one engine event; returns False when the event is not for this document's jobs."""
        job = self.jobs.get(getattr(event, "job_id", ""))
        if job is None:
            return False
        match event:
            case Progress():
                job.progress = event
                self.progress_changed.emit(job.job_id)
            case TextDelta(text=text):
                job.thinking += text
                self.progress_changed.emit(job.job_id)
            case ImageResult(image=image, metadata=metadata, thinking=thinking):
                self._take_result(job, image, metadata, thinking or job.thinking or None)
            case Finished():
                self._end_job(job.job_id)
            case Failed(message=message, code=code):
                self._end_job(job.job_id)
                if code != "cancelled":
                    self.set_error(message)
        return True

    def _take_result(self, job: DocumentJob, image, metadata, thinking) -> None:
        version = self._add_version(image, metadata, job.source, job.job_id, thinking)
        self._change_versions(self.versions, version.id, version.id)

    def _end_job(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.job_finished.emit(job_id)

    def set_error(self, text: str) -> None:
        if text != self.error:
            self.error = text
            self.error_changed.emit(text)


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"An image must be [H, W, 3] uint8, not {image.shape} {image.dtype}.")
    if image.size == 0:
        raise ValueError("An image must have at least one pixel.")
    image = image.view()  # read-only for us; the caller's array keeps its own flags
    image.setflags(write=False)
    return image

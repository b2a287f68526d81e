"""JobsPanel: the queue as rows (kind, label, stage, progress, time left) with their buttons, and
JobProgress, which shows the running job in the status bar and the window title.

Qt 6 has no taskbar progress API (QWinTaskbarProgress went with Qt 5's winextras), so the window
title carries the percentage, which the taskbar, the dock and window switchers all show.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job, JobList, format_seconds

STATE_COLOURS = {FAILED: "#d9534f", CANCELLED: "#888888", DONE: "#5cb85c"}


class JobRow(QFrame):
    """One job: what it is, how far it got, and what can be done with it."""

    def __init__(self, jobs: JobList, job: Job, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs, self.job_id = jobs, job.id
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.title.setMinimumWidth(40)  # long labels are cut, never widen the panel
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.state = QLabel()
        self.bar = QProgressBar(maximum=1000, textVisible=False, maximumHeight=8)
        self.message = QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.front = self._button("⤒", self.tr("Run this job next"), self._front)
        self.cancel = self._button("✕", self.tr("Cancel this job (stops it if it is running)"),
                                   self._cancel)  # fmt: skip
        self.again = self._button("↻", self.tr("Run again with the next seeds"), self._repeat)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        for button in (self.front, self.again, self.cancel):
            top.addWidget(button)
        column = QVBoxLayout(self)
        column.setContentsMargins(6, 4, 6, 4)
        column.addLayout(top)
        column.addWidget(self.bar)
        column.addWidget(self.state)
        column.addWidget(self.message)
        self.refresh(job)

    def _button(self, text: str, tip: str, slot) -> QToolButton:
        button = QToolButton(text=text, toolTip=tip, autoRaise=True)
        button.clicked.connect(slot)
        return button

    def refresh(self, job: Job) -> None:
        self.title.setText(f"{job.kind.capitalize()}: {job.label}" if job.label else job.kind)
        self.title.setToolTip(job.label)
        self.bar.setValue(round(job.fraction * 1000))
        self.bar.setVisible(job.state in (RUNNING, QUEUED))
        self.state.setText(self._state_text(job))
        colour = STATE_COLOURS.get(job.state, "")
        self.state.setStyleSheet(f"color: {colour}" if colour else "")
        failed = job.state == FAILED
        self.message.setVisible(failed)
        self.message.setText(f"{job.message}\n{job.advice}".strip() if failed else "")
        self.message.setStyleSheet(f"color: {STATE_COLOURS[FAILED]}")
        self.front.setVisible(job.state == QUEUED)
        self.cancel.setVisible(job.state in (QUEUED, RUNNING))
        self.cancel.setToolTip(self.tr("Stop this job now") if job.state == RUNNING
                               else self.tr("Remove this job from the queue"))  # fmt: skip
        self.again.setVisible(hasattr(job.request, "seed"))

    def _state_text(self, job: Job) -> str:
        match job.state:
            case "queued":
                return self.tr("Waiting")
            case "running":
                stage = f"{job.stage} {job.step}/{job.total}" if job.total else self.tr("starting")
                left = format_seconds(job.seconds_left)
                return f"{stage} — {left} left" if left else stage
            case "done":
                return self.tr("Done")
            case "cancelled":
                return self.tr("Cancelled")
        return self.tr("Failed")

    def _front(self) -> None:
        self.jobs.move_to_front(self.job_id)

    def _cancel(self) -> None:
        self.jobs.cancel(self.job_id)

    def _repeat(self) -> None:
        panel = self.parent()
        while panel is not None and not isinstance(panel, JobsPanel):
            panel = panel.parent()
        self.jobs.repeat(self.job_id, panel.repeat_count.value() if panel else 1)


class JobsPanel(QWidget):
    """The queue panel: every job, newest at the bottom, with pause and repeat controls."""

    def __init__(self, jobs: JobList, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs = jobs
        self.rows: dict[str, JobRow] = {}
        self.pause = QPushButton(self.tr("Pause after this job"), checkable=True)
        self.pause.setToolTip(self.tr("Let the running job finish, then hold the queue"))
        self.pause.toggled.connect(jobs.set_paused)
        self.repeat_count = QSpinBox(minimum=1, maximum=99, prefix="×")
        self.repeat_count.setToolTip(self.tr("How many times ↻ runs a job again, each with the "
                                             "next seed"))  # fmt: skip
        self.clear = QPushButton(self.tr("Clear finished"))
        self.clear.setToolTip(self.tr("Remove finished, failed and cancelled jobs from the list"))
        self.clear.clicked.connect(jobs.clear_ended)
        self.empty = QLabel(self.tr("No jobs yet. Edits, images and answers queue here."),
                            wordWrap=True, alignment=Qt.AlignmentFlag.AlignCenter)  # fmt: skip
        controls = QHBoxLayout()
        controls.addWidget(self.pause)
        controls.addWidget(self.repeat_count)
        controls.addStretch()
        controls.addWidget(self.clear)
        self.list = QVBoxLayout()
        self.list.setSpacing(4)
        body = QWidget()
        outer = QVBoxLayout(body)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addLayout(self.list)
        outer.addStretch()
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        column = QVBoxLayout(self)
        column.addLayout(controls)
        column.addWidget(self.empty)
        column.addWidget(scroll, 1)
        jobs.jobs_changed.connect(self.rebuild)
        jobs.progress_changed.connect(self._progress)
        jobs.paused_changed.connect(self._paused)
        self.rebuild()

    def rebuild(self) -> None:
        """Rows in the order of `JobList.jobs`, reusing each job's row."""
        current = self.jobs.jobs
        keep = {job.id for job in current}
        for job_id in [i for i in self.rows if i not in keep]:
            self.rows.pop(job_id).deleteLater()
        for index, job in enumerate(current):
            row = self.rows.get(job.id)
            if row is None:
                row = self.rows[job.id] = JobRow(self.jobs, job)
            else:
                row.refresh(job)
            if self.list.indexOf(row) != index:
                self.list.insertWidget(index, row)
        self.empty.setVisible(not current)
        self.clear.setEnabled(any(j.state not in (QUEUED, RUNNING) for j in current))

    def _progress(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job_id in self.rows:
            self.rows[job_id].refresh(job)

    def _paused(self, paused: bool) -> None:
        self.pause.blockSignals(True)
        self.pause.setChecked(paused)
        self.pause.blockSignals(False)


class JobProgress(QWidget):
    """A small bar and sentence for the status bar; also puts the percentage in the window title."""

    def __init__(self, jobs: JobList, window: QMainWindow, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs, self.window = jobs, window
        self.base_title = window.windowTitle()
        self.text = QLabel()
        self.bar = QProgressBar(maximum=1000, textVisible=False, maximumWidth=140,
                                maximumHeight=10)  # fmt: skip
        self.setToolTip(self.tr("The running job; the queue panel has the rest"))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.text)
        row.addWidget(self.bar)
        jobs.jobs_changed.connect(self.refresh)
        jobs.progress_changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
        fraction, summary = self.jobs.overall()
        running = self.jobs.running is not None
        self.text.setText(summary)
        self.bar.setVisible(running)
        self.bar.setValue(round(fraction * 1000))
        title = self.window.windowTitle()
        if not title.startswith("["):
            self.base_title = title  # someone else changed the title (e.g. the document name)
        self.window.setWindowTitle(f"[{fraction:.0%}] {self.base_title}" if running
                                   else self.base_title)  # fmt: skip

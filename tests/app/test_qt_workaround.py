"""The guard keeps True and None alive however many signals are emitted and Qt virtuals called
(PySide6 6.12 on Python 3.11 drops a reference to True per emit, to None per override call)."""

import sys

from PySide6.QtCore import QObject, Signal

from app import qt_workaround


class Emitter(QObject):
    fired = Signal()


def test_references_lost_by_emits_are_put_back():
    emitter = Emitter()
    qt_workaround.check()
    before = sys.getrefcount(True)
    for _ in range(20_000):
        emitter.fired.emit()
    lost = before - sys.getrefcount(True)
    added = qt_workaround.check()
    assert sys.getrefcount(True) >= before - 5  # back to (about) where it was
    assert added == (lost if qt_workaround.NEEDED and lost > 0 else 0)


class Ticker(QObject):
    def timerEvent(self, event):  # noqa: N802 (Qt's name); returns None, as qasync's does
        return None


def test_references_to_none_lost_by_overrides_are_put_back(qapp):
    from PySide6.QtCore import QTimer

    qt_workaround.check()
    ticker = Ticker()
    ticker.startTimer(0)
    before = sys.getrefcount(None)
    QTimer.singleShot(100, qapp.quit)
    qapp.exec()
    qt_workaround.check()
    assert sys.getrefcount(None) >= before - 50

"""The guard keeps True and None alive however many signals are emitted and Qt virtuals called
(PySide6 6.12 on Python 3.11 drops a reference to True per emit, to None per override call)."""

import sys

from PySide6.QtCore import QObject, Signal

from app import qt_workaround


class Emitter(QObject):
    fired = Signal()


def test_references_lost_by_emits_are_put_back():
    """After any number of emits a check lifts True's count back to the floor, far from zero.
    (Compared with the floor, not with the count before: other code may hold references above
    it, which the emits then use up first; that was an order-dependent false alarm.)"""
    emitter = Emitter()
    qt_workaround.check()
    for _ in range(20_000):
        emitter.fired.emit()
    low = sys.getrefcount(True) - 1  # getrefcount counts its own argument
    added = qt_workaround.check()
    if qt_workaround.NEEDED:
        assert sys.getrefcount(True) - 1 >= qt_workaround.FLOOR
        assert abs(added - max(0, qt_workaround.FLOOR - low)) <= 2  # the check's own references
    else:
        assert added == 0


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

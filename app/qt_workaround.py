"""A guard against a PySide6 6.12.0 bug on Python 3.11: every `SignalInstance.emit()` drops one
reference to `True` that it never took, and every Python override of a Qt virtual that returns
None (qasync's `timerEvent`, called all the time) drops one to `None`. After some thousand calls a
count reaches zero and the interpreter aborts ("Fatal Python error: bool_dealloc" or
"none_dealloc"). From Python 3.12 on these objects are immortal and the bug is harmless.

`check()` puts the lost references back: it raises the reference counts of True, False and None
to a floor far above what the calls between two checks can take away, as the interpreter itself
does for immortal objects. The references are never released, so nothing goes wrong at exit
either. `install()` runs it on a Qt timer.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, QTimer

FLOOR = 1 << 30  # far above anything the emits between two checks can take away
NEEDED = sys.version_info < (3, 12)


def check() -> int:
    """Raise the reference counts of True, False and None back to FLOOR; returns how many
    references were added to True (the one every emit takes away)."""
    if not NEEDED:
        return 0
    added = {}
    for obj in (True, False, None):
        count = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt, the first field of any object
        missing = FLOOR - count.value
        if missing > 0:
            count.value += missing
        added[obj] = max(missing, 0)
    return added[True]


def install(parent: QObject, interval_ms: int = 1000) -> QTimer | None:
    """Check now and then every `interval_ms` on the Qt loop; None where no guard is needed."""
    check()
    if not NEEDED:
        return None
    timer = QTimer(parent, interval=interval_ms)
    timer.timeout.connect(check)
    timer.start()
    return timer

"""Python's cyclic garbage collection on the GUI thread only.

The collector runs in whichever thread happens to allocate when a generation's threshold is crossed. When that is
a worker thread (tokenising a row, building an audit) and the garbage holds a dead widget, the widget's C++
destructor runs there and waits for the GUI thread inside shiboken: the worker never returns and the window
waits for it forever. Seen in the test suite: a row-building worker stuck in ``QObject::~QObject`` under
``gc_collect_main``, called from the tokenizer. The remedy is the usual one for Qt applications: switch automatic
collection off and collect from a timer on the GUI thread, with the same generation thresholds.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500


class MainThreadGarbageCollector(QObject):
    """While it exists, garbage cycles are collected on the thread that created it (the GUI thread)."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self.was_enabled = gc.isenabled()
        gc.disable()
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        self.timer.start()

    def check(self) -> None:
        """Collect the generations whose thresholds are crossed, as the automatic collector would."""
        counts = gc.get_count()
        if counts[0] <= self.thresholds[0]:
            return
        generation = 0
        if counts[1] > self.thresholds[1]:
            generation = 1
            if counts[2] > self.thresholds[2]:
                generation = 2
        gc.collect(generation)

    def stop(self) -> None:
        """Collect once more here and give collection back to Python."""
        self.timer.stop()
        gc.collect()
        if self.was_enabled:
            gc.enable()


def install(app: QObject) -> MainThreadGarbageCollector:
    """Collect garbage on ``app``'s thread for the application's lifetime (call once, on the GUI thread)."""
    existing = app.findChild(MainThreadGarbageCollector)
    return existing if existing is not None else MainThreadGarbageCollector(app)

"""A channel of background jobs on one QThread where a newer request supersedes the older ones.

Each :class:`JobChannel` owns a worker QObject moved to its own QThread. ``submit(fn)`` bumps a generation
counter and queues ``fn(progress)`` on the worker; results of any older generation are dropped, queued
stale jobs are skipped, and a running stale job is cancelled at its next progress call (core's long
functions call ``progress(done, total)``; raising from it cancels them).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

Progress = Callable[[int, int], None]
JobFn = Callable[[Progress], Any]


class Superseded(Exception):
    """Raised inside a job whose request was replaced by a newer one."""


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for the user; the known input errors of core carry their own wording."""
    from core.config import ConfigError
    from core.data import DataError
    from core.masks import MaskError
    from core.templates import TemplateError
    from core.training.models import ModelError

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, (DataError, ModelError, TemplateError, MaskError)):
        return str(exc)
    if isinstance(exc, (OSError, ValueError)):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}: {exc}); details were printed to the terminal"


class _Worker(QObject):
    """Lives in the channel's thread and runs one job at a time."""

    progressed = Signal(int, int, int)  # generation, done, total
    finished = Signal(int, object)  # generation, result
    failed = Signal(int, str, object)  # generation, message, exception

    def __init__(self, current: Callable[[], int]) -> None:
        super().__init__()
        self._current = current

    @Slot(int, object)
    def execute(self, generation: int, fn: JobFn) -> None:
        if generation != self._current():
            return  # a newer request is already queued

        def progress(done: int, total: int) -> None:
            if generation != self._current():
                raise Superseded()
            self.progressed.emit(generation, done, total)

        try:
            result = fn(progress)
        except Superseded:
            return
        except Exception as exc:  # every failure reaches the user as a message, never a traceback dialog
            if not _is_known(exc):
                traceback.print_exc(file=sys.stderr)
            self.failed.emit(generation, describe_error(exc), exc)
            return
        self.finished.emit(generation, result)


def _is_known(exc: BaseException) -> bool:
    from core.config import ConfigError
    from core.data import DataError
    from core.masks import MaskError
    from core.templates import TemplateError
    from core.training.models import ModelError

    return isinstance(exc, (ConfigError, DataError, ModelError, TemplateError, MaskError))


class JobChannel(QObject):
    """Submit jobs from the GUI thread; only the newest job's outcome is reported."""

    finished = Signal(object)  # result of the newest job
    failed = Signal(str, object)  # message, exception
    progressed = Signal(int, int)  # done, total
    busy_changed = Signal(bool)
    _requested = Signal(int, object)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._generation = 0
        self._busy = False
        self._thread = QThread()
        self._thread.setObjectName(f"sft-studio-{name}")
        self._worker = _Worker(lambda: self._generation)
        self._worker.moveToThread(self._thread)
        self._requested.connect(self._worker.execute)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.progressed.connect(self._on_progressed)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def generation(self) -> int:
        return self._generation

    def submit(self, fn: JobFn) -> int:
        """Queue ``fn(progress)``; everything submitted earlier becomes stale."""
        self._generation += 1
        self._set_busy(True)
        self._requested.emit(self._generation, fn)
        return self._generation

    def cancel(self) -> None:
        """Drop whatever is queued or running."""
        self._generation += 1
        self._set_busy(False)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Stop the thread; False when a job that cannot be interrupted (a tokenizer load) is still running."""
        self.cancel()
        self._thread.quit()
        return self._thread.wait(timeout_ms)

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    @Slot(int, object)
    def _on_finished(self, generation: int, result: object) -> None:
        if generation != self._generation:
            return
        self._busy = False  # handlers may submit again; report idle only if they did not
        self.finished.emit(result)
        if not self._busy:
            self.busy_changed.emit(False)

    @Slot(int, str, object)
    def _on_failed(self, generation: int, message: str, exc: object) -> None:
        if generation != self._generation:
            return
        self._busy = False
        self.failed.emit(message, exc)
        if not self._busy:
            self.busy_changed.emit(False)

    @Slot(int, int, int)
    def _on_progressed(self, generation: int, done: int, total: int) -> None:
        if generation == self._generation:
            self.progressed.emit(done, total)

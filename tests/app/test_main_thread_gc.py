"""Garbage cycles are collected on the GUI thread only (app.workers.main_thread_gc): a worker thread that allocates
never runs a dead widget's destructor, which deadlocked a row-building worker in the full test run."""

from __future__ import annotations

import gc
import threading


class _Cycle:
    collected_in: list[str] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.collected_in.append(threading.current_thread().name)


def test_cycles_are_collected_on_the_gui_thread_not_in_workers(qtbot):
    from app.workers.main_thread_gc import MainThreadGarbageCollector

    assert not gc.isenabled()  # the autouse fixture installed one, as the app does
    _Cycle.collected_in.clear()
    for _ in range(2_000):  # unreachable at once, but only the cycle collector frees them; past the threshold
        _Cycle()

    def allocate() -> None:  # far past generation 0's threshold, in a worker
        junk = [[i] for i in range(200_000)]  # what a tokenizer worker does; it must not collect
        assert len(junk) == 200_000

    worker = threading.Thread(target=allocate, name="worker")
    worker.start()
    worker.join()
    assert "worker" not in _Cycle.collected_in
    qtbot.waitUntil(lambda: len(_Cycle.collected_in) == 2_000, timeout=5_000)
    assert set(_Cycle.collected_in) == {threading.main_thread().name}

    collector = MainThreadGarbageCollector()
    collector.stop()
    assert not gc.isenabled()  # it was off when this one started: it stays off for the app's own collector

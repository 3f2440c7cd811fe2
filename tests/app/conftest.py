"""Fixtures for the desktop app: isolated settings, run files over tiny models, and a window driver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def gc_on_the_gui_thread(qapp):
    """As the app does (app.workers.main_thread_gc): cyclic garbage, such as the widgets of earlier tests, is
    collected on the GUI thread, never inside a worker thread where a widget's destructor deadlocks."""
    from app.workers.main_thread_gc import MainThreadGarbageCollector

    collector = MainThreadGarbageCollector()
    yield
    collector.stop()
    collector.deleteLater()


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory):
    """Recent files and geometry go to a temporary folder, never the user's real settings."""
    from PySide6.QtCore import QSettings

    folder = tmp_path_factory.mktemp("qsettings")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    yield


@pytest.fixture
def make_config(tiny_model_factory):
    """``make_config(data_path, family="qwen2_5", **data_settings)`` -> RunConfig over a tiny model."""
    from core.config import RunConfig

    def make(data_path: str | Path, family: str = "qwen2_5", chat_template: str | None = None, **data) -> RunConfig:
        cfg = RunConfig()
        cfg.model.name_or_path = str(tiny_model_factory(family))
        cfg.model.chat_template = chat_template
        cfg.data.path = str(data_path)
        for key, value in data.items():
            setattr(cfg.data, key, value)
        return cfg

    return make


@pytest.fixture
def window(qtbot):
    from app.main import MainWindow

    w = MainWindow(restore_geometry=False)
    w.confirm_close = False
    qtbot.addWidget(w)
    w.resize(1300, 850)
    w.show()
    yield w
    w.session.shutdown()


def _wait_idle(qtbot, window, timeout_ms: int = 60_000) -> None:
    def settled() -> None:
        started = window.session.loaded is not None or window.session.load_error is not None
        assert started and not window.session.busy

    qtbot.waitUntil(settled, timeout=timeout_ms)
    qtbot.wait(20)
    qtbot.waitUntil(settled, timeout=timeout_ms)


@pytest.fixture
def wait_idle(qtbot, window):
    """``wait_idle()``: wait until the load, the audit and the row build have all finished."""
    return lambda timeout_ms=60_000: _wait_idle(qtbot, window, timeout_ms)


@pytest.fixture
def open_config(qtbot, window, wait_idle):
    """Load a config into the window and wait for everything to finish."""
    def load(cfg, row: int = 0):
        window.session.row = row
        window.session.set_config(cfg)
        wait_idle()
        return window

    return load

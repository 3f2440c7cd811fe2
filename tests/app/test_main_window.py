"""Main window: run files, recent files, drag and drop, the page list, start-up cost, screenshot mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

ROOT = Path(__file__).resolve().parents[2]


def test_all_pages_are_listed_and_enabled(window):
    texts = [window.nav.item(i).text() for i in range(window.nav.count())]
    assert any("Hyperparameters" in t for t in texts) and any("Chat & Export" in t for t in texts)
    for i in range(window.nav.count()):
        item = window.nav.item(i)
        assert item.flags() & Qt.ItemFlag.ItemIsEnabled, item.text()
    assert window.stack.count() == 7
    window.show_page("chat")
    assert window.current_page == "chat" and window.stack.currentWidget() is window.chat_page


def test_save_and_open_run_file_with_recent_files(tmp_path, window, wait_idle, open_config, make_config,
                                                  shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json"))
    window.tokens_page.max_length_spin.setValue(256)
    assert window.session.dirty and window.windowTitle().endswith("*")
    path = tmp_path / "run.yaml"
    assert window._save_to(path)
    assert not window.session.dirty
    assert "max_length: 256" in path.read_text()
    assert window.recent_files()[0] == str(path.resolve())

    window.session.update_config(reload=False, data__max_length=512)
    assert window.open_run_file(path)
    wait_idle()
    assert window.session.config.data.max_length == 256
    assert window.tokens_page.max_length_spin.value() == 256
    assert "run.yaml" in window.status_label.text()


def test_broken_run_file_is_reported_not_raised(tmp_path, window):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  max_lenght: 5\n", encoding="utf-8")
    assert not window.open_run_file(path)
    assert "max_lenght" in window.statusBar().currentMessage()


def test_drop_a_dataset_file(qtbot, window, wait_idle, open_config, make_config, shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json"))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(shared_datasets / "c4_demo.jsonl"))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    wait_idle()
    assert window.session.loaded.dataset.format == "text"
    assert window.current_page == "data"


def test_stale_results_are_dropped(qtbot):
    import time

    from app.workers.jobs import JobChannel

    channel = JobChannel("test")
    results = []
    channel.finished.connect(results.append)

    def slow(progress):
        for i in range(50):
            time.sleep(0.01)
            progress(i, 50)
        return "slow"

    channel.submit(slow)
    channel.submit(lambda progress: "fast")
    qtbot.waitUntil(lambda: not channel.busy, timeout=5_000)
    qtbot.wait(100)
    assert results == ["fast"]
    channel.shutdown()


def test_startup_does_not_import_torch_or_transformers():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from app.main import MainWindow\n"
        "w = MainWindow(restore_geometry=False)\n"
        "w.show(); app.processEvents()\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'pyqtgraph') if m in sys.modules]\n"
        "print(round(time.perf_counter() - t, 3), ','.join(heavy))\n"
        "w.session.shutdown()\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=60, check=True)
    parts = out.stdout.strip().splitlines()[-1].split()
    seconds, heavy = parts[0], (parts[1] if len(parts) > 1 else "")
    assert heavy == "", f"start-up imported {heavy}"
    assert float(seconds) < 2.0


def test_screenshot_mode(tmp_path, tiny_model_factory, shared_datasets):
    run = tmp_path / "run.yaml"
    run.write_text(json.dumps({
        "model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
        "data": {"path": str(shared_datasets / "glaive_toolcall_en_demo.json")},
    }), encoding="utf-8")
    out = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.entry", "gui", str(run), "--page", "tokens", "--row", "1", "--screenshot", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 10_000
    from PySide6.QtGui import QImage

    image = QImage(str(out))
    assert image.width() >= 1200 and image.height() >= 800


def test_the_app_carries_its_own_name_and_icon(qapp):
    from resources import apply_app_identity

    apply_app_identity(qapp)
    assert qapp.applicationName() == "SFT Studio" and qapp.desktopFileName() == "sft-studio"
    icon = qapp.windowIcon()
    assert not icon.isNull() and {s.width() for s in icon.availableSizes()} >= {16, 32, 256}

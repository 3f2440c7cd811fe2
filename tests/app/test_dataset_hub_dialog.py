"""Preview from Hub… (issue 17), clicked through against the loopback Hub stand-in: a Hub id on the Data page offers
the preview; size, files, detected format and first rows appear (read from a prefix only); a slow preview shows its
elapsed time and can be cancelled; a download shows bytes/speed/ETA, is cancelled and resumed, and "Use this dataset"
puts it into the run; offline and gated say so. Screenshots in light and dark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

CHATS = [{"messages": [{"role": "user", "content": f"How do I say {i} in French?"},
                       {"role": "assistant", "content": f"You say “{i}” like this, number {i}."}]} for i in range(3000)]
CHAT_JSONL = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CHATS).encode()
ALPACA = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(200_000)]
BIG_JSONL = "".join(json.dumps(r) + "\n" for r in ALPACA).encode()  # ~12 MB


@pytest.fixture(scope="module")
def hub():
    from hub_server import HubServer, Repo

    repos = [
        Repo("data-org/chats", {"train.jsonl": CHAT_JSONL, "test.jsonl": CHAT_JSONL[:20_000].rsplit(b"\n", 1)[0],
                                "README.md": b"---\nlicense: mit\n---\n# French chats\n\nShort questions and answers "
                                             b"about saying numbers in French.\n"},
             repo_type="dataset", card_data={"license": "mit"}),
        Repo("data-org/slow", {"train.jsonl": CHAT_JSONL}, repo_type="dataset", slow={"train.jsonl": (8192, 0.15)}),
        Repo("data-org/big", {"train.jsonl": BIG_JSONL}, repo_type="dataset", slow={"train.jsonl": (64 * 1024, 0.02)}),
        Repo("gated-org/locked", {"train.jsonl": CHAT_JSONL[:5000]}, repo_type="dataset", gated=True),
    ]
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    hub.use(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def session(qtbot):
    from app.session import StudioSession

    s = StudioSession()
    yield s
    qtbot.waitUntil(s.shutdown, timeout=60_000)


@pytest.fixture
def make_dialog(qtbot):
    from app.views.dataset_hub_dialog import DatasetHubDialog

    made = []

    def make(session, **kwargs):
        dialog = DatasetHubDialog(session, **kwargs)
        qtbot.addWidget(dialog)
        made.append(dialog)
        return dialog

    yield make
    for dialog in made:
        dialog.shutdown()


def _cells(table, column: int = 0) -> list[str]:
    return [table.item(r, column).text() for r in range(table.rowCount())]


def _screenshot(widget, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SFT_STUDIO_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert widget.grab().save(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_data_page_offers_the_preview_and_shows_size_files_format_and_rows(qtbot, hub, hub_env, session):
    from app.views.data_page import DataPage

    page = DataPage(session)
    qtbot.addWidget(page)
    try:
        calls: list[dict] = []
        session.update_config = lambda reload=True, **changes: calls.append(changes)
        page.source_edit.setText("rows.jsonl")
        assert not page.hub_button.isEnabled()  # a file name is no Hub id
        page.source_edit.setText("data-org/chats")
        assert page.hub_button.isEnabled()

        from core.model_library import human_size

        before = hub.bytes_sent("train.jsonl")
        page.hub_button.click()
        dialog = page.hub_dialog
        assert dialog is not None and dialog.isVisible() and dialog.repo_id == "data-org/chats"
        with qtbot.waitSignal(dialog.previewShown, timeout=30_000) as shown:
            pass
        assert shown.args == [20]
        assert "<b>data-org/chats</b>" in dialog.title.text() and "licence mit" in dialog.title.text()
        assert "French chats" in dialog.card.text()
        files = dict(zip(_cells(dialog.files_table), _cells(dialog.files_table, 2), strict=True))
        assert set(files) == {"train.jsonl", "test.jsonl", "README.md"} and files["train.jsonl"] == human_size(len(CHAT_JSONL))
        assert [dialog.split_combo.itemText(i) for i in range(dialog.split_combo.count())] == ["train", "test"]
        assert "Detected format: <b>messages</b>" in dialog.format_label.text()
        table = dialog.rows_table
        assert table.rowCount() == 20 and table.horizontalHeaderItem(0).text() == "messages"
        assert table.verticalHeaderItem(0).text() == "line 1"
        assert table.item(0, 0).text().startswith("user: How do I say 0 in French? ▸ assistant: You say “0”")
        detail = dialog.detail.toPlainText()  # the first row as the Data page shows a row: the normalised conversation
        assert "Row 0 (line 1), as the studio reads it" in detail and "USER" in detail and "ASSISTANT" in detail
        qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualRect(table.model().index(3, 0)).center())
        assert "Row 3 (line 4)" in dialog.detail.toPlainText() and "say 3 in French" in dialog.detail.toPlainText()
        status = dialog.status.text()
        assert "First 20 rows of train.jsonl (jsonl) · read " in status and f"of {human_size(len(CHAT_JSONL))} (" in status
        sent = hub.bytes_sent("train.jsonl") - before
        assert 0 < sent < len(CHAT_JSONL) / 3  # the rows came from a prefix
        assert dialog.use_button.isEnabled() and dialog.download_button.isEnabled()
        _screenshot(dialog, "dataset-preview-light.png", hub_env)

        # another split of the same dataset: the facts stay, the rows change
        dialog.split_combo.setCurrentText("test")
        with qtbot.waitSignal(dialog.previewShown, timeout=30_000):
            dialog.split_combo.activated.emit(1)
        assert dialog.preview.split == "test" and "of test.jsonl" in dialog.status.text()

        # not downloaded: the run gets the Hub id (datasets loads it)
        with qtbot.waitSignal(dialog.chosen) as chosen:
            dialog.use_button.click()
        assert chosen.args == ["data-org/chats"]
        assert calls[-1] == {"data__path": "data-org/chats", "data__format": "auto", "data__columns": {}}
        assert page.source_edit.text() == "data-org/chats"
    finally:
        page.shutdown()  # also after a failed assertion: a live preview thread would abort the test run


def test_dark_screenshot(qtbot, qapp, hub_env, session, make_dialog):
    from app.views.style import apply_palette

    style, palette = qapp.style().name(), qapp.palette()
    apply_palette(qapp, "dark")
    try:
        dialog = make_dialog(session, repo_id="data-org/chats")
        dialog.resize(1120, 700)
        dialog.show()
        with qtbot.waitSignal(dialog.previewShown, timeout=30_000):
            dialog.preview_button.click()
        _screenshot(dialog, "dataset-preview-dark.png", hub_env)
    finally:
        qapp.setStyle(style)
        qapp.setPalette(palette)


def test_slow_preview_shows_elapsed_time_and_cancels(qtbot, hub_env, session, make_dialog):
    dialog = make_dialog(session, repo_id="data-org/slow")
    dialog.show()
    dialog.preview_button.click()
    assert dialog.busy and dialog.busy_bar.isVisible() and dialog.cancel_preview_button.isVisible()
    assert not dialog.preview_button.isEnabled()
    qtbot.waitUntil(lambda: "0.5 s" in dialog.status.text() or "0.6 s" in dialog.status.text(), timeout=10_000)
    assert dialog.status.text().startswith("Reading the first rows of data-org/slow…")
    with qtbot.waitSignal(dialog.previewCancelled, timeout=5_000):
        dialog.cancel_preview_button.click()
    assert not dialog.busy and not dialog.busy_bar.isVisible() and dialog.preview_button.isEnabled()
    assert dialog.status.text().startswith("Cancelled after ")
    qtbot.wait(2500)  # the read that was under way ends; its rows are not shown
    assert dialog.rows_table.rowCount() == 0 and dialog.status.text().startswith("Cancelled after ")


def test_download_with_progress_cancel_resume_and_use(qtbot, hub, hub_env, session, make_dialog):
    chosen: list[str] = []
    dialog = make_dialog(session, repo_id="data-org/big", choose=chosen.append)
    dialog.show()
    with qtbot.waitSignal(dialog.previewShown, timeout=30_000):
        dialog.preview_button.click()
    assert "Detected format: <b>alpaca</b>" in dialog.format_label.text()
    assert hub.bytes_sent("big/resolve/" + dialog.facts.sha + "/train.jsonl") < 1_000_000

    dialog.download_button.click()
    assert dialog.downloading and dialog.cancel_download_button.isEnabled() and not dialog.download_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.progress.maximum() == 1000 and dialog.progress.value() > 0, timeout=60_000)
    qtbot.waitUntil(lambda: "/s" in dialog.progress_label.text(), timeout=30_000)
    label = dialog.progress_label.text()
    from core.model_library import human_size

    assert f" of {human_size(len(BIG_JSONL))} · " in label and "ETA" in label and "0/1 files" in label
    _screenshot(dialog, "dataset-download-light.png", hub_env)
    with qtbot.waitSignal(dialog.downloadFinished, timeout=30_000) as cancelled:
        dialog.cancel_download_button.click()
    assert cancelled.args[0] == 130 and dialog.progress_label.text().startswith("Cancelled (")
    assert dialog.download_button.text() == "Resume download" and dialog.download_button.isEnabled()
    _screenshot(dialog, "dataset-download-cancelled-light.png", hub_env)
    kept = [p.stat().st_size for p in (hub_env / "hf").rglob("*.part")]
    assert kept and 0 < kept[0] < len(BIG_JSONL)

    with qtbot.waitSignal(dialog.downloadFinished, timeout=90_000) as finished:
        dialog.download_button.click()
    assert finished.args[0] == 0, finished.args
    assert f"bytes={kept[0]}-" in hub.ranges("train.jsonl")  # resumed, not restarted
    local = Path(dialog.download_path) / "train.jsonl"
    assert local.read_bytes() == BIG_JSONL and dialog.progress.value() == 1000
    assert str(local) in dialog.progress_label.text()
    _screenshot(dialog, "dataset-downloaded-light.png", hub_env)
    dialog.use_button.click()
    assert chosen == [str(local)]  # one file for the train split: the run reads the downloaded file


def test_offline_and_gated_say_so(qtbot, hub_env, session, make_dialog, monkeypatch):
    gated = make_dialog(session, repo_id="gated-org/locked")
    with qtbot.waitSignal(gated.previewFailed, timeout=30_000) as failed:
        gated.preview_button.click()
    assert "is gated" in failed.args[0] and gated.banner.kind == "error"
    assert "hf auth login" in gated.banner.label.text() and "HF_TOKEN" in gated.banner.label.text()
    assert gated.rows_table.rowCount() == 0 and not gated.busy
    assert _cells(gated.files_table) == ["train.jsonl"] and "gated" in gated.title.text()  # the facts are public
    _screenshot(gated, "dataset-gated-light.png", hub_env)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = make_dialog(session, repo_id="data-org/chats")
    assert offline.banner.kind == "warning" and "offline" in offline.banner.label.text().lower()
    assert not offline.preview_button.isEnabled() and not offline.download_button.isEnabled()
    assert offline.start_preview() is False

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    unreachable = make_dialog(session, repo_id="data-org/chats")
    with qtbot.waitSignal(unreachable.previewFailed, timeout=30_000):
        unreachable.preview_button.click()
    text = unreachable.banner.label.text()
    assert "Cannot reach the Hugging Face Hub" in text and "Preview tries again" in text
    assert unreachable.banner.kind == "warning" and not unreachable.download_button.isEnabled()
    assert unreachable.preview_button.isEnabled()  # a network that comes back: try again

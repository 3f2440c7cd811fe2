"""The Data page: open datasets, fix the format, browse rows, read the audit and its problems."""

from __future__ import annotations

from PySide6.QtCore import Qt


def test_open_dataset_detects_format_and_shows_rows(qtbot, window, wait_idle, open_config, make_config,
                                                    shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json"))
    page = window.data_page
    dataset = window.session.loaded.dataset
    assert dataset.format == "alpaca"
    assert page.rows_model.rowCount() == len(dataset.examples) > 0
    assert "alpaca" in page.detected.text()
    assert set(page.column_combos) >= {"instruction", "input", "output"}
    assert page.column_combos["instruction"].currentText() == "instruction"

    # open another dataset like a user: type it and press Load
    page.source_edit.setText(str(shared_datasets / "glaive_toolcall_en_demo.json"))
    page.load_button.click()
    wait_idle()
    assert window.session.loaded.dataset.format == "sharegpt"
    assert "tools" in page.column_combos

    # select a row: the detail pane renders it as a conversation with tool calls
    index = page.rows_model.index(0, 0)
    page.table.setCurrentIndex(index)
    qtbot.waitUntil(lambda: window.session.row_view is not None and window.session.row_view.row == 0)
    detail = page.detail.toPlainText()
    assert "USER" in detail and "ASSISTANT" in detail
    assert "TOOLS available" in detail
    assert window.session.loaded.dataset.examples[0]["messages"][0]["content"][:30] in detail


def test_audit_panel_counts_and_histogram(open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "alpaca_en_demo.json", max_length=64))
    page = window.data_page
    report = window.session.report
    assert report is not None and report.truncated_rows
    text = page.audit_summary.text()
    assert f"<b>{report.trainable_rows}</b> of {report.rows} rows" in text
    assert f"<b>{len(report.truncated_rows)}</b> rows longer than max_length=64" in text
    assert f"{100 * report.trained_share:.1f}%" in text
    assert page.histogram is not None
    assert page.histogram.line.value() == 64
    assert sum(page.histogram.bars.opts["height"]) == len(report.lengths)


def test_broken_file_lists_problems_and_jumps_to_rows(qtbot, open_config, make_config):
    from pathlib import Path

    bad = Path(__file__).resolve().parents[1] / "data" / "bad_rows.jsonl"
    window = open_config(make_config(bad))
    page = window.data_page
    dataset = window.session.loaded.dataset
    assert dataset.errors
    items = [page.problem_list.item(i) for i in range(page.problem_list.count())]
    rows = [it.data(Qt.ItemDataRole.UserRole) for it in items]
    assert 1 in rows  # the malformed JSON line
    assert any("row 1 (line 2) · not valid JSON" in it.text() for it in items)
    statuses = [page.rows_model.data(page.rows_model.index(r, 2)) for r in range(page.rows_model.rowCount())]
    assert statuses[0] == "ok" and statuses[1] == "error"

    target = next(it for it in items if it.data(Qt.ItemDataRole.UserRole) == 2)
    with qtbot.waitSignal(window.session.row_changed, timeout=5_000):
        page.problem_list.itemClicked.emit(target)
    assert window.session.row == 2
    assert page.table.currentIndex().row() == 2
    assert "error" in page.detail.toPlainText()


def test_format_override_shows_the_mismatch_and_recovers(qtbot, window, wait_idle, open_config, make_config,
                                                          shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json"))
    page = window.data_page
    page.format_combo.setCurrentText("messages")
    wait_idle()
    assert page.banner.kind and page.banner.kind == "error"
    assert window.session.config.data.format == "messages"
    page.format_combo.setCurrentText("prompt_completion")
    wait_idle()
    # alpaca has no prompt/completion columns: map them by hand
    if window.session.run is None:
        assert "prompt" in page.column_combos or page.banner.kind
    page.format_combo.setCurrentText("auto")
    wait_idle()
    assert not page.banner.kind
    assert window.session.loaded.dataset.format == "alpaca"


def test_column_mapping_changes_the_rows(window, wait_idle, tmp_path, open_config, make_config):
    import json

    path = tmp_path / "qa.jsonl"
    rows = [{"q": f"question {i}", "a": f"answer {i}", "note": f"n{i}"} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    open_config(make_config(path, format="prompt_completion", columns={"prompt": "q", "completion": "a"}))
    page = window.data_page
    assert window.session.run is not None
    assert window.session.loaded.dataset.examples[0]["prompt"] == "question 0"
    page.column_combos["completion"].setCurrentText("note")
    wait_idle()
    assert window.session.config.data.columns == {"prompt": "q", "completion": "note"}
    assert window.session.loaded.dataset.examples[0]["completion"] == "n0"


def test_unreadable_dataset_says_so(window, wait_idle, tmp_path, open_config, make_config):
    window.session.set_config(make_config(tmp_path / "missing.jsonl"))
    wait_idle()
    assert window.data_page.banner.kind
    assert "missing.jsonl" in window.data_page.banner.text()
    assert window.tokens_page.banner.kind


def test_rows_model_is_lazy_at_100k_rows(qtbot):
    from app.models.rows_model import RowsModel
    from core.data import NormalizedDataset

    examples = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                for i in range(100_000)]
    model = RowsModel()
    model.set_dataset(NormalizedDataset("messages", examples, list(range(100_000)), [], {}))
    assert model.rowCount() == 100_000
    assert model.data(model.index(99_999, 4)) == "q99999"

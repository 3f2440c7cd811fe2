"""The Data page's audit never contradicts itself (issue 16, items 5 and 6): answers cut by truncation are listed as
problems and their rows are not "ok"; a wrong column mapping is refused with the key to fix; after a failed load
nothing of the previous dataset's audit (histogram, "no problems") is left on screen."""

from __future__ import annotations

import html
import os

from PySide6.QtCore import Qt


def _items(page) -> list[str]:
    return [page.problem_list.item(i).text() for i in range(page.problem_list.count())]


def _status(page, row: int) -> str:
    return page.rows_model.data(page.rows_model.index(row, 2))


def test_answers_cut_by_truncation_are_listed_and_their_rows_are_not_ok(qtbot, open_config, make_config,
                                                                        shared_datasets):
    window = open_config(make_config(shared_datasets / "alpaca_en_demo.json", max_length=96))
    page, report = window.data_page, window.session.report
    cut = report.eos_lost_rows
    assert len(cut) > 50
    items = _items(page)
    assert "✓ no problems found" not in items
    first = next(p for p in report.problems if p.row == cut[0])
    assert f"⚠ row {cut[0]} (line {first.line}) · output: truncated at max_length=96" in items[0] or any(
        t.startswith(f"⚠ row {cut[0]} (line {first.line}) · output: truncated at max_length=96") for t in items
    )
    assert {_status(page, r) for r in cut} == {"warning"}
    if os.environ.get("SFT_STUDIO_SCREENSHOTS"):
        window.grab().save(os.path.join(os.environ["SFT_STUDIO_SCREENSHOTS"], "data-truncated-answers.png"))
    whole = next(r for r in range(len(report.lengths)) if r not in cut and r not in report.truncated_rows)
    assert _status(page, whole) == "ok"
    dropped = [row for row, _line, _reason in report.dropped]  # nothing left within max_length: not trained
    assert dropped and {_status(page, r) for r in dropped} == {"error"}
    # clicking the problem shows the row
    target = next(page.problem_list.item(i) for i in range(page.problem_list.count())
                  if page.problem_list.item(i).data(Qt.ItemDataRole.UserRole) == cut[1])
    with qtbot.waitSignal(window.session.row_changed, timeout=5_000):
        page.problem_list.itemClicked.emit(target)
    assert page.table.currentIndex().row() == cut[1]


def test_answer_mapped_to_the_prompt_column_is_refused_and_the_old_audit_cleared(window, wait_idle, open_config,
                                                                                 make_config, shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json", max_length=96))
    page = window.data_page
    assert page.histogram is not None and page.histogram.isVisible()

    page.column_combos["output"].setCurrentText("instruction")  # the user's mistake, made as a user makes it
    wait_idle()
    assert window.session.config.data.columns == {"output": "instruction"}
    assert window.session.run is None and page.banner.kind == "error"
    assert "data.columns.output: column 'instruction' is already read as instruction" in html.unescape(
        page.banner.text()
    )
    assert not page.histogram.isVisible()
    assert "No audit" in page.audit_summary.text()
    items = _items(page)
    assert "✓ no problems found" not in items
    assert items[0].startswith("✖ The format does not fit:") and "data.columns.output" in items[0]
    if os.environ.get("SFT_STUDIO_SCREENSHOTS"):
        window.grab().save(os.path.join(os.environ["SFT_STUDIO_SCREENSHOTS"], "data-wrong-mapping.png"))

    page.column_combos["output"].setCurrentText("(default)")  # undo: the audit comes back
    wait_idle()
    assert window.session.run is not None and not page.banner.kind
    assert page.histogram.isVisible() and window.session.report is not None


def test_unreadable_file_after_a_good_one_leaves_nothing_stale(window, wait_idle, tmp_path, open_config,
                                                               make_config, shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json"))
    page = window.data_page
    assert page.histogram is not None and page.histogram.isVisible()
    binary = tmp_path / "zeros.jsonl"
    binary.write_bytes(b"\x00" * 4096)
    page.source_edit.setText(str(binary))
    page.load_button.click()
    wait_idle()
    assert page.banner.kind == "error" and "binary data" in page.banner.text()
    assert not page.histogram.isVisible()
    assert page.rows_model.rowCount() == 0
    assert "No audit: the dataset could not be read." in page.audit_summary.text()
    items = _items(page)
    assert len(items) == 1 and items[0].startswith("✖ The dataset cannot be read:") and "zeros.jsonl" in items[0]
    if os.environ.get("SFT_STUDIO_SCREENSHOTS"):
        window.grab().save(os.path.join(os.environ["SFT_STUDIO_SCREENSHOTS"], "data-unreadable-after-good.png"))


def test_roles_read_through_an_alias_are_noted(tmp_path, open_config, make_config):
    import json

    path = tmp_path / "bot.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "bot", "content": f"a{i}"}]} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    window = open_config(make_config(path))
    assert "note: role 'bot' read as assistant in 3 rows" in html.unescape(window.data_page.audit_summary.text())
    assert {_status(window.data_page, r) for r in range(3)} == {"ok"}  # a note, not a problem

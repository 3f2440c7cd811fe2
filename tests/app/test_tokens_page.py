"""The Tokens & masks page shows exactly what core's ExampleBuilder returns, and reacts to the controls."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from app.views.style import CATEGORIES, category_color, token_category
from core.masks import IGNORE_INDEX, ExampleBuilder


def _format_at(view, k: int):
    cursor = QTextCursor(view.document())
    cursor.setPosition(view._starts[k] + 1)  # the format of the character after the position
    return cursor.charFormat()


def test_colours_and_counts_come_from_the_built_example(open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "glaive_toolcall_en_demo.json"), row=1)
    page = window.tokens_page
    view = window.session.row_view
    assert view is not None and view.row == 1
    built = view.result.built
    assert built is not None
    # what is shown is what the trainer's builder produces for this row
    expected = ExampleBuilder(window.session.run.tokenizer, window.session.run.template, "auto", 1024)
    again = expected.build(window.session.run.dataset.examples[1])
    assert again.labels == built.labels and again.input_ids == built.input_ids
    assert page.view.built is built
    assert len(page.view._starts) == len(built.tokens)
    for k, tok in enumerate(built.tokens):
        fmt = _format_at(page.view, k)
        base = category_color(token_category(tok.trained, tok.reason))
        shade = fmt.background().color()
        assert shade == base or shade == base.darker(110), (k, tok)
        assert fmt.fontUnderline() == tok.trained
    text = page.counts.text()
    assert f"<b>{built.n_tokens}</b> tokens" in text and f"<b>{built.n_trained}</b> trained" in text
    legend = page.legend.text()
    shown = {token_category(t.trained, t.reason) for t in built.tokens}
    assert {"trained", "user"} <= shown
    for category in shown:
        name = CATEGORIES[category][0]
        count = sum(token_category(t.trained, t.reason) == category for t in built.tokens)
        assert f"{name}&nbsp;</span> {count}" in legend
    # the tooltip names id, label, position, role and reason
    k = next(i for i, t in enumerate(built.tokens) if t.reason == "user")
    tip = page.view.describe(k)
    assert f"token id {built.tokens[k].id}" in tip and "label −100" in tip and f"position {k}" in tip
    assert "user turn" in tip


def test_switching_train_on_and_max_length_rebuilds_the_row(qtbot, open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "alpaca_en_demo.json"), row=0)
    page = window.tokens_page
    before = window.session.row_view.result.built
    assert 0 < before.n_trained < len(before.input_ids)

    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        page.train_on_combo.setCurrentText("all")
    built = window.session.row_view.result.built
    assert built.train_on == "all" and built.n_trained == len(built.input_ids)
    assert window.session.config.data.train_on == "all" and window.session.dirty
    assert all(_format_at(page.view, k).fontUnderline() for k in range(len(built.tokens)))

    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        page.max_length_spin.setValue(16)
    built = window.session.row_view.result.built
    assert built.truncated and len(built.input_ids) == 16
    cut = [k for k, t in enumerate(built.tokens) if t.reason == "truncated"]
    assert cut and cut[0] == 16
    assert _format_at(page.view, cut[0]).fontStrikeOut()
    assert "cut off" in page.counts.text()


def test_next_token_view_shows_the_label_shift(open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "alpaca_en_demo.json"), row=2)
    built = window.session.row_view.result.built
    model = window.tokens_page.next_model
    assert model.rowCount() == len(built.input_ids) - 1
    for i in range(model.rowCount()):
        label = model.data(model.index(i, 3))
        assert label == str(built.labels[i + 1])
        trained = model.data(model.index(i, 4)) == "trained"
        assert trained == (built.labels[i + 1] != IGNORE_INDEX)
    first_trained = next(i for i in range(model.rowCount()) if built.labels[i + 1] != IGNORE_INDEX)
    assert model.data(model.index(first_trained, 2)).strip() != ""


def test_row_stepping_with_keys(qtbot, open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "alpaca_en_demo.json"), row=0)
    window.show_page("tokens")
    page = window.tokens_page
    page.view.setFocus()
    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        qtbot.keyClick(page.view, Qt.Key.Key_PageDown)
    assert window.session.row_view.row == 1 and page.row_spin.value() == 1
    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        qtbot.keyClick(page.view, Qt.Key.Key_Right, Qt.KeyboardModifier.AltModifier)
    assert window.session.row_view.row == 2
    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        page.prev_button.click()
    assert window.session.row_view.row == 1


def test_long_row_stays_responsive(qtbot, tmp_path, open_config, make_config):
    import json

    words = " ".join(f"word{i % 97} the quick brown fox" for i in range(1500))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": words}) + "\n", encoding="utf-8")
    window = open_config(make_config(path, max_length=8192))
    built = window.session.row_view.result.built
    assert len(built.tokens) > 4000
    page = window.tokens_page
    started = time.perf_counter()
    page.view.set_example(built)
    page.next_model.set_example(built)
    qtbot.wait(1)
    assert time.perf_counter() - started < 2.0
    assert page.next_model.rowCount() == len(built.input_ids) - 1


def test_text_row_refuses_assistant_mode_with_a_message(qtbot, open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "c4_demo.jsonl"))
    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        window.tokens_page.train_on_combo.setCurrentText("assistant")
    assert window.session.row_view.result.built is None
    assert window.tokens_page.banner.kind == "error"
    assert "plain text" in window.tokens_page.banner.text()
    assert window.tokens_page.view.built is None

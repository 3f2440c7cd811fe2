"""The Template page: source, rendered row, the doctor; a model without a template says so."""

from __future__ import annotations


def test_trl_patched_template_shows_the_diff_and_parity(open_config, make_config, shared_datasets):
    window = open_config(make_config(shared_datasets / "glaive_toolcall_en_demo.json", family="qwen2_5"))
    page = window.template_page
    loaded = window.session.loaded
    assert page.source.toPlainText() == loaded.run.template.text
    method = loaded.training.method
    assert method in page.doctor.text()
    if method == "trl-patched":
        assert page.diff_box.isVisibleTo(page)
        assert "+" in page.diff.toPlainText() and "generation" in page.diff.toPlainText()
    assert "Parity" in page.parity.text()
    built = window.session.row_view.result.built
    assert page.rendered.toPlainText() == built.text


def test_model_without_template_says_so_and_builtin_fixes_it(qtbot, window, wait_idle, open_config, make_config,
                                                              shared_datasets):
    open_config(make_config(shared_datasets / "alpaca_en_demo.json", family="none"))
    page = window.template_page
    assert window.session.run is None
    assert page.banner.kind and "no chat template" in page.banner.text()
    assert "no chat template" in window.data_page.banner.text().lower()
    assert window.data_page.rows_model.rowCount() > 0  # the data is still browsable
    page.template_combo.setCurrentText("chatml")
    wait_idle()
    assert window.session.run is not None
    assert window.session.run.template.name == "chatml"
    assert not page.banner.kind or page.banner.kind == "warning"
    assert "markers" in page.doctor.text()
    assert window.session.row_view.result.built.n_trained > 0


def test_jinja_highlighter_marks_generation_blocks(qtbot):
    from PySide6.QtWidgets import QPlainTextEdit

    from app.views.highlighters import JinjaHighlighter

    edit = QPlainTextEdit()
    qtbot.addWidget(edit)
    highlighter = JinjaHighlighter(edit.document())
    edit.setPlainText("{% generation %}{{ message['content'] }}{% endgeneration %}")
    highlighter.rehighlight()
    formats = edit.document().firstBlock().layout().formats()
    assert any(f.format.background().color().name() == "#9fe0a8" for f in formats)


def test_training_and_inference_renderings_side_by_side(open_config, make_config, tmp_path):
    """Qwen3's template drops earlier answers' reasoning at inference, while training keeps it: the page shows
    both renderings and says so; a template that renders both alike says that too."""
    import json
    from pathlib import Path

    import trl

    qwen3 = Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja"
    data = tmp_path / "think.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nIt is 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\nAdd again.\n</think>\n\nIt is 6."}]}) + "\n")
    window = open_config(make_config(data, family="qwen2_5", chat_template=str(qwen3)))
    page = window.template_page
    assert page.inference_box.isVisibleTo(page), page.inference_note.text()
    assert "differ" in page.inference_box.title() and "reasoning" in page.inference_note.text()
    assert "Add them." in page.training_text.toPlainText()
    assert "Add them." not in page.inference_text.toPlainText()  # dropped at inference

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    window = open_config(make_config(plain, family="qwen2_5"))
    assert "same text" in page.inference_note.text() and "differ" not in page.inference_box.title()

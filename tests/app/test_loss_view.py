"""The per-token loss view (Tokens page) and the loss ranking (Data page) on a tiny trained run: the losses come from
the ``sft-studio losses`` child, colour the trained tokens (masked ones keep their colours), show in the hover text,
rank the rows, and export as JSONL. The GUI process never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loss_run import make_loss_run
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QTextCursor

from app.views.loss_scale import delta_color, loss_color
from app.views.style import category_color, token_category

CHILD_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, tiny_model_factory) -> Path:
    run = make_loss_run(tmp_path_factory, tiny_model_factory)
    # the core tests may have filled the cache: start empty so that the child computes
    from core.config import load_run_config

    shutil.rmtree(Path(load_run_config(run).output_dir) / "token_losses", ignore_errors=True)
    return run


def _background(view, k: int) -> QColor:
    cursor = QTextCursor(view.document())
    cursor.setPosition(view._starts[k] + 1)
    return cursor.charFormat().background().color()


def _open(open_config, run_file, row: int = 1):
    from core.config import load_run_config

    return open_config(load_run_config(run_file), row=row)


def test_tokens_page_colours_trained_tokens_by_their_loss(qtbot, open_config, run_file):
    window = _open(open_config, run_file, row=0)  # the rows scored from here on cover the whole (10-row) dataset
    page = window.tokens_page
    window.show_page("tokens")
    assert page.model_ids() == ["masks", "base", "checkpoint-1", "checkpoint-2", "adapter", "compare"]
    assert page.current_model() == "masks" and page.view.overlay is None

    assert page.set_model("adapter")
    assert page.busy and "Computing" in page.loss_status.text()
    qtbot.waitUntil(lambda: page.view.overlay is not None or page.banner.kind == "error", timeout=CHILD_TIMEOUT_MS)
    assert page.banner.kind != "error", page.banner.text()
    built = window.session.row_view.result.built
    assert page.view.built is built
    overlay = page.view.overlay
    trained = [t for t in range(1, len(built.labels)) if built.labels[t] != -100]
    assert sorted(overlay.colors) == trained
    # the colour is the loss's colour; a hard token and an easy one differ
    from app.workers.loss_client import fingerprint, session_run_config
    from core.token_losses import resolve_model

    config = session_run_config(window.session)
    record = page.loss_store.get(config.output_dir, resolve_model(config, "adapter"), 0, fingerprint(built))
    losses = {t["index"]: t["loss"] for t in record["tokens"]}
    for k in trained:
        expected = loss_color(losses[k], False)
        assert _background(page.view, k) in (expected, expected.darker(106)), k
    hard, easy = max(losses, key=losses.get), min(losses, key=losses.get)
    assert losses[hard] - losses[easy] > 1
    assert _background(page.view, hard) != _background(page.view, easy)
    assert all(page.view._starts and _format_underlined(page.view, k) for k in trained)
    # masked tokens keep their mask colours
    masked = [k for k, t in enumerate(built.tokens) if not t.trained]
    assert masked
    for k in masked:
        tok = built.tokens[k]
        base = category_color(token_category(tok.trained, tok.reason), False)
        assert _background(page.view, k) in (base, base.darker(110)), k
    # hover text: loss, probability of the right token, top-5
    tip = page.view.describe(hard)
    assert f"loss {losses[hard]:.3f}" in tip and "probability of this token" in tip and "top-5 next tokens" in tip
    assert tip.count("%") + tip.count("e-") >= 6  # probability + top-5 (tiny ones in e-notation)
    assert "Loss of each trained token" in page.legend.text() and "adapter" in page.legend.text()
    assert "mean loss" in page.loss_status.text()
    qtbot.waitUntil(lambda: not page.busy, timeout=CHILD_TIMEOUT_MS)

    # the next rows were scored with it: switching shows them at once, without a new child
    with qtbot.waitSignal(window.session.row_built, timeout=20_000):
        window.session.set_row(1)
    assert page.view.overlay is not None and not page.busy
    assert page.loss_job is None

    # base vs tuned: the change of loss on a diverging scale
    assert page.set_model("compare")
    qtbot.waitUntil(lambda: page.view.overlay is not None and not page.busy, timeout=CHILD_TIMEOUT_MS)
    assert page.banner.kind != "error", page.banner.text()
    built = window.session.row_view.result.built
    base = resolve_model(config, "base")
    tuned = resolve_model(config, "adapter")
    before = {t["index"]: t for t in page.loss_store.get(config.output_dir, base, 1, fingerprint(built))["tokens"]}
    after = {t["index"]: t for t in page.loss_store.get(config.output_dir, tuned, 1, fingerprint(built))["tokens"]}
    k = next(iter(after))
    expected = delta_color(after[k]["loss"] - before[k]["loss"], False)
    assert _background(page.view, k) in (expected, expected.darker(106))
    tip = page.view.describe(k)
    assert "→" in tip and ("easier" in tip or "worse" in tip) and "base top-5" in tip
    assert "Change of loss" in page.legend.text() and "easier" in page.loss_status.text()

    # back to the masks
    assert page.set_model("masks")
    assert page.view.overlay is None
    tok = built.tokens[k]
    assert _background(page.view, k) in (category_color("trained", False), category_color("trained", False).darker(110))
    assert tok.trained


def _format_underlined(view, k: int) -> bool:
    cursor = QTextCursor(view.document())
    cursor.setPosition(view._starts[k] + 1)
    return cursor.charFormat().fontUnderline()


def test_loss_ranking_sorts_rows_jumps_and_exports(qtbot, open_config, run_file, tmp_path):
    window = _open(open_config, run_file, row=0)
    panel = window.data_page.loss_ranking
    window.data_page.lower_tabs.setCurrentWidget(panel)
    assert panel.set_model("adapter")
    assert panel.rank() and panel.busy
    qtbot.waitUntil(lambda: not panel.busy, timeout=CHILD_TIMEOUT_MS)
    assert panel.banner.kind != "error", panel.banner.text()
    ranked = panel.ranked_rows()
    n = window.session.row_count
    assert len(ranked) == n and "rows ranked" in panel.status.text()
    means = [r["mean_loss"] for r in ranked]
    assert means == sorted(means, reverse=True)  # highest loss first
    assert {r["row"] for r in ranked} == set(range(n)) and all(r["text"] for r in ranked)
    panel.table.sortByColumn(1, Qt.SortOrder.AscendingOrder)  # lowest first
    assert [r["mean_loss"] for r in panel.ranked_rows()] == sorted(means)

    # a click selects the row everywhere; a double-click opens it on the Tokens page under the same model
    first = panel.ranked_rows()[0]["row"]
    index = panel.proxy.index(0, 0)
    panel.table.clicked.emit(index)
    assert window.session.row == first
    panel.table.doubleClicked.emit(index)
    assert window.current_page == "tokens" and window.tokens_page.current_model() == "adapter"

    # exported as JSONL in the order shown
    out = tmp_path / "ranking.jsonl"
    panel.choose_file = lambda: str(out)
    panel.export_dialog()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["row"] for line in lines] == [r["row"] for r in panel.ranked_rows()]
    assert [line["rank"] for line in lines] == list(range(1, n + 1))
    assert lines[0]["model"] == "adapter" and lines[0]["mean_loss"] == min(means)

    # base vs tuned ranks by the change
    window.show_page("data")
    assert panel.set_model("compare") and panel.rank()
    qtbot.waitUntil(lambda: not panel.busy, timeout=CHILD_TIMEOUT_MS)
    ranked = panel.ranked_rows()
    assert len(ranked) == n and all(r["delta"] == pytest.approx(r["mean_loss"] - r["base_mean_loss"]) for r in ranked)
    deltas = [r["delta"] for r in ranked]
    assert deltas == sorted(deltas, reverse=True) and max(deltas) < 0  # training on these rows made all easier


def test_the_loss_views_do_not_import_torch():
    code = ("import app.views.tokens_page, app.views.loss_ranking, app.workers.loss_client, app.views.data_page, sys; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

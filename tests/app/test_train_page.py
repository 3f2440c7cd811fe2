"""Train page driven like a user: fake children for pause / resume / stop and failure banners, a real tiny CPU run
reaching `finished` with curves, and a finished run shown again from its events.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from app.session import StudioSession
from app.views.train_page import FAILED, FINISHED, PAUSED, RUNNING, STOPPED, TrainPage
from core.config import RunConfig

FAKE = Path(__file__).parent / "fake_children" / "fake_trainer.py"


@pytest.fixture
def page(qtbot, tmp_path):
    session = StudioSession()
    cfg = RunConfig()
    cfg.output_dir = str(tmp_path / "runs" / "r1")
    session.config = cfg
    p = TrainPage(session)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    yield p
    if p.supervisor is not None:
        p.supervisor.kill()
        p.supervisor.wait(20_000)
    session.shutdown()


def fake(page, mode: str) -> None:
    page.command_override = [sys.executable, str(FAKE), mode]


def test_pause_resume_stop_with_a_fake_child(page, qtbot):
    fake(page, "canned")
    page.start_button.click()
    qtbot.waitUntil(lambda: page.state == RUNNING and "hello" in page.samples_view.toPlainText(), timeout=10_000)
    assert not page.start_button.isEnabled() and page.pause_button.isEnabled()
    page.pause_button.click()
    qtbot.waitUntil(lambda: page.state == PAUSED, timeout=5_000)
    assert page.resume_button.isEnabled() and not page.pause_button.isEnabled()
    page.resume_button.click()
    qtbot.waitUntil(lambda: page.state == RUNNING, timeout=5_000)
    with qtbot.waitSignal(page.runEnded, timeout=10_000):
        page.stop_button.click()
    # a stopped run says so (not "Finished" in green), with the step it stopped at and how to go on
    assert page.state == STOPPED and page.start_button.isEnabled()
    assert "Stopped at step 1" in page.state_label.text() and "Finished" not in page.state_label.text()
    assert "--resume" in page.banner.text() and "Runs page" in page.banner.text()
    assert page.curves.point_count("loss") == 1 and page.curves.point_count("tokens_per_second") == 1
    assert "step 1/10" in page.progress_label.text()
    assert "The loss is exactly 0" in page.banner.text()  # the child's warning
    assert "a warning on stderr" in page.log_view.toPlainText()


@pytest.mark.parametrize(("mode", "title", "words"), [
    ("data_error", "Data problem", "run sft-studio audit"),
    ("silent_crash", "The trainer crashed", "code 1"),
    ("abort", "The trainer crashed", "SIGABRT"),
])
def test_failures_show_a_banner_with_the_hint_and_the_log(page, qtbot, mode, title, words):
    fake(page, mode)
    with qtbot.waitSignal(page.runEnded, timeout=15_000):
        page.start_button.click()
    assert page.state == FAILED and page.banner.kind == "error"
    assert title in page.banner.text() and words in page.banner.text()
    assert page.show_log_button.isVisible()
    page.show_log_button.click()
    assert page.tabs.currentWidget() is page.log_view and page.log_view.toPlainText()


def test_kill(page, qtbot):
    fake(page, "hang")
    page.start_button.click()
    qtbot.waitUntil(lambda: page.state == RUNNING, timeout=10_000)
    with qtbot.waitSignal(page.runEnded, timeout=10_000):
        page.kill_button.click()
    assert page.state == FAILED and "Killed" in page.banner.text()


def test_a_real_tiny_cpu_run_and_its_replay(page, qtbot, tmp_path, tiny_model_factory):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "hello there"}]}) + "\n"
                            for i in range(8)))
    cfg = page.session.config
    cfg.model.name_or_path = str(tiny_model_factory("qwen2_5"))
    cfg.data.path = str(data)
    cfg.data.max_length = 128
    cfg.lora.r, cfg.lora.lora_alpha = 4, 8
    cfg.training.max_steps = 3
    cfg.training.save_steps = 3
    cfg.training.per_device_train_batch_size = 2
    cfg.training.probe_prompts = ["hi 1"]
    with qtbot.waitSignal(page.runEnded, timeout=180_000):
        page.start_button.click()
    assert page.state == FINISHED, page.log_view.toPlainText()[-3000:]
    assert page.curves.point_count("loss") == 3 and page.curves.point_count("learning_rate") == 3
    assert page.progress.value() == 3 and "step 3/3" in page.progress_label.text()
    assert "step 0" in page.samples_view.toPlainText() and "step 3" in page.samples_view.toPlainText()
    run_dir = Path(cfg.output_dir)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # the same run opened later: curves and status from events.jsonl
    other = TrainPage(page.session)
    qtbot.addWidget(other)
    assert other.state == FINISHED and other.curves.point_count("loss") == 3
    assert "trainable" in other.info_view.toPlainText()

"""Runs page: lists run folders with status and final loss, overlays curves, diffs configs, deletes, duplicates,
offers to resume interrupted runs without a blocking dialog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.models.runs_model import config_diff, read_run, scan_runs
from app.session import StudioSession
from app.views.runs_page import RunsPage
from core.config import RunConfig, save_run_config


def make_run(root: Path, name: str, lr: float, end: str | None, steps: int = 5) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    cfg = RunConfig()
    cfg.training.learning_rate = lr
    cfg.output_dir = str(folder)
    save_run_config(cfg, folder / "run.yaml")
    events = [{"type": "started", "time": 1000.0, "pid": 2**22 + 7, "host": "elsewhere", "model": "m"}]
    for step in range(1, steps + 1):
        events.append({"type": "progress", "step": step, "total": steps, "time": 1000.0 + step})
        events.append({"type": "metrics", "step": step, "loss": 2.0 / step, "learning_rate": lr, "time": 1000.0 + step})
    if end == "finished":
        events.append({"type": "finished", "steps": steps, "adapter": str(folder / "adapter"), "time": 1010.0})
    elif end == "failed":
        events.append({"type": "failed", "kind": "oom", "message": "out of memory", "time": 1010.0})
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "checkpoints").mkdir()
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", 2e-4, "finished")
    make_run(root, "b", 1e-4, "finished")
    make_run(root, "c", 1e-4, "failed")
    make_run(root, "d", 1e-4, None, steps=2)
    (root / "not-a-run").mkdir()
    return root


def test_scan_and_diff(runs):
    found = {r.name: r for r in scan_runs([runs])}
    assert set(found) == {"a", "b", "c", "d"}
    assert found["a"].status == "finished" and found["a"].final_loss == pytest.approx(0.4)
    assert found["c"].status == "failed" and "out of memory" in found["c"].failure
    assert found["d"].status == "interrupted" and found["d"].duration_s == 2.0
    assert config_diff([found["a"], found["b"]]) == [("training.learning_rate", [2e-4, 1e-4])]
    assert read_run(runs / "not-a-run") is None


@pytest.fixture
def page(qtbot, runs):
    session = StudioSession()
    session.config.output_dir = str(runs / "new")
    p = RunsPage(session)
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    yield p
    session.shutdown()


def test_runs_page_lists_overlays_and_diffs(page, qtbot):
    model = page.model
    assert model.rowCount() == 4 and len(page.selected_runs()) == 1  # the newest run is shown at first
    statuses = {model.index(r, 0).data(): model.index(r, 3).data() for r in range(model.rowCount())}
    assert statuses == {"a": "finished", "b": "finished", "c": "failed", "d": "interrupted"}
    page.select(["a", "b"])
    assert [r.name for r in page.selected_runs()] == ["a", "b"]
    assert page.curves.point_count("loss", "a") == 5 and page.curves.point_count("loss", "b") == 5
    assert page.diff_table.rowCount() == 1 and page.diff_table.item(0, 0).text() == "training.learning_rate"
    assert "1 setting differ" in page.diff_label.text()


def test_interrupted_runs_are_offered_for_resume_in_a_banner(page, qtbot):
    assert page.banner.isVisible() and "d" in page.banner.text()
    with qtbot.waitSignal(page.resumeRequested) as blocker:
        page.resume_interrupted_button.click()
    assert Path(blocker.args[0]).name == "d" and not page.banner.isVisible()


def test_delete_asks_first_and_duplicate_makes_a_new_run(page, qtbot, runs):
    page.select(["c"])
    page.confirm_delete = lambda names: False
    page.delete_button.click()
    assert (runs / "c").exists()
    page.confirm_delete = lambda names: "c" in names
    page.delete_button.click()
    assert not (runs / "c").exists() and page.model.rowCount() == 3
    page.select(["a"])
    with qtbot.waitSignal(page.duplicateRequested) as blocker:
        page.duplicate_button.click()
    cfg = blocker.args[0]
    assert cfg.output_dir == str(runs / "a-2") and cfg.training.learning_rate == 2e-4

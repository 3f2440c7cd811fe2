"""Evaluation of a finished run: base and tuned answers for the eval split, eval loss equal to training's,
atomic files, progress and cancel."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from core.evaluate import EvaluationCancelled, evaluate_run, read_evaluation
from core.training.events import read_events


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_factory) -> Path:
    from test_export import make_trained_run

    return make_trained_run(tmp_path_factory, tiny_model_factory)


def test_evaluate_writes_rows_loss_and_perplexity(run_dir):
    calls = []
    summary = evaluate_run(run_dir, max_new_tokens=8, device="cpu", progress=lambda d, t: calls.append((d, t)))
    rows, saved = read_evaluation(run_dir)
    data_event = next(e for e in read_events(run_dir / "events.jsonl") if e["type"] == "data")
    assert summary.rows == len(rows) == data_event["eval_rows"] == 4
    assert summary.source == "eval split"
    for row in rows:
        assert set(row) >= {"prompt", "reference", "base", "tuned"}
        assert row["reference"] == "I am Studio Helper, the assistant of SFT Studio."
        assert "Who" in row["prompt"] or "name" in row["prompt"] or "hi" in row["prompt"] or "hello" in row["prompt"] \
            or "Introduce" in row["prompt"]
    assert math.isfinite(summary.perplexity) and summary.perplexity == pytest.approx(math.exp(summary.eval_loss))
    # the same labels as training: the trainer's own eval loss at the last step
    trainer_eval = [e["eval_loss"] for e in read_events(run_dir / "events.jsonl") if "eval_loss" in e][-1]
    assert summary.eval_loss == pytest.approx(trainer_eval, rel=1e-3)
    assert summary.base_eval_loss is not None and summary.base_eval_loss != summary.eval_loss
    assert saved["rows"] == 4 and saved["eval_loss"] == pytest.approx(summary.eval_loss)
    assert calls[0] == (0, 8) and calls[-1] == (8, 8)
    assert [p.name for p in run_dir.glob(".evaluation*")] == []


def test_cancel_writes_nothing(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "evaluation*"))
    seen = []
    with pytest.raises(EvaluationCancelled):
        evaluate_run(run, max_new_tokens=4, batch_size=2, device="cpu", progress=lambda d, t: seen.append(d),
                     cancelled=lambda: len(seen) >= 2)
    assert not list(run.glob("evaluation*")) and not list(run.glob(".evaluation*"))


def test_run_without_eval_split_samples_training_rows(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "evaluation*"))
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    cfg["data"]["eval_fraction"] = 0.0
    (run / "run.yaml").write_text(yaml.safe_dump(cfg))
    summary = evaluate_run(run, max_new_tokens=4, sample_size=3, device="cpu")
    assert summary.rows == 3 and summary.source == "sampled training rows" and summary.notes
    lines = (run / "evaluation.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["tuned"] is not None for line in lines)

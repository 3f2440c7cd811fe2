"""A tiny trained run with a checkpoint after each step, shared by the per-token loss tests (core and app)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

_RUNS: dict[str, Path] = {}


def make_loss_run(tmp_path_factory, tiny_model_factory) -> Path:
    """A 2-step run on the tiny Qwen2.5 model with a checkpoint after each step (cached for the session; the app
    tests use it too). Returns the run file."""
    if "run" in _RUNS:
        return _RUNS["run"]
    from core.config import load_run_config
    from core.training.session import run_training

    tmp = tmp_path_factory.mktemp("loss-run")
    questions = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself."]
    data = tmp / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio." if i % 2 else
         f"Studio Helper here: {q.lower()} {i}"},
    ]}) + "\n" for i in range(2) for q in questions))
    cfg = {
        "model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
        "data": {"path": str(data), "max_length": 128},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.02, "logging_steps": 1,
                     "save_steps": 1, "seed": 0},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_training(load_run_config(tmp / "run.yaml"))
    _RUNS["run"] = tmp / "run.yaml"
    return _RUNS["run"]

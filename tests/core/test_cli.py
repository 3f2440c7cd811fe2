"""The ``sft-studio`` commands as a user runs them: contract output, exit codes, messages without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from core.cli import main


def write_run(tmp_path, model_path, data_path, **sections) -> str:
    cfg = {
        "model": {"name_or_path": str(model_path), **sections.pop("model", {})},
        "data": {"path": str(data_path), "max_length": 512, **sections.pop("data", {})},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 1, **sections.pop("training", {})},
        "output_dir": str(tmp_path / "run"),
        **sections,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def chat_run(tmp_path, tiny_model_factory, shared_datasets):
    return write_run(tmp_path, tiny_model_factory("qwen2_5"), shared_datasets / "v1_sft_demo.jsonl",
                     data={"placeholders": {"name": "Ada", "author": "the lab"}})


def test_preview_json_contract(chat_run, capsys):
    assert main(["preview", "--config", chat_run, "--json", "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    for i, line in enumerate(lines):
        obj = json.loads(line)
        assert obj["row"] == i
        assert set(obj) == {"row", "input_ids", "labels", "tokens"}
        assert len(obj["input_ids"]) == len(obj["labels"]) == len(obj["tokens"])
        assert any(label == -100 for label in obj["labels"])  # the user turn carries no loss
        assert any(label != -100 for label in obj["labels"])
        trained = [lab for lab in obj["labels"] if lab != -100]
        assert trained == [tid for tid, lab in zip(obj["input_ids"], obj["labels"], strict=True) if lab != -100]


def test_preview_reports_dropped_rows_in_file_order(tmp_path, tiny_model_factory, capsys):
    data = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "late"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = write_run(tmp_path, tiny_model_factory("qwen2_5"), data, data={"max_length": 64})
    assert main(["preview", "--config", run, "--json"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["row"] for o in objs] == [0, 1, 2]
    assert "input_ids" in objs[0]
    assert "assistant" in objs[1]["dropped"]
    assert "max_length=64" in objs[2]["dropped"]


def test_audit_clean_exit_0(tmp_path, tiny_model_factory, capsys):
    from resources import SAMPLE_DATASET

    run = write_run(tmp_path, tiny_model_factory("qwen2_5"), SAMPLE_DATASET, data={"max_length": 1024})
    assert main(["audit", "--config", run]) == 0
    out = capsys.readouterr().out
    assert "messages, 80 rows, 80 will be trained" in out
    assert "clean" in out


def test_audit_problems_exit_1_with_file_line_field(tmp_path, tiny_model_factory, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n'
        "{not json\n"
    )
    run = write_run(tmp_path, tiny_model_factory("qwen2_5"), data)
    assert main(["audit", "--config", run, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 3 and report["trainable_rows"] == 1
    dropped = {d["row"]: d for d in report["dropped"]}
    assert dropped[1]["line"] == 2 and "robot" in dropped[1]["reason"]
    assert dropped[2]["line"] == 3
    fields = {p["field"] for p in report["problems"] if p["row"] == 1}
    assert any("role" in f for f in fields)


def test_unreadable_input_exit_2_without_traceback(tmp_path, tiny_model_factory):
    run = write_run(tmp_path, tiny_model_factory("qwen2_5"), tmp_path / "missing.jsonl")
    proc = subprocess.run([sys.executable, "-m", "core.cli", "audit", "--config", run], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "missing.jsonl" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_run_file_names_key_line_and_hint(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name_or_path: x/y\ntraining:\n  learning_rat: 0.1\n  per_device_train_batch_size: 0\n")
    assert main(["audit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "run.yaml:4" in err and "did you mean 'learning_rate'" in err
    assert "run.yaml:5" in err and "per_device_train_batch_size" in err


def test_model_that_is_not_there_says_so(tmp_path, shared_datasets, capsys):
    run = write_run(tmp_path, tmp_path / "no-such-model", shared_datasets / "alpaca_en_demo.json")
    assert main(["preview", "--config", run, "--json", "--limit", "1"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_model_without_chat_template_on_conversations(tmp_path, tiny_model_factory, shared_datasets, capsys):
    run = write_run(tmp_path, tiny_model_factory("none"), shared_datasets / "alpaca_en_demo.json")
    assert main(["preview", "--config", run, "--json", "--limit", "1"]) == 2
    assert "model.chat_template" in capsys.readouterr().err
    run = write_run(tmp_path, tiny_model_factory("none"), shared_datasets / "alpaca_en_demo.json",
                    model={"chat_template": "chatml"})
    assert main(["preview", "--config", run, "--json", "--limit", "1"]) == 0


def test_init_writes_a_valid_starter_run(tmp_path, capsys):
    from core.config import load_run_config

    path = tmp_path / "starter.yaml"
    assert main(["init", str(path)]) == 0
    cfg = load_run_config(path)
    assert cfg.model.name_or_path == "bundled:SmolLM2-135M-Instruct"
    assert main(["init", str(path)]) == 2  # no silent overwrite
    nested = tmp_path / "new" / "folder" / "run.yaml"  # a folder that does not exist yet is made
    assert main(["init", str(nested)]) == 0 and load_run_config(nested).data.path
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main(["init", str(blocked / "run.yaml")]) == 2  # one error line, no traceback
    assert "cannot write the run file" in capsys.readouterr().err

"""Every run-file field out of range (generated from the schema), unknown keys, incompatible combinations."""

from __future__ import annotations

import typing

import pytest
import yaml
from hardening_helpers import OK_ROW, jsonl, run_subprocess, write_run

from core.config import ConfigError, all_fields, load_run_config


def _bad_values(info) -> list[object]:
    """Values the schema metadata says are invalid for this field."""
    bad: list[object] = []
    if info.min is not None:
        step = 1 if info.type is int else 1e-3
        bad.append(info.min if info.min_exclusive else info.min - step)
    if info.max is not None:
        step = 1 if info.type is int else 1e-3
        bad.append(info.max if info.max_exclusive else info.max + step)
    if info.choices is not None:
        bad.append("not-a-choice")
    if info.type is bool:
        bad.append("yes please")
    elif info.type in (int, float):
        bad.append("lots")
        bad.append(float("nan"))
    elif info.type is str:
        bad.append(["a", "list"])
        bad.append("   ")
    elif typing.get_origin(info.type) in (list, dict):
        bad.append(3)
    if not info.nullable and info.type is not bool:
        bad.append(None)
    return bad


CASES = [(info, value) for info in all_fields() if not info.hidden for value in _bad_values(info)]


@pytest.mark.parametrize(("info", "value"), CASES, ids=[f"{i.key}={v!r}" for i, v in CASES])
def test_every_field_out_of_range_names_file_line_key(tmp_path, info, value):
    section, _, name = info.key.rpartition(".")
    doc: dict = {"model": {"name_or_path": "org/model"}}
    if section:
        doc.setdefault(section, {})[name] = value
    else:
        doc[name] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as excinfo:
        load_run_config(path)
    problems = [p for p in excinfo.value.problems if p.key == info.key]
    assert problems, [str(p) for p in excinfo.value.problems]
    text = yaml.safe_dump(doc).splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.strip().startswith(f"{name}:"))
    for p in problems:
        assert p.file == str(path) and p.line == line
        assert str(p).startswith(f"{path}:{line}: {info.key}")


def test_field_bounds_cover_every_numeric_field():
    """A numeric field without bounds is a field a typo can push to nonsense; list the few allowed to be open."""
    open_ended = {
        "lora.lora_alpha",
        "training.per_device_train_batch_size",
        "training.gradient_accumulation_steps",
        "training.logging_steps",
        "training.save_steps",
        "training.eval_steps",
        "training.max_steps",
        "training.num_train_epochs",
        "training.warmup_steps",
        "training.weight_decay",
        "training.max_grad_norm",
    }
    for info in all_fields():
        if info.type in (int, float) and not info.hidden:
            assert info.min is not None, info.key
            if info.max is None:
                assert info.key in open_ended, info.key


def test_cli_reports_every_problem_at_once_exit_2_no_traceback(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  name_or_path: org/m\n  colour: blue\ndata:\n  max_length: 3\ntraining:\n"
        "  learning_rate: -1\n  seed: -5\nmystery: 1\n"
    )
    proc = run_subprocess("audit", "--config", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for line, words in [
        (3, "unknown key 'model.colour'"),
        (5, "data.max_length must be >= 16"),
        (7, "training.learning_rate must be > 0"),
        (8, "training.seed must be >= 0"),
        (9, "unknown key 'mystery'"),
    ]:
        assert f"{path}:{line}: " in proc.stderr and words in proc.stderr, (line, proc.stderr)


def test_four_bit_on_cpu_and_mps_refused(tmp_path, cli):
    for device in ("cpu", "mps"):
        run = write_run(
            tmp_path, "org/m", tmp_path / "d.jsonl", model={"load_in_4bit": True}, training={"device": device}
        )
        code, _, err = cli("audit", "--config", run)
        assert code == 2 and "model.load_in_4bit needs CUDA" in err and f"'{device}'" in err


def test_plain_text_with_assistant_or_completion_loss_refused(tmp_path, cli):
    for train_on in ("assistant", "completion"):
        run = write_run(
            tmp_path, "org/m", tmp_path / "d.jsonl", data={"format": "text", "train_on": train_on}
        )
        code, _, err = cli("audit", "--config", run)
        assert code == 2 and f"data.train_on '{train_on}' needs prompt/completion or conversation rows" in err


@pytest.mark.parametrize(
    "rows", [[{"text": "plain text row"}], [{"prompt": "p", "completion": "c"}], [OK_ROW]]
)
def test_packing_accepted_for_every_format(tmp_path, tiny_model_factory, cli, rows):
    """TRL 1.16 packs pre-tokenised input_ids/labels (BFD, padding-free) for every text format the studio builds,
    so no format is refused with packing; the audit must not invent a conflict."""
    data = tmp_path / "d.jsonl"
    data.write_text(jsonl(*rows))
    code, report, _ = cli.audit(
        write_run(tmp_path, tiny_model_factory("qwen2_5"), data, training={"packing": True})
    )
    assert code == 0 and report["trainable_rows"] == 1


def test_max_length_below_every_prompt_drops_all_rows_with_reason(tmp_path, tiny_model_factory, cli):
    data = tmp_path / "long_prompts.jsonl"
    data.write_text(
        jsonl(
            *[
                {
                    "messages": [
                        {"role": "user", "content": "word " * 40},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            ]
            * 3
        )
    )
    code, report, _ = cli.audit(
        write_run(tmp_path, tiny_model_factory("qwen2_5"), data, data={"max_length": 16})
    )
    assert code == 1 and report["trainable_rows"] == 0
    assert [d["row"] for d in report["dropped"]] == [0, 1, 2]
    for d in report["dropped"]:
        assert "no trained token within max_length=16" in d["reason"] and d["line"] == d["row"] + 1


def test_yaml_that_is_not_a_mapping_and_syntax_errors(tmp_path, cli):
    path = tmp_path / "run.yaml"
    path.write_text("- just\n- a list\n")
    code, _, err = cli("audit", "--config", path)
    assert code == 2 and str(path) in err and "must be a mapping" in err
    path.write_text("model:\n  name_or_path: [unclosed\n")
    code, _, err = cli("audit", "--config", path)
    assert code == 2 and f"{path}:" in err and "invalid YAML" in err

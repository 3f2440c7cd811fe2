"""The audit a user runs before training: counts, truncation, parity of inference and training text."""

from __future__ import annotations

import json

import yaml

from core.audit import audit_run, format_report
from core.config import load_run_config
from core.pipeline import open_run


def _run(tmp_path, model, rows=None, data_path=None, **data):
    if data_path is None:
        data_path = tmp_path / "data.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"name_or_path": str(model)}, "data": {"path": str(data_path), **data},
           "output_dir": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return open_run(load_run_config(tmp_path / "run.yaml"))


def conv(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_counts_truncation_and_lost_end_of_turn(tmp_path, tiny_model_factory):
    rows = [conv("hi", "hello"), conv("tell me a long story", "once upon a time " * 60), conv("bye", "goodbye")]
    report = audit_run(_run(tmp_path, tiny_model_factory("qwen2_5"), rows, max_length=200))
    assert report.rows == 3 and report.trainable_rows == 3
    assert report.truncated_rows == [1] and report.eos_lost_rows == [1]
    assert 0 < report.trained_share < 1
    assert not report.clean
    text = format_report(report)
    assert "1 row lose the end of a trained answer to truncation at max_length 200" in text
    assert f"data.jsonl:2: row 1: {report.eos_lost_tokens[0]} tokens" in text
    (cut,) = [p for p in report.problems if p.row == 1]  # the row is not "ok": it carries the problem
    assert cut.line == 2 and cut.field == "messages" and "end-of-turn token" in cut.message


def test_parity_reports_a_template_whose_generation_prompt_differs(tmp_path, tiny_model_factory):
    """Like reasoning models: the generation prompt opens an empty think block that training text lacks."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
    )
    path = tmp_path / "think.jinja"
    path.write_text(template)
    run = _run(tmp_path, tiny_model_factory("qwen2_5"), [conv("hi", "hello")])
    run.config.model.chat_template = str(path)
    run = open_run(run.config, tokenizer=run.tokenizer)
    report = audit_run(run)
    assert report.parity and "differs from the training text" in report.parity[0].message
    assert "<think>" in report.parity[0].message
    # the answer is unambiguous in the rendering the model is trained on: read there (and the parity issue stays)
    assert report.trainable_rows == 1 and report.row_methods == {"render-search": [0]} and not report.clean
    assert "full-render search" in format_report(report)
    run.config.data.train_on = "all"
    report = audit_run(open_run(run.config, tokenizer=run.tokenizer))
    assert report.trainable_rows == 1 and report.parity


def test_column_mapping_makes_unusual_columns_trainable(tmp_path, tiny_model_factory):
    rows = [{"question": "What is 2+2?", "reply": "4"}, {"question": "Capital of Peru?", "reply": "Lima"}]
    run = _run(tmp_path, tiny_model_factory("llama3"), rows, format="prompt_completion",
               columns={"prompt": "question", "completion": "reply"})
    report = audit_run(run)
    assert report.format == "prompt_completion" and report.trainable_rows == 2, format_report(report)


def test_alpaca_demo_audit_is_clean_on_llama3(tmp_path, tiny_model_factory, shared_datasets):
    run = _run(tmp_path, tiny_model_factory("llama3"), data_path=shared_datasets / "alpaca_en_demo.json",
               max_length=4096)
    report = audit_run(run)
    assert report.format == "alpaca" and report.rows == 999 == report.trainable_rows
    assert report.mask_method == "trl-patched"
    assert report.clean, format_report(report)


def test_eval_rows_come_from_a_second_file_or_a_seeded_fraction(tmp_path, tiny_model_factory):
    from core.pipeline import build_training_rows

    rows = [conv(f"question {i}", f"answer {i}") for i in range(20)]
    run = _run(tmp_path, tiny_model_factory("qwen2_5"), rows)
    run.config.data.eval_fraction = 0.25
    split = build_training_rows(run)
    assert len(split.train) == 15 and len(split.eval) == 5 and not split.dropped
    assert build_training_rows(run).eval == split.eval  # same seed, same split

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(conv(f"held out {i}", "x")) + "\n" for i in range(3)) + "{broken\n")
    run.config.data.eval_fraction = 0.0
    run.config.data.eval_path = str(eval_file)
    split = build_training_rows(run)
    assert len(split.train) == 20 and len(split.eval) == 3
    (source, result), = split.dropped
    assert source == str(eval_file) and result.row == 3 and result.line == 4

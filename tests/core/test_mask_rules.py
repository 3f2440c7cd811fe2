"""Mask rules a user sets: per-message flags from the data, train_on: last_assistant, reasoning blocks. Each is
pinned against TRL's own labels where TRL can build the row (TRL's assistant-only labels with exactly the rule's
tokens taken out), or against the rendering where TRL cannot patch the template; every masked token says which
rule masked it, and the audit counts them."""

from __future__ import annotations

import json

import pytest
import yaml
from mask_parity import IGNORE, decoded_runs, trl_prepared, without_runs

from core.data import load_raw_dataset, normalize_dataset
from core.masks import RULE_REASONS, ExampleBuilder, reasoning_blocks
from core.templates import resolve_chat_template

CONV = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
    {"role": "user", "content": "And of Peru?"},
    {"role": "assistant", "content": "Lima."},
]


def _plain(messages):
    return [{k: v for k, v in m.items() if k != "train"} for m in messages]


def _marked(messages, *answers):
    """``messages`` with the given answer numbers (0-based, among assistant turns) marked train: false."""
    out, n = [], 0
    for m in messages:
        m = dict(m)
        if m["role"] == "assistant":
            if n in answers:
                m["train"] = False
            n += 1
        out.append(m)
    return out


def _rows(shared_datasets):
    alpaca = json.loads((shared_datasets / "alpaca_en_demo.json").read_text())[:4]
    rows = [CONV]
    for r in alpaca:
        rows.append([{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"][:80]},
                     {"role": "user", "content": "Shorter?"}, {"role": "assistant", "content": r["output"][:20]}])
    return rows


def _load(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return normalize_dataset(load_raw_dataset(str(path)))


# --------------------------------------------------------------------------- reading the flags


def test_flags_follow_each_librarys_convention(tmp_path):
    ds = _load(tmp_path, [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": False},
                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "b", "train": True}]},
        {"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a", "weight": 0},
                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "b", "weight": 1}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "training": False},
                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "b", "loss_weight": 1.0}]},
    ])  # fmt: skip
    sharegpt = _load(tmp_path, [  # axolotl / SlimOrca style ShareGPT rows
        {"conversations": [{"from": "human", "value": "q", "weight": 0.0}, {"from": "gpt", "value": "a", "weight": 0.0},
                           {"from": "human", "value": "q"}, {"from": "gpt", "value": "b", "weight": 1.0}]},
    ])  # fmt: skip
    for example in ds.examples + sharegpt.examples:
        messages = example["messages"]
        assert messages[1] == {"role": "assistant", "content": "a", "train": False}
        assert messages[3] == {"role": "assistant", "content": "b"}  # flags only take answers out
        assert "train" not in messages[0]
    assert not ds.problems and not sharegpt.problems


def test_unusable_flags_are_row_problems(tmp_path):
    ds = _load(tmp_path, [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": "no"}]},
        {"messages": [{"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a", "train": True, "weight": 0}]},
        {"messages": [{"role": "user", "content": "q", "train": True}, {"role": "assistant", "content": "a"}]},
    ])  # fmt: skip
    by_row = {p.row: p for p in ds.problems}
    assert by_row[0].field == "messages[1].weight" and "fractional" in by_row[0].message
    assert by_row[1].field == "messages[1].train" and by_row[1].severity == "error"
    assert "disagree" in by_row[2].message
    assert by_row[3].severity == "warning" and "only assistant messages are trained" in by_row[3].message
    assert ds.examples[3] is not None and ds.examples[0] is None


# --------------------------------------------------------------------------- pinned against TRL


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "gemma"])
def test_marked_answers_and_last_assistant_equal_trl_without_those_turns(family, tiny_model_factory, shared_datasets):
    """Templates TRL can patch: TRL's assistant-only labels, with exactly the marked answers' tokens (their header and
    end-of-turn token included) taken out, are the studio's labels; likewise train_on: last_assistant keeps exactly
    TRL's last answer."""
    from transformers import AutoTokenizer

    model = tiny_model_factory(family)
    tokenizer = AutoTokenizer.from_pretrained(model)
    convs = _rows(shared_datasets)
    theirs = trl_prepared(model, [{"messages": c} for c in convs], assistant_only_loss=True)
    template = resolve_chat_template(tokenizer, None)
    marked = ExampleBuilder(tokenizer, template, "assistant", 4096)
    last = ExampleBuilder(tokenizer, template, "last_assistant", 4096)
    for conv, (ids, labels) in zip(convs, theirs, strict=True):
        answers = sum(m["role"] == "assistant" for m in conv)
        built = marked.build({"messages": _marked(conv, 0), "tools": None})
        assert (built.input_ids, built.labels) == (ids, without_runs(labels, {0}))
        assert built.masked_by == {"marked": sum(1 for a, b in zip(labels, built.labels, strict=True) if a != b)}
        assert {t.reason for t in built.tokens if t.turn == 1 and not t.trained} <= {"marked"}
        built = last.build({"messages": conv, "tools": None})
        assert (built.input_ids, built.labels) == (ids, without_runs(labels, set(range(answers - 1))))
        assert "last_assistant" in built.masked_by
        assert all(t.reason == "last_assistant" for t in built.tokens if t.turn == 1)


def test_rules_on_a_template_trl_cannot_patch_follow_the_rendering(tiny_model_factory):
    """SmolLM2's ChatML (TRL refuses it): the kept answers, each with its end-of-turn token, are what is trained."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("chatml"))
    template = resolve_chat_template(tokenizer, None)
    built = ExampleBuilder(tokenizer, template, "assistant", 4096).build({"messages": _marked(CONV, 1), "tools": None})
    assert built.method == "render-diff"
    assert decoded_runs(tokenizer, built.input_ids, built.labels) == ["Paris.<|im_end|>\n", "Lima.<|im_end|>\n"]
    built = ExampleBuilder(tokenizer, template, "last_assistant", 4096).build({"messages": CONV, "tools": None})
    assert decoded_runs(tokenizer, built.input_ids, built.labels) == ["Lima.<|im_end|>\n"]
    masked = [t for t in built.tokens if t.reason == "last_assistant"]
    assert "".join(t.text for t in masked) == "Paris.<|im_end|>\nMadrid.<|im_end|>\n"


def test_rules_on_mistral_v03_read_in_the_full_rendering(real_tokenizer_factory):
    mistral = real_tokenizer_factory("mistral_v3")
    template = resolve_chat_template(mistral, None)
    messages = [{"role": "system", "content": "Be brief."}, *_marked(CONV, 0)]
    built = ExampleBuilder(mistral, template, "assistant", 4096).build({"messages": messages, "tools": None})
    assert built.method == "render-search"
    assert decoded_runs(mistral, built.input_ids, built.labels) == ["Madrid.</s>", "Lima.</s>"]
    built = ExampleBuilder(mistral, template, "last_assistant", 4096).build({"messages": messages, "tools": None})
    assert decoded_runs(mistral, built.input_ids, built.labels) == ["Lima.</s>"]


def test_completion_prompt_rows_honour_the_flags(tiny_model_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("qwen2_5"))
    template = resolve_chat_template(tokenizer, None)
    row = {"prompt": CONV[:3], "completion": [dict(CONV[3], train=False)], "tools": None}
    built = ExampleBuilder(tokenizer, template, "completion", 4096).build(row)
    assert built.dropped and "message marked train: false" in built.dropped
    whole = ExampleBuilder(tokenizer, template, "completion", 4096).build({"messages": _marked(CONV, 2)})
    assert whole.dropped and whole.masked_by["marked"] > 0


def test_a_row_whose_answers_are_all_marked_is_dropped_with_the_reason(tiny_model_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("llama3"))
    builder = ExampleBuilder(tokenizer, resolve_chat_template(tokenizer, None), "assistant", 4096)
    built = builder.build({"messages": _marked(CONV, 0, 1, 2), "tools": None})
    assert built.dropped == "nothing left to train: every answer token is masked by " + (
        "message marked train: false (or weight: 0) in the data"
    )
    everything = ExampleBuilder(tokenizer, resolve_chat_template(tokenizer, None), "all", 4096)
    built = everything.build({"messages": _marked(CONV, 0), "tools": None})
    assert all(label != IGNORE for label in built.labels) and any("train: false" in n for n in built.notes)


# --------------------------------------------------------------------------- reasoning blocks


def test_reasoning_blocks_found_with_and_without_an_opening_tag():
    text = "a<think>\nwhy\n</think>\n\nanswer b<think>\n\n</think>\n\nc [THINK]x[/THINK] d"
    blocks = reasoning_blocks(text)
    assert [(text[s:e], empty) for s, e, empty in blocks] == [
        ("<think>\nwhy\n</think>\n\n", False), ("<think>\n\n</think>\n\n", True), ("[THINK]x[/THINK] ", False),
    ]
    # R1's generation prompt opens the block: a lone closer starts at the trained run it ends
    lone = "P:why</think>ok"
    offsets = [(0, 2), (2, 5), (5, 13), (13, 15)]
    assert reasoning_blocks(lone, offsets, [False, True, True, True]) == [(2, 13, False)]


@pytest.mark.parametrize("mode", ["train", "mask", "mask_empty"])
def test_reasoning_rule_on_prompt_completion_and_conversation_rows(mode, tiny_model_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_factory("qwen2_5"))
    template = resolve_chat_template(tokenizer, None)
    builder = ExampleBuilder(tokenizer, template, "assistant", 4096, mode)
    conv = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
            {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "<think>\n\n</think>\n\n6"}]  # fmt: skip
    built = builder.build({"messages": conv, "tools": None})
    runs = decoded_runs(tokenizer, built.input_ids, built.labels)
    # TRL's Qwen2.5 training template trains the newline after "<|im_start|>assistant" too
    if mode == "train":
        assert runs == ["\n" + conv[1]["content"] + "<|im_end|>\n", "\n" + conv[3]["content"] + "<|im_end|>\n"]
        assert not built.masked_by
    elif mode == "mask":
        assert runs == ["\n", "4<|im_end|>\n", "\n", "6<|im_end|>\n"]
        assert set(built.masked_by) == {"reasoning"}
        assert "".join(t.text for t in built.tokens if t.reason == "reasoning").count("</think>") == 2
    else:
        assert runs == ["\n" + conv[1]["content"] + "<|im_end|>\n", "\n", "6<|im_end|>\n"]
        assert set(built.masked_by) == {"empty_reasoning"}
    pc = ExampleBuilder(tokenizer, None, "auto", 4096, mode).build(
        {"prompt": "Q: 2+2?\n", "completion": "<think>\nadd\n</think>\n\n4"}
    )
    trained = "".join(t.text for t in pc.tokens if t.trained)
    assert trained == ("4<|im_end|>" if mode == "mask" else "<think>\nadd\n</think>\n\n4<|im_end|>")


# --------------------------------------------------------------------------- run file, audit, preview


def test_run_file_keys_reach_preview_audit_and_training_alike(tmp_path, tiny_model_factory, capsys):
    from core.audit import audit_run, format_report
    from core.cli import main
    from core.config import load_run_config
    from core.pipeline import build_rows, build_training_rows, open_run

    rows = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4", "weight": 0},
                          {"role": "user", "content": "3+3?"},
                          {"role": "assistant", "content": "<think>\nadd more\n</think>\n\n6"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "bye"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nbye"}]}]  # fmt: skip
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
           "data": {"path": str(data), "train_on": "last_assistant", "reasoning": "mask"},
           "output_dir": str(tmp_path / "out")}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = open_run(load_run_config(tmp_path / "run.yaml"))
    assert (run.builder.train_on, run.builder.reasoning) == ("last_assistant", "mask")
    preview = [(r.built.input_ids, r.built.labels) for r in build_rows(run)]
    assert build_training_rows(run).train == preview  # preview = training
    assert decoded_runs(run.tokenizer, *preview[0]) == ["\n", "6<|im_end|>\n"]
    assert decoded_runs(run.tokenizer, *preview[1]) == ["\n", "bye<|im_end|>\n"]
    report = audit_run(run)
    assert set(report.masked_by) == {"marked", "last_assistant", "reasoning"}
    assert report.row_methods == {"trl-patched": [0, 1]} and report.reasoning == "mask"
    text = format_report(report)
    assert "masked    " in text and "reasoning block (data.reasoning: mask)" in text
    assert json.loads(json.dumps(report.to_dict()))["masked_by"] == report.masked_by
    assert main(["preview", "--config", str(tmp_path / "run.yaml"), "--json", "--reasons"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["method"] == "trl-patched" and set(first["masked_by"]) == {"marked", "reasoning"}
    assert {r for r in first["reasons"] if r} >= {"marked", "reasoning", "user"}
    assert set(first["masked_by"]) <= set(RULE_REASONS)

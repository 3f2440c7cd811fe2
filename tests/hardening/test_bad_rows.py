"""Bad rows through `sft-studio audit --json`: each names file, line, row and field; nothing silently dropped."""

from __future__ import annotations

import json

import pytest
from hardening_helpers import assert_every_row_accounted_for, jsonl, problems_by_row, write_run


def msg(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


OK = msg(("user", "hi"), ("assistant", "hello"))

# row -> (row data, severity, field, words in the message)
CASES: list[tuple[object, str, str, str]] = [
    (OK, "", "", ""),
    (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "error",
        "messages[0]",
        "no 'content'",
    ),
    (msg(("user", "q"), ("assistant", "")), "error", "messages[1].content", "assistant message is empty"),
    ({"messages": None}, "error", "messages", "is null"),
    (msg(("user", None), ("assistant", "x")), "error", "messages[0].content", "is null; expected text"),
    (
        msg(("user", 42), ("assistant", "x")),
        "error",
        "messages[0].content",
        "expected text, got a number (42)",
    ),
    (msg(("wizard", "hi"), ("assistant", "x")), "error", "messages[0].role", "role 'wizard' is not one of"),
    (
        msg(("system", "a"), ("system", "b"), ("user", "q"), ("assistant", "x")),
        "warning",
        "messages[1]",
        "more than one system message",
    ),
    (
        msg(("assistant", "first"), ("user", "q"), ("assistant", "x")),
        "error",
        "messages[0]",
        "starts with an assistant message",
    ),
    (
        msg(("user", "a"), ("user", "b"), ("assistant", "x")),
        "warning",
        "messages[1]",
        "two user messages in a row",
    ),
    (msg(("user", "a")), "error", "messages", "no assistant message"),
    ({"prompt": "p", "completion": "c"}, "error", "messages", "mixed formats in one file are not supported"),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        "error",
        "messages[0].content[0].type",
        "'image_url' is not supported",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "x"},
            ]
        },
        "",
        "",
        "",
    ),
    (
        msg(("user", "I am {{name}}"), ("assistant", "hi {{name}}")),
        "warning",
        "messages[0].content",
        "unfilled placeholder {{name}}; set data.placeholders.name",
    ),
    ({"messages": 42}, "error", "messages", "expected a list of messages, got a number (42)"),
    ({"other": "x"}, "error", "messages", "missing (the row has 'other')"),
    ([1, 2], "error", "", "expected a JSON object"),
    ({"messages": [{"role": 3, "content": "x"}]}, "error", "messages[0].role", "expected a role name"),
    (
        {"messages": [{"role": "user", "content": True}, {"role": "assistant", "content": "x"}]},
        "error",
        "messages[0].content",
        "expected text, got true/false",
    ),
]


def test_every_bad_row_named_by_file_line_row_field(tmp_path, tiny_model_factory, cli):
    data = tmp_path / "rows.jsonl"
    data.write_text(jsonl(*[json.dumps(c[0]) for c in CASES]))
    code, report, _ = cli.audit(write_run(tmp_path, tiny_model_factory("qwen2_5"), data))
    assert code == 1
    assert report["rows"] == len(CASES)
    assert_every_row_accounted_for(report)
    by_row = problems_by_row(report)
    dropped = {d["row"]: d for d in report["dropped"]}
    for row, (_, severity, field, words) in enumerate(CASES):
        if not severity:
            assert row not in by_row and row not in dropped, (row, by_row.get(row))
            continue
        found = [p for p in by_row.get(row, []) if p["severity"] == severity and p["field"] == field]
        assert found, (row, by_row.get(row))
        assert any(words in p["message"] for p in found), (row, found)
        for p in found:
            assert p["file"] == str(data) and p["line"] == row + 1
        assert (row in dropped) == (severity == "error"), row
        if severity == "error":
            assert dropped[row]["line"] == row + 1


def test_placeholders_filled_from_run_file(tmp_path, tiny_model_factory, cli):
    data = tmp_path / "identity.jsonl"
    data.write_text(jsonl(msg(("user", "who?"), ("assistant", "I am {{name}} by {{ author }}"))))
    run = write_run(
        tmp_path,
        tiny_model_factory("qwen2_5"),
        data,
        data={"placeholders": {"name": "Ada", "author": "the lab"}},
    )
    code, rows, _ = cli.preview(run)
    assert code == 0
    text = "".join(rows[0]["tokens"])
    assert "I am Ada by the lab" in text and "{{" not in text


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"instruction": "", "output": "x"}, "instruction", "the instruction is empty"),
        ({"instruction": "do", "output": None}, "output", "is null"),
        ({"instruction": "do", "output": 3.5}, "output", "expected text, got a number (3.5)"),
        ({"instruction": "do", "output": " "}, "output", "the output is empty"),
    ],
)
def test_alpaca_missing_empty_null_numbers(tmp_path, tiny_model_factory, cli, row, field, words):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "ok", "output": "fine"}, row], indent=1))
    code, report, _ = cli.audit(write_run(tmp_path, tiny_model_factory("qwen2_5"), data))
    assert code == 1 and report["format"] == "alpaca"
    (problem,) = [p for p in report["problems"] if p["row"] == 1]
    assert problem["field"] == field and words in problem["message"]
    assert problem["line"] == 6 and problem["file"] == str(data)


def test_sharegpt_unknown_role_and_same_role_turns(tmp_path, tiny_model_factory, cli):
    data = tmp_path / "sharegpt.jsonl"
    data.write_text(
        jsonl(
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"conversations": [{"from": "alien", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "gpt", "value": "b"},
                ]
            },
        )
    )
    code, report, _ = cli.audit(write_run(tmp_path, tiny_model_factory("qwen2_5"), data))
    assert code == 1 and report["format"] == "sharegpt"
    by_row = problems_by_row(report)
    assert by_row[1][0]["field"] == "conversations[0].from" and "'alien'" in by_row[1][0]["message"]
    assert by_row[2][0]["field"] == "conversations[2]" and by_row[2][0]["severity"] == "warning"
    assert "two assistant messages in a row" in by_row[2][0]["message"]

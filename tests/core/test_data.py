"""Dataset loading, format detection, normalisation and validation (core.data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.data import (
    FORMATS,
    DataError,
    NormalizedDataset,
    RawDataset,
    RowProblem,
    detect_format,
    load_raw_dataset,
    normalize_dataset,
    split_eval,
    summarize_problems,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[1] / "data" / "public"  # a copy of ../shared/datasets
FIXTURES = REPO / "tests" / "data"


def shared(name: str) -> str:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"demo dataset {path} is missing (expected tests/data/public)")
    return str(path)


def load(path: str | Path, **kwargs) -> NormalizedDataset:
    return normalize_dataset(load_raw_dataset(str(path)), **kwargs)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def only(problems: list[RowProblem], row: int, severity: str = "error") -> RowProblem:
    found = [p for p in problems if p.row == row and p.severity == severity]
    assert len(found) == 1, found
    return found[0]


def assert_every_row_accounted_for(ds: NormalizedDataset) -> None:
    error_rows = {p.row for p in ds.problems if p.severity == "error"}
    assert ds.rows == list(range(len(ds.examples)))
    for row, example in enumerate(ds.examples):
        assert (example is None) == (row in error_rows), row


# ------------------------------------------------------------------------------------ demo datasets


@pytest.mark.parametrize(
    ("name", "fmt", "rows"),
    [
        ("alpaca_en_demo.json", "alpaca", 999),
        ("identity.json", "alpaca", 91),
        ("glaive_toolcall_en_demo.json", "sharegpt", 300),
        ("v1_sft_demo.jsonl", "messages", 500),
        ("c4_demo.jsonl", "text", 300),
    ],
)
def test_demo_datasets_detected_and_all_rows_valid(name: str, fmt: str, rows: int) -> None:
    raw = load_raw_dataset(shared(name))
    assert len(raw.rows) == rows and not raw.problems
    assert all(line is not None for line in raw.lines)
    guess = detect_format(raw)
    assert guess.format == fmt and guess.reason
    ds = normalize_dataset(raw)
    assert ds.format == fmt
    assert len(ds.examples) == rows
    assert not ds.errors, summarize_problems(ds.errors)
    assert_every_row_accounted_for(ds)


def test_glaive_tool_calls_and_tools_parsed() -> None:
    ds = load(shared("glaive_toolcall_en_demo.json"))
    assert ds.columns == {"conversations": "conversations", "tools": "tools"}
    ex = ds.examples[0]
    assert set(ex) == {"messages", "tools"}
    roles = [m["role"] for m in ex["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call = ex["messages"][3]
    assert call["content"] == ""
    assert call["tool_calls"] == [
        {
            "type": "function",
            "function": {
                "name": "search_recipes",
                "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]},
            },
        }
    ]
    assert ex["messages"][4]["content"].startswith('{"recipes"')
    assert ex["tools"][0]["type"] == "function"
    assert ex["tools"][0]["function"]["name"] == "search_recipes"
    assert ex["tools"][0]["function"]["parameters"]["required"] == ["ingredients"]
    for example in ds.examples:
        for message in example["messages"]:
            assert set(message) <= {"role", "content", "tool_calls"}


def test_v1_sft_typed_parts_joined_and_loss_weight_dropped() -> None:
    ds = load(shared("v1_sft_demo.jsonl"), placeholders={"name": "Ada", "author": "the lab"})
    first = ds.examples[0]["messages"]
    assert first == [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "Hello! I am Ada, an AI assistant developed by the lab. How can I assist you today?",
        },
    ]
    assert ds.examples[0]["tools"] is None
    assert not ds.problems  # user turns have loss_weight 0, assistant 1: nothing to warn about


def test_identity_placeholders_filled_or_warned() -> None:
    path = shared("identity.json")
    filled = load(path, placeholders={"name": "Ada", "author": "the lab"})
    assert not filled.problems
    assert "Ada" in filled.examples[0]["messages"][-1]["content"]
    assert "{{" not in json.dumps(filled.examples)

    unfilled = load(path)
    assert not unfilled.errors
    warning = only(unfilled.problems, 0, "warning")
    assert warning.field == "output" and warning.line == 2 and warning.file == path
    assert "unfilled placeholders {{name}}, {{author}}" in warning.message
    assert "data.placeholders.name" in warning.message
    assert len({p.row for p in unfilled.warnings}) == len(unfilled.warnings)  # once per row
    assert unfilled.examples[0] is not None  # warnings are still trained

    partly = load(path, placeholders={"name": "Ada"})
    assert "{{author}}" in only(partly.problems, 0, "warning").message
    assert "{{name}}" not in only(partly.problems, 0, "warning").message


def test_alpaca_input_joined_to_instruction() -> None:
    raw = load_raw_dataset(shared("alpaca_en_demo.json"))
    ds = normalize_dataset(raw)
    row = next(i for i, r in enumerate(raw.rows) if r["input"])
    user, assistant = ds.examples[row]["messages"]
    assert user == {"role": "user", "content": raw.rows[row]["instruction"] + "\n\n" + raw.rows[row]["input"]}
    assert assistant == {"role": "assistant", "content": raw.rows[row]["output"]}
    assert ds.examples[0]["messages"][0]["content"] == raw.rows[0]["instruction"]


def test_c4_text_rows() -> None:
    ds = load(shared("c4_demo.jsonl"))
    assert set(ds.examples[0]) == {"text"} and len(ds.examples[0]["text"]) > 100


# --------------------------------------------------------------------------------- row-level problems


def test_bad_rows_fixture_each_problem_has_file_line_field() -> None:
    path = FIXTURES / "bad_rows.jsonl"
    ds = load(path)
    assert ds.format == "messages"
    assert len(ds.examples) == 12
    assert_every_row_accounted_for(ds)
    expected = {
        1: ("", "not valid JSON"),
        2: ("messages[2].role", "role 'robot' is not one of system, user, assistant, tool"),
        3: ("messages[0]", "starts with an assistant message"),
        4: ("messages", "no assistant message"),
        5: ("messages[1].content", "assistant message is empty"),
        6: ("messages[0].content", "expected text, got a number (42)"),
        7: ("messages", "does not fit the 'messages' format"),
        9: ("messages[0].content[0].type", "'image_url' is not supported"),
        11: ("messages", "is null"),
    }
    for row, (field, words) in expected.items():
        problem = only(ds.problems, row)
        assert problem.field == field
        assert words in problem.message
        assert problem.line == row + 1 and problem.file == str(path)
        assert str(problem).startswith(f"{path}:{row + 1}: row {row}: ")
    assert "mixed formats" in only(ds.problems, 7).message
    assert "prompt_completion" in only(ds.problems, 7).message
    # the other rows load despite the malformed line
    assert ds.examples[0]["messages"][1] == {"role": "assistant", "content": "4"}
    assert only(ds.problems, 8, "warning").field == "messages[2]"  # second system message
    assert "two user messages in a row" in only(ds.problems, 10, "warning").message
    assert ds.examples[8] is not None and ds.examples[10] is not None
    assert str(only(ds.problems, 8, "warning")).endswith(
        "row 8: messages[2]: warning: more than one system message; most chat templates use only the first"
    )


def test_bot_role_alias_and_unknown_role(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "roles.jsonl",
        [
            {"messages": [{"role": "human", "content": "a"}, {"role": "gpt", "content": "b"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "Bot", "content": "b"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}]},
        ],
    )
    ds = load(path)
    assert [m["role"] for m in ds.examples[0]["messages"]] == ["user", "assistant"]
    assert ds.examples[1]["messages"][1]["role"] == "assistant"
    assert only(ds.problems, 2).field == "messages[1].role"
    assert "narrator" in only(ds.problems, 2).message


def test_bad_alpaca_rows() -> None:
    path = FIXTURES / "bad_alpaca.json"
    ds = load(path)
    assert ds.format == "alpaca"
    assert_every_row_accounted_for(ds)
    assert ds.examples[0]["messages"] == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    empty = only(ds.problems, 1)
    assert (empty.field, empty.line) == ("output", 7) and "output is empty" in empty.message
    number = only(ds.problems, 2)
    assert (number.field, number.line) == ("output", 12) and "number (123)" in number.message
    null = only(ds.problems, 3)
    assert (null.field, null.line) == ("instruction", 17) and "null" in null.message


def test_alpaca_system_and_history(tmp_path: Path) -> None:
    path = tmp_path / "hist.json"
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": "And 3+3?",
                    "input": "",
                    "output": "6",
                    "system": "You are a calculator.",
                    "history": [["2+2?", "4"]],
                },
                {"instruction": "x", "input": "", "output": "y", "system": "", "history": [["only one"]]},
            ]
        )
    )
    ds = load(path)
    assert ds.examples[0] == {
        "messages": [
            {"role": "system", "content": "You are a calculator."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
        ],
        "tools": None,
    }
    assert only(ds.problems, 1).field == "history[0]"


def test_sharegpt_system_column_tools_and_bad_function_call(tmp_path: Path) -> None:
    tool = {
        "name": "get_time",
        "description": "Current time",
        "parameters": {"type": "object", "properties": {}},
    }
    conv = [
        {"from": "human", "value": "time?"},
        {"from": "function_call", "value": json.dumps({"name": "get_time", "arguments": {}})},
        {"from": "observation", "value": "12:00"},
        {"from": "gpt", "value": "It is noon."},
    ]
    bad_call = [conv[0], {"from": "function_call", "value": "{not json"}, conv[2], conv[3]]
    path = write_jsonl(
        tmp_path / "sg.jsonl",
        [
            {"conversations": conv, "system": "Be exact.", "tools": json.dumps([tool])},
            {"conversations": bad_call, "system": "", "tools": "[]"},
            {"conversations": conv, "system": None, "tools": "[{broken"},
        ],
    )
    ds = load(path)
    assert ds.format == "sharegpt"
    ex = ds.examples[0]
    assert ex["messages"][0] == {"role": "system", "content": "Be exact."}
    assert ex["messages"][2]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_time", "arguments": {}}}
    ]
    assert ex["tools"] == [{"type": "function", "function": tool}]
    problem = only(ds.problems, 1)
    assert problem.field == "conversations[1].value" and "not valid JSON" in problem.message
    assert problem.line == 2
    assert only(ds.problems, 2).field == "tools"
    assert_every_row_accounted_for(ds)


def test_openai_tool_calls_and_loss_weight_flag(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    path = write_jsonl(
        tmp_path / "oa.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "1+2"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "content": "3", "tool_call_id": "c1"},
                    {"role": "assistant", "content": "3", "loss_weight": 0.0},
                ],
                "tools": tools,
            },
            {
                "messages": [
                    {"role": "user", "content": "1+2"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": "add", "arguments": "{"}}],
                    },
                ]
            },
        ],
    )
    ds = load(path)
    messages = ds.examples[0]["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
    }
    assert messages[2] == {"role": "tool", "content": "3"}
    # LLaMA-Factory's loss_weight 0 takes the answer out of the loss (core.masks honours "train": false)
    assert messages[3] == {"role": "assistant", "content": "3", "train": False}
    assert ds.examples[0]["tools"] == tools
    assert not [p for p in ds.problems if p.row == 0]
    assert only(ds.problems, 1).field == "messages[1].tool_calls[0].arguments"


def test_prompt_completion_strings_and_conversational(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pc.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "completion": [{"role": "assistant", "content": "Hello"}],
            },
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "completion": [{"role": "user", "content": "Hello"}],
            },
        ],
    )
    ds = load(path)
    assert ds.format == "prompt_completion"
    assert ds.examples[0] == {
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello"}],
    }
    assert only(ds.problems, 1).field == "completion"

    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("question,answer\nWhy?,Because.\nHow?,\n", encoding="utf-8")
    ds = load(csv_path)
    assert ds.columns == {"prompt": "question", "completion": "answer"}
    assert ds.examples[0] == {"prompt": "Why?", "completion": "Because."}
    empty = only(ds.problems, 1)
    assert (empty.field, empty.line) == ("answer", 3)


def test_text_number_and_empty(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"text": 7}, {"text": "   "}, [1, 2]])
    ds = load(path)
    assert "number (7)" in only(ds.problems, 1).message and only(ds.problems, 1).field == "text"
    assert "empty" in only(ds.problems, 2).message
    assert "expected a JSON object" in only(ds.problems, 3).message and only(ds.problems, 3).line == 4
    assert_every_row_accounted_for(ds)


# ------------------------------------------------------------------------------------ file handling


def test_malformed_jsonl_line_keeps_other_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": "a"}, "", '{"text": "b"', {"text": "c"}])
    raw = load_raw_dataset(str(path))
    assert raw.rows == [{"text": "a"}, None, {"text": "c"}]
    assert raw.lines == [1, 3, 4]
    assert raw.problems[0].row == 1 and raw.problems[0].line == 3


def test_bom_and_crlf() -> None:
    raw = load_raw_dataset(str(FIXTURES / "bom_crlf.jsonl"))
    assert raw.rows == [{"text": "first line"}, {"text": "second line"}, {"text": "third é"}]
    assert raw.lines == [1, 3, 4] and not raw.problems


def test_empty_file() -> None:
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(FIXTURES / "empty.jsonl"))
    assert info.value.file.endswith("empty.jsonl") and "empty" in str(info.value)


def test_non_utf8_names_line() -> None:
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(FIXTURES / "not_utf8.jsonl"))
    assert info.value.line == 3
    assert str(info.value).startswith(f"{FIXTURES / 'not_utf8.jsonl'}:3: not valid UTF-8")


def test_json_array_with_jsonl_name() -> None:
    raw = load_raw_dataset(str(FIXTURES / "array_named.jsonl"))
    assert raw.lines == [2, 6]
    assert detect_format(raw).columns == {"prompt": "question", "completion": "answer"}


def test_malformed_json_array_is_data_error() -> None:
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(FIXTURES / "malformed_array.json"))
    assert info.value.line == 4 and "malformed JSON array" in str(info.value)


def test_csv_quoted_newlines_line_numbers() -> None:
    path = FIXTURES / "quoted_newline.csv"
    raw = load_raw_dataset(str(path))
    assert raw.lines == [2, 5, 6, 7]
    assert raw.rows[0] == {"prompt": "Write a haiku", "completion": "Old pond\nfrog jumps in\nsplash"}
    assert raw.rows[2] is None and raw.problems[0].line == 6
    assert raw.rows[3]["completion"] == "Why did the chicken\r\ncross the road?"


def test_json_object_layouts(tmp_path: Path) -> None:
    columnar = tmp_path / "columnar.json"
    columnar.write_text(json.dumps({"prompt": ["a", "b"], "completion": ["1", "2"]}))
    assert load_raw_dataset(str(columnar)).rows == [
        {"prompt": "a", "completion": "1"},
        {"prompt": "b", "completion": "2"},
    ]
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"train": [{"text": "t"}], "test": [{"text": "e"}]}))
    assert load_raw_dataset(str(keyed), split="test").rows == [{"text": "e"}]
    with pytest.raises(DataError, match="split 'validation' not found"):
        load_raw_dataset(str(keyed), split="validation")


def test_parquet_round_trip(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    raw = load_raw_dataset(str(path))
    assert raw.lines == [None, None]
    ds = normalize_dataset(raw)
    assert ds.format == "messages" and [e["messages"] for e in ds.examples] == [r["messages"] for r in rows]


def test_save_to_disk_round_trip(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "d", "output": "e"},
    ]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    ds = load(tmp_path / "single")
    assert ds.format == "alpaca" and ds.examples[1]["messages"][0]["content"] == "c\n\nd"

    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert len(load_raw_dataset(str(tmp_path / "dict"), split="test").rows) == 1
    with pytest.raises(DataError, match="available splits: train, test"):
        load_raw_dataset(str(tmp_path / "dict"), split="validation")


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="not a dataset") as info:
        load_raw_dataset(str(tmp_path))
    assert info.value.file == str(tmp_path)


def test_missing_file_and_offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_raw_dataset("data/does-not-exist.jsonl")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_raw_dataset("sft-studio-tests/no-such-dataset")
    assert str(info.value) == (
        "could not load 'sft-studio-tests/no-such-dataset' from the Hugging Face Hub: "
        "you are offline and it is not in the cache"
    )


# ------------------------------------------------------------------------------ detection and misc


def test_detection_overrides_and_nothing_fits() -> None:
    raw = RawDataset("mem", [{"q": "x", "a": "y", "score": 1}], [1], ["q", "a", "score"], [])
    with pytest.raises(DataError) as info:
        detect_format(raw)
    assert "'q', 'a', 'score'" in str(info.value) and str(info.value).startswith("mem: ")
    guess = detect_format(raw, {"prompt": "q", "completion": "a"})
    assert guess.format == "prompt_completion" and guess.columns == {"prompt": "q", "completion": "a"}
    with pytest.raises(DataError, match="column 'nope'"):
        detect_format(raw, {"prompt": "nope", "completion": "a"})
    ds = normalize_dataset(raw, "text", {"text": "q"})
    assert ds.examples == [{"text": "x"}]
    with pytest.raises(DataError, match="unknown format"):
        normalize_dataset(raw, "chatml")
    assert set(FORMATS) == {"text", "prompt_completion", "messages", "sharegpt", "alpaca"}


def test_mixed_file_majority_wins(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    rows.insert(2, {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})
    ds = load(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert ds.format == "prompt_completion"
    problem = only(ds.problems, 2)
    assert problem.line == 3 and "mixed formats" in problem.message
    assert len(ds.valid_rows) == 5


def test_split_eval_deterministic_and_valid_only() -> None:
    ds = load(FIXTURES / "bad_rows.jsonl")
    valid = ds.valid_rows
    train, evaluation = split_eval(ds, 0.4, seed=1)
    assert (train, evaluation) == split_eval(ds, 0.4, seed=1)
    assert sorted(train + evaluation) == valid and not set(train) & set(evaluation)
    assert len(evaluation) == round(0.4 * len(valid))
    assert split_eval(ds, 0.0, seed=1) == (valid, [])
    with pytest.raises(ValueError):
        split_eval(ds, 1.0, seed=1)


def test_progress_called_and_can_cancel(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"row {i}"} for i in range(3500)])
    calls: list[tuple[int, int]] = []
    raw = load_raw_dataset(str(path), progress=lambda done, total: calls.append((done, total)))
    assert 3 <= len(calls) <= 6 and calls[-1][0] == calls[-1][1]

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        if done >= 1000:
            raise Cancelled

    with pytest.raises(Cancelled):
        normalize_dataset(raw, progress=cancel)


def test_summarize_problems() -> None:
    ds = load(FIXTURES / "bad_rows.jsonl")
    text = summarize_problems(ds.problems, limit=3)
    assert text.splitlines()[0] == "9 errors in 9 rows, 2 warnings"
    assert text.splitlines()[-1] == "... and 8 more"
    assert summarize_problems([]) == "no problems"


def test_import_is_light() -> None:
    code = (
        "import sys; import core.data; "
        "heavy = [m for m in ('datasets', 'torch', 'transformers', 'trl', 'PySide6', 'pyarrow') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

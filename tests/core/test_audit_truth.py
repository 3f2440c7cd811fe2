"""The audit never contradicts itself (issue 16, items 5 and 6): a row whose trained answer is cut off by truncation
is a problem of that row, and a column mapping that would train on the wrong text is refused or reported, as a
user of `sft-studio audit` sees it (exit code, the rows named, the key to fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.cli import main
from core.config import ConfigError, load_run_config
from core.data import DataError, load_raw_dataset, normalize_dataset

PUBLIC = Path(__file__).resolve().parents[1] / "data" / "public"


def write_run(tmp_path: Path, model: Path, data: Path, **data_settings) -> Path:
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), **data_settings},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def audit(capsys, run: Path, *, as_json: bool = True) -> tuple[int, dict | str, str]:
    capsys.readouterr()
    code = main(["audit", "--config", str(run), *(["--json"] if as_json else [])])
    out = capsys.readouterr()
    if as_json:
        return code, (json.loads(out.out) if out.out.strip() else None), out.err
    return code, out.out, out.err


@pytest.fixture(scope="module")
def model(tiny_model_factory) -> Path:
    return tiny_model_factory("qwen2_5")


# ----------------------------------------------------------------------------------- item 5: truncation


def test_answers_cut_by_truncation_are_problems_with_their_rows(tmp_path, model, capsys):
    run = write_run(tmp_path, model, PUBLIC / "alpaca_en_demo.json", max_length=160)
    code, report, _ = audit(capsys, run)
    assert code == 1 and not report["clean"]
    cut = report["eos_lost_rows"]
    assert len(cut) > 20
    cut_problems = [p for p in report["problems"] if "end-of-turn token" in p["message"]]
    assert [p["row"] for p in cut_problems] == cut  # every such row carries its own problem ...
    first = cut_problems[0]
    assert first["field"] == "output" and first["line"] and first["file"].endswith("alpaca_en_demo.json")
    assert "max_length=160" in first["message"] and "raise data.max_length" in first["message"]

    code, text, _ = audit(capsys, run, as_json=False)  # ... and the text report lists them with file and line
    assert code == 1
    assert f"{len(cut)} rows lose the end of a trained answer to truncation at max_length 160" in text
    assert f"alpaca_en_demo.json:{first['line']}: row {first['row']}: " in text
    assert "problems found (exit code 1)" in text


# ------------------------------------------------------------------------------ item 6: column mappings


def test_answer_mapped_to_the_prompt_column_is_refused_naming_the_key(tmp_path, model, capsys):
    """alpaca's output mapped to the instruction column used to give 999 "ok" rows that teach the model to echo."""
    run = write_run(tmp_path, model, PUBLIC / "alpaca_en_demo.json", columns={"output": "instruction"})
    code, report, err = audit(capsys, run)
    assert code == 2 and report is None
    assert "data.columns.output: column 'instruction' is already read as instruction" in err
    assert "Traceback" not in err


def test_two_roles_on_one_column_in_the_run_file_is_a_config_error_with_its_line(tmp_path, model):
    run = tmp_path / "run.yaml"
    run.write_text(
        f"model:\n  name_or_path: {model}\ndata:\n  path: {PUBLIC / 'alpaca_en_demo.json'}\n  columns:\n"
        "    instruction: output\n    output: output\noutput_dir: out\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(run)
    (problem,) = info.value.problems
    assert problem.key == "data.columns.output" and problem.line == 7
    assert "data.columns.output and data.columns.instruction both name the column 'output'" in problem.message


def test_answer_equal_to_the_prompt_on_most_rows_is_a_dataset_problem(tmp_path, model, capsys):
    data = tmp_path / "copied.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "question_copy": f"What is {i} + {i}?", "answer": str(2 * i)}
            for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = write_run(tmp_path, model, data, format="prompt_completion",
                    columns={"prompt": "question", "completion": "question_copy"})
    code, report, _ = audit(capsys, run)
    assert code == 1 and not report["clean"]
    (whole,) = report["dataset_problems"]
    assert "in 8 of 8 rows" in whole and "column 'question_copy'" in whole and "prompt 'question'" in whole
    assert "data.columns.completion" in whole
    per_row = [p for p in report["problems"] if "same text as the prompt" in p["message"]]
    assert [p["row"] for p in per_row] == list(range(8)) and per_row[0]["field"] == "question_copy"

    code, text, _ = audit(capsys, run, as_json=False)
    assert code == 1 and "problem   the answer is the same text as the prompt in 8 of 8 rows" in text


def test_an_empty_trained_side_is_reported_row_by_row_and_as_a_whole(tmp_path, model, capsys):
    data = tmp_path / "empty_answers.jsonl"
    rows = [{"instruction": f"Say {i}", "output": str(i), "notes": ""} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, report, _ = audit(capsys, write_run(tmp_path, model, data, columns={"output": "notes"}))
    assert code == 1 and report["trainable_rows"] == 0
    assert [d["row"] for d in report["dropped"]] == list(range(6))  # none is dropped silently
    assert all("the output is empty; there is nothing to train" in d["reason"] for d in report["dropped"])
    (whole,) = report["dataset_problems"]
    assert "nothing to train in 6 of 6 rows" in whole and "column 'notes', as set in the run file" in whole


def test_a_few_rows_echoing_their_prompt_are_warnings_not_a_dataset_problem(tmp_path):
    data = tmp_path / "few.jsonl"
    rows = [{"prompt": "Repeat: hi", "completion": "Repeat: hi"}] + [
        {"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ds = normalize_dataset(load_raw_dataset(str(data)))
    assert not ds.dataset_problems and ds.examples[0] is not None
    assert [(p.row, p.severity) for p in ds.problems] == [(0, "warning")]


@pytest.mark.parametrize(
    "name", ["alpaca_en_demo.json", "c4_demo.jsonl", "glaive_toolcall_en_demo.json", "identity.json",
             "v1_sft_demo.jsonl"]
)
def test_public_datasets_raise_no_false_alarms(name):
    ds = normalize_dataset(load_raw_dataset(str(PUBLIC / name)))
    assert ds.dataset_problems == [] and ds.notes == []
    assert not [p for p in ds.problems if "same text" in p.message]


def test_the_mapping_check_runs_for_an_explicit_format_too():
    raw = load_raw_dataset(str(PUBLIC / "alpaca_en_demo.json"))
    with pytest.raises(DataError, match=r"data\.columns\.input: column 'output' is already read as output"):
        normalize_dataset(raw, "alpaca", {"input": "output"})

"""Bad files through the whole path (`sft-studio audit/preview` -> open_run -> core.data): every case names the
file and line, exits with the documented code, drops nothing silently and writes nothing."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from hardening_helpers import CORPUS, OK_ROW, assert_every_row_accounted_for, jsonl, run_subprocess, write_run

from core.data import DataError, load_raw_dataset, normalize_dataset


@pytest.fixture
def model(tiny_model_factory) -> Path:
    return tiny_model_factory("qwen2_5")


def corpus_copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copy(CORPUS / name, target)
    return target


def test_empty_file_exit_2_names_file(tmp_path, model, cli):
    data = tmp_path / "empty.jsonl"
    data.write_bytes(b"")
    code, report, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and report is None
    assert err.startswith(f"error: {data}: the file is empty")
    assert not (tmp_path / "out").exists()  # nothing written


def test_whitespace_only_file(tmp_path, model, cli):
    data = tmp_path / "blank.jsonl"
    data.write_text("\n  \n\t\n")
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and str(data) in err and "empty" in err


def test_bom_and_crlf_read_cleanly(tmp_path, model, cli):
    data = corpus_copy(tmp_path, "bom_crlf.jsonl")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 0, report
    assert report["rows"] == 2 and report["trainable_rows"] == 2
    _, rows, _ = cli.preview(write_run(tmp_path, model, data))
    assert "\r" not in "".join(t for r in rows for t in r["tokens"])  # CR does not leak into the text


def test_truncated_last_line_reported_with_line_and_hint(tmp_path, model, cli):
    data = corpus_copy(tmp_path, "truncated_last_line.jsonl")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 1
    assert report["rows"] == 2 and report["trainable_rows"] == 1
    (dropped,) = report["dropped"]
    assert dropped["row"] == 1 and dropped["line"] == 2
    assert "not valid JSON" in dropped["reason"] and "cut off" in dropped["reason"]
    assert_every_row_accounted_for(report)


def test_non_utf8_bytes_name_line_and_column(tmp_path, model, cli):
    data = corpus_copy(tmp_path, "latin1.jsonl")
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2
    assert f"{data}:2: not valid UTF-8 text (byte 0xe9 at column 16)" in err


def test_utf16_file_told_to_save_as_utf8(tmp_path, model, cli):
    data = tmp_path / "utf16.jsonl"
    data.write_text(jsonl(OK_ROW), encoding="utf-16")
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and f"{data}:1" in err and "UTF-16" in err


@pytest.mark.parametrize("name", ["array_named.jsonl", "jsonl_named.json", "pretty_objects.jsonl"])
def test_json_array_vs_jsonl_both_ways(tmp_path, model, cli, name):
    """A JSON array in a .jsonl file, JSON lines in a .json file, and pretty-printed objects: all read, with lines."""
    data = corpus_copy(tmp_path, name)
    raw = load_raw_dataset(str(data))
    assert [r["prompt"] for r in raw.rows] == ["a", "c"]
    assert raw.lines[0] == 1 and raw.lines[1] in (2, 5)
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 0 and report["trainable_rows"] == 2


def test_malformed_json_array_names_line(tmp_path, model, cli):
    data = tmp_path / "bad.json"
    data.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}\n]\n')
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and f"{data}:3: malformed JSON array" in err


def test_csv_quoted_newlines_keep_row_and_line(tmp_path, model, cli):
    data = corpus_copy(tmp_path, "quoted_newlines.csv")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 1
    assert report["rows"] == 3 and report["trainable_rows"] == 2
    (problem,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert (problem["row"], problem["line"], problem["field"]) == (1, 6, "completion")
    assert problem["file"] == str(data)
    _, rows, _ = cli.preview(write_run(tmp_path, model, data), "--limit", "1")
    assert "spans" in "".join(rows[0]["tokens"])  # the quoted newline stayed inside the row


def test_parquet_nested_columns(tmp_path, model, cli):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "nested.parquet"
    table = pa.table(
        {
            "messages": [OK_ROW["messages"], [{"role": "user", "content": "only a question"}]],
            "meta": [{"source": {"tags": ["a", "b"]}}, {"source": {"tags": []}}],
        }
    )
    pq.write_table(table, data)
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 1 and report["rows"] == 2 and report["trainable_rows"] == 1
    (problem,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert problem["row"] == 1 and problem["field"] == "messages" and problem["file"] == str(data)
    assert "no assistant message" in problem["message"]

    wrong = tmp_path / "wrong_nesting.parquet"
    pq.write_table(pa.table({"prompt": [{"x": "hi"}], "completion": [["a", "b"]]}), wrong)
    code, report, _ = cli.audit(write_run(tmp_path, model, wrong))
    assert code == 1 and report["trainable_rows"] == 0
    fields = {p["field"] for p in report["problems"]}
    assert "prompt" in fields and "completion[0]" in fields


def test_folder_that_is_not_a_dataset(tmp_path, model, cli):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "image.png").write_bytes(b"\x89PNG")
    code, _, err = cli.audit(write_run(tmp_path, model, folder))
    assert code == 2 and str(folder) in err and "not a dataset" in err and "notes.txt" in err


def test_corrupt_saved_dataset_folder(tmp_path, model, cli):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "state.json").write_text("{not json")
    code, _, err = cli.audit(write_run(tmp_path, model, folder))
    assert code == 2 and str(folder) in err and "saved dataset" in err


def test_path_with_spaces_and_non_ascii(tmp_path, model, cli):
    folder = tmp_path / "mes données ü 数据"
    folder.mkdir()
    data = folder / "trä in file.jsonl"
    data.write_text(jsonl(OK_ROW, "{broken"), encoding="utf-8")
    run = write_run(folder, model, data, name="rün file.yaml")
    code, report, _ = cli.audit(run)
    assert code == 1 and report["source"] == str(data)
    assert report["dropped"][0]["line"] == 2
    proc = run_subprocess("audit", "--config", run)
    assert proc.returncode == 1 and f"{data}:2: row 1" in proc.stdout and "Traceback" not in proc.stderr


def test_file_that_changes_while_loading(tmp_path, model, cli):
    data = tmp_path / "growing.jsonl"
    data.write_text(jsonl(*[OK_ROW] * 3000))

    def writer_appends(done: int, total: int) -> None:
        if done >= 1000 and data.stat().st_size < 400_000:
            with data.open("a") as fh:
                fh.write(jsonl(OK_ROW))

    with pytest.raises(DataError) as excinfo:
        load_raw_dataset(str(data), progress=writer_appends)
    assert excinfo.value.file == str(data)
    assert "the file changed while loading" in str(excinfo.value)

    # Same check on the CLI path: mtime moves while the file is read (simulated with a stat that changes).
    import core.data.loading as loading

    real = loading._stamp
    calls = {"n": 0}

    def moving_stamp(p: Path):
        calls["n"] += 1
        size, mtime = real(p)
        return size, mtime + calls["n"]

    try:
        loading._stamp = moving_stamp
        code, _, err = cli.audit(write_run(tmp_path, model, data))
    finally:
        loading._stamp = real
    assert code == 2 and f"{data}: the file changed while loading" in err


def test_unchanged_file_is_not_flagged(tmp_path):
    data = tmp_path / "still.jsonl"
    data.write_text(jsonl(*[OK_ROW] * 2500))
    assert len(load_raw_dataset(str(data), progress=lambda d, t: None)) == 2500


def test_50mb_single_row_loads_fast(tmp_path):
    data = tmp_path / "huge_row.jsonl"
    big = "word " * 10_000_000  # 50 MB of text in one assistant turn
    data.write_text(
        jsonl({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": big}]})
    )
    start = time.perf_counter()
    ds = normalize_dataset(load_raw_dataset(str(data)))
    assert time.perf_counter() - start < 10
    assert ds.valid_rows == [0] and len(ds.examples[0]["messages"][1]["content"]) == len(big)


def test_million_tiny_rows_under_20s(tmp_path, model, cli):
    data = tmp_path / "million.jsonl"
    line = json.dumps({"prompt": "hi", "completion": "yo"}) + "\n"
    with data.open("w") as fh:
        fh.write(line * 999_999)
        fh.write('{"prompt": "hi", "completion": null}\n')  # the last row is bad: must be found, not dropped
    start = time.perf_counter()
    code, rows, _ = cli.preview(write_run(tmp_path, model, data), "--row", "0", "--row", "999999")
    assert time.perf_counter() - start < 20
    assert code == 0
    assert rows[0]["row"] == 0 and "input_ids" in rows[0]
    assert rows[1] == {"row": 999_999, "dropped": "completion: is null; expected text"}

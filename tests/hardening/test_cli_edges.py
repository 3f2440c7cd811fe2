"""CLI edges from issue 16 (item 10) and their neighbours: an output folder that cannot be written, binary and huge
files (memory stays bounded, rejection is quick), a Parquet column of the wrong shape, role names read through an
alias, and JSON syntax errors named for what they are. Each: a clear message naming file, line/row and field, a
non-zero exit, never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hardening_helpers import OK_ROW, ROOT, jsonl, write_run

import core.data.loading as loading
from core.data import DataError, load_raw_dataset, normalize_dataset


@pytest.fixture
def model(tiny_model_factory) -> Path:
    return tiny_model_factory("qwen2_5")


# -------------------------------------------------------------------------------- unwritable output_dir


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: use a read-only mount)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "run"
    for candidate in (Path("/sys/sft-studio-test-run"), Path("/proc/sft-studio-test-run")):
        try:
            candidate.mkdir()
        except OSError:
            return candidate
        candidate.rmdir()
    pytest.skip("no unwritable folder available to root here")


def test_train_into_a_read_only_output_dir_says_so_without_a_traceback(tmp_path, model):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl(OK_ROW), encoding="utf-8")
    out = _unwritable_dir(tmp_path)
    run = write_run(tmp_path, model, data, output_dir=out)
    proc = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and ".lock" not in proc.stderr
    assert f"error: output_dir {out}: cannot write the run there" in proc.stderr
    assert "Choose another output_dir" in proc.stderr
    assert not out.exists()


def test_train_where_a_file_is_in_the_way_of_output_dir(tmp_path, model):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl(OK_ROW), encoding="utf-8")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    run = write_run(tmp_path, model, data, output_dir=blocker / "run")
    proc = subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"output_dir {blocker / 'run'}: cannot write the run there: a file is in the way" in proc.stderr


# ------------------------------------------------------------------------------- binary and huge files

_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from core.data import DataError, load_raw_dataset
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        load_raw_dataset(sys.argv[1])
        message = None
    except DataError as exc:
        message = str(exc)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"message": message, "seconds": time.perf_counter() - start, "grew_kib": grew}))
    """
)


def _load_in_child(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_200mb_of_nul_bytes_is_rejected_at_once_in_bounded_memory(tmp_path, suffix):
    """Was: the whole file read and decoded (a 2 GB file took 4.2 GB of memory and 78 s to reject)."""
    path = tmp_path / f"zeros{suffix}"
    with open(path, "wb") as fh:
        fh.truncate(200 * 1024 * 1024)  # 200 MB of NUL bytes (sparse: quick to make)
    result = _load_in_child(path)
    assert result["message"] == (
        f"{path}:1: this is not a text file: it holds binary data (a NUL byte at byte 1). "
        "Data files must be UTF-8 text (JSON lines, JSON, CSV) or Parquet/Arrow"
    )
    assert result["grew_kib"] < 32 * 1024, result  # a few MiB at most, whatever the file's size
    assert result["seconds"] < 30, result  # generous: it reads 64 KiB


def test_binary_after_good_lines_names_the_line_and_stays_bounded(tmp_path):
    path = tmp_path / "tail.jsonl"
    with open(path, "wb") as fh:
        fh.write(jsonl(OK_ROW, OK_ROW).encode())
        fh.write(b"\n" * 10)
        fh.truncate(100 * 1024 * 1024)  # then 100 MB of NUL bytes
    result = _load_in_child(path)
    assert result["message"].startswith(f"{path}:13: this is not a text file: it holds binary data")
    assert result["grew_kib"] < 32 * 1024, result


def test_one_endless_line_is_refused_instead_of_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "MAX_ROW_BYTES", 1 << 20)
    path = tmp_path / "endless.jsonl"
    path.write_text(jsonl(OK_ROW) + '{"text": "' + "a" * (3 << 20), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(path))
    assert info.value.line == 2 and "line 2 is longer than 1 MiB" in str(info.value)
    array = tmp_path / "endless.json"
    array.write_text('[{"text": "' + "a" * (3 << 20), encoding="utf-8")
    with pytest.raises(DataError, match="the value starting at line 1 is longer than 1 MiB"):
        load_raw_dataset(str(array))
    keyed = tmp_path / "keyed.json"  # one object holding every row: no per-row limit applies to it
    rows = [{"text": "b" * 1000} for _ in range(3000)]
    keyed.write_text(json.dumps({"train": rows}), encoding="utf-8")
    assert load_raw_dataset(str(keyed)).rows == rows


@pytest.mark.parametrize(
    "content, words",
    [
        (gzip.compress(b'{"text": "hi"}\n'), "gzip-compressed; decompress it first"),
        (b"PAR1" + b"\x00" * 100, "a Parquet file; give it the .parquet extension"),
        (b"PK\x03\x04" + b"\x00" * 100, "a ZIP archive"),
        ('{"text": "hi"}\n'.encode("utf-16-le"), "looks like UTF-16 text"),
    ],
)
def test_other_non_text_files_say_what_they_are(tmp_path, model, cli, content, words):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and str(data) in err and words in err and "Traceback" not in err


def test_arrays_and_objects_split_across_reads_keep_values_and_lines(tmp_path, monkeypatch):
    """The JSON array reader holds one element at a time: tiny reads must give what json.load gives."""
    rows = [{"text": f"row {i} é ü 日本", "n": 12345678901234567890 + i, "f": 1.5e-7, "ok": i % 2 == 0}
            for i in range(40)]
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n",
                    encoding="utf-8")
    monkeypatch.setattr(loading, "CHUNK_BYTES", 7)
    raw = load_raw_dataset(str(path))
    assert raw.rows == rows and raw.lines == list(range(2, 42))
    stream = tmp_path / "pretty.jsonl"
    stream.write_text("".join(json.dumps(r, indent=2) + "\n" for r in rows[:5]), encoding="utf-8")
    raw = load_raw_dataset(str(stream))
    assert raw.rows == rows[:5] and raw.lines == [1, 7, 13, 19, 25]


def test_bad_utf8_inside_a_json_array_names_line_and_column(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "CHUNK_BYTES", 5)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n {"text": "ok"},\n {"text": "caf\xe9"}\n]\n')
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(path))
    assert str(info.value) == f"{path}:3: not valid UTF-8 text (byte 0xe9 at column 15); save the file as UTF-8"


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_with_a_long_document_and_old_mac_line_ends(tmp_path):
    long_text = "word " * 60_000  # 300 KB in one cell: over the csv module's default field limit
    path = tmp_path / "long.csv"
    path.write_text(f'prompt,completion\nsummarise,"{long_text}"\n', encoding="utf-8")
    assert load_raw_dataset(str(path)).rows[0]["completion"] == long_text
    mac = tmp_path / "mac.csv"
    mac.write_bytes(b"prompt,completion\rq1,a1\rq2,a2\r")
    raw = load_raw_dataset(str(mac))
    assert raw.rows == [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]
    assert raw.lines == [2, 3]


# --------------------------------------------------------------------------- Parquet column of strings


def test_parquet_messages_column_of_strings_says_what_it_holds(tmp_path, model, cli):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": ["hello there", "how are you"]}), data)
    code, _, err = cli.audit(write_run(tmp_path, model, data))
    assert code == 2 and "Traceback" not in err
    assert "column 'messages' holds strings where a list of {role, content} messages" in err
    assert "row 0 is text ('hello there')" in err
    assert "Expected one of" not in err  # not the generic "columns found are 'messages' ... expected 'messages'"

    # with the format given, every row says the same, with its row number
    code, report, _ = cli.audit(write_run(tmp_path, model, data, data={"format": "messages"}))
    assert code == 1 and report["trainable_rows"] == 0
    assert [(p["row"], p["field"]) for p in report["problems"]] == [(0, "messages"), (1, "messages")]
    assert "expected a list of messages, got text ('hello there')" in report["problems"][0]["message"]


# ----------------------------------------------------------------------------------------- role names

BOT_ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
    {"messages": [{"role": "user", "content": "and?"}, {"role": "Bot", "content": "more"}]},
    OK_ROW,
]


def test_a_bot_role_read_as_assistant_is_noted_in_the_audit(tmp_path, model, cli):
    data = tmp_path / "bot.jsonl"
    data.write_text(jsonl(*BOT_ROWS), encoding="utf-8")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 0 and report["trainable_rows"] == 3  # a note, not a problem
    notes = [n for n in report["notes"] if n.startswith("role '")]
    assert notes == [
        "role 'bot' read as assistant in 1 row; to say so in the run file (or map it differently) set data.roles, "
        "e.g. roles: {assistant: [bot]}",
        "role 'Bot' read as assistant in 1 row; to say so in the run file (or map it differently) set data.roles, "
        "e.g. roles: {assistant: [Bot]}",
    ]
    code, text, _ = cli("audit", "--config", write_run(tmp_path, model, data))
    assert "note      role 'bot' read as assistant in 1 row" in text


def test_data_roles_makes_the_mapping_explicit_and_maps_unknown_names(tmp_path, model, cli):
    rows = [*BOT_ROWS, {"messages": [{"role": "customer", "content": "hi"}, {"role": "agent", "content": "yo"}]}]
    data = tmp_path / "roles.jsonl"
    data.write_text(jsonl(*rows), encoding="utf-8")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 1 and [d["row"] for d in report["dropped"]] == [3]
    assert "map it in the run file with data.roles, e.g. roles: {assistant: [customer]}" in report["dropped"][0]["reason"]

    run = tmp_path / "mapped.yaml"  # axolotl's shape: our role -> a list of the data's names
    run.write_text(
        f"model:\n  name_or_path: {model}\ndata:\n  path: {data}\n  max_length: 256\n  roles:\n"
        "    assistant: [bot, agent]\n    user: [customer]\noutput_dir: out\n",
        encoding="utf-8",
    )
    code, report, _ = cli.audit(run)
    assert code == 0 and report["trainable_rows"] == 4
    assert not [n for n in report["notes"] if n.startswith("role 'bot'")]  # said in the run file: no note
    code, rows_out, _ = cli.preview(run)
    assert code == 0 and all("input_ids" in r for r in rows_out)


def test_one_role_name_for_two_roles_is_a_config_error(tmp_path, model, cli):
    run = tmp_path / "run.yaml"
    run.write_text(
        f"model:\n  name_or_path: {model}\ndata:\n  path: x.jsonl\n  roles:\n    assistant: [bot]\n"
        "    user: [human, bot]\n    narrator: [x]\noutput_dir: out\n",
        encoding="utf-8",
    )
    code, _, err = cli.audit(run)
    assert code == 2
    assert f"{run}:7: data.roles.user and data.roles.assistant both list the name 'bot'" in err
    assert f"{run}:8: unknown key 'data.roles.narrator' (allowed: system, user, assistant, tool)" in err


# ------------------------------------------------------------------------------------ JSON syntax errors


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"prompt": "a", "completion": "b",}', "trailing comma before '}' at column 34"),
        ('{"messages": [{"role": "user", "content": "a"},]}', "trailing comma before ']' at column 47"),
        ("{'prompt': 'a', 'completion': 'b'}", "single quote at column 2: JSON needs double quotes"),
        ('{"prompt": "a", "completion": None}', "Python's None at column 31; JSON writes null"),
        ('{prompt: "a", "completion": "b"}', "the key 'prompt' at column 2 has no double quotes"),
        ('{"prompt": "a\tb", "completion": "b"}', "a tab inside a string at column 14"),
        ('{"prompt": "a", "completion": "b"}}', "unexpected text after the end of the JSON value at column 35"),
    ],
)
def test_jsonl_syntax_errors_are_named_for_what_they_are(tmp_path, model, cli, line, words):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl({"prompt": "q", "completion": "a"}) + line + "\n" + jsonl({"prompt": "q", "completion": "a"}),
                    encoding="utf-8")
    code, report, _ = cli.audit(write_run(tmp_path, model, data))
    assert code == 1
    (dropped,) = report["dropped"]
    assert dropped["row"] == 1 and dropped["line"] == 2
    assert dropped["reason"] == f"not valid JSON: {words}" or dropped["reason"].startswith(f"not valid JSON: {words}")
    assert "ends before the object is closed" not in dropped["reason"]


def test_trailing_commas_in_json_files_name_line_and_column(tmp_path):
    array = tmp_path / "array.json"
    array.write_text('[\n  {"text": "a"},\n  {"text": "b"},\n]\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(array))
    assert str(info.value) == (
        f"{array}:3: malformed JSON array: trailing comma at column 16, before the closing ']' "
        "(JSON allows no comma after the last item)"
    )
    keyed = tmp_path / "keyed.json"
    keyed.write_text('{"train": [\n  {"text": "a",}\n]}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_raw_dataset(str(keyed))
    assert str(info.value) == (
        f"{keyed}:2: malformed JSON: trailing comma before '}}' at column 15 (JSON allows no comma after the last item)"
    )


def test_a_cut_off_last_line_still_says_so(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(jsonl(OK_ROW) + '{"text": "a"\n' + jsonl(OK_ROW) + '{"text": "b', encoding="utf-8")
    ds = normalize_dataset(load_raw_dataset(str(path)))
    messages = {p.line: p.message for p in ds.problems}
    assert messages[2].endswith("(the line ends before the object is closed)")
    assert messages[4] == (
        "not valid JSON: the string that starts at column 10 is never closed (the last line is incomplete: the file "
        "may have been cut off while it was written)"
    )


def test_a_folder_the_cli_cannot_write_is_named_without_a_traceback(tmp_path, model, cli):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl(OK_ROW), encoding="utf-8")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli("cluster-export", "--config", write_run(tmp_path, model, data), blocker / "cluster")
    assert code == 2 and err.startswith(f"error: {blocker / 'cluster'}: ") and "Traceback" not in err

"""Hub dataset preview (issue 17) against the loopback Hub stand-in (tests/hub_server.py): facts, splits by datasets'
conventions, the first rows read from a prefix only (the server's byte log proves it), the studio's format detection
on them, gated/missing/offline/unreachable as one sentence, the dataset-info command, and a dataset download."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHATS = [{"messages": [{"role": "user", "content": f"question {i}: " + "why " * 60},
                       {"role": "assistant", "content": f"answer {i}"}]} for i in range(4000)]
CHAT_JSONL = "".join(json.dumps(r) + "\n" for r in CHATS).encode()
TEST_JSONL = CHAT_JSONL[:40_000].rsplit(b"\n", 1)[0] + b"\n"  # whole lines


def _alpaca_parquet(rows: int, row_group_size: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"instruction": [f"task {i}: " + "do this " * 40 for i in range(rows)],
                      "input": [""] * rows, "output": [f"done {i}" for i in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size, compression="none")
    return buf.getvalue()


PARQUET = _alpaca_parquet(12_000, 1000)  # ~4 MB in 12 row groups
CARD = (b"---\nlicense: cc-by-4.0\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        b"    path: data/train-*\n---\n# Alpaca rows\n\nInstructions and answers.\n")


@pytest.fixture(scope="module")
def hub():
    from hub_server import HubServer, Repo

    repos = [
        Repo("data-org/chats", {"train.jsonl": CHAT_JSONL, "test.jsonl": TEST_JSONL,
                                "README.md": b"---\nlicense: mit\n---\n# Chats\n\nTwo-turn chats.\n"},
             repo_type="dataset", card_data={"license": "mit"}, downloads=7),
        Repo("data-org/alpaca", {"data/train-00000-of-00002.parquet": PARQUET,
                                 "data/train-00001-of-00002.parquet": _alpaca_parquet(10, 5),
                                 "data/validation-00000-of-00001.parquet": _alpaca_parquet(30, 10),
                                 "README.md": CARD},
             repo_type="dataset", card_data={"license": "cc-by-4.0", "configs": [
                 {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"},
                                                           {"split": "validation", "path": "data/validation-*"}]}]}),
        Repo("data-org/mixed", {"questions-train.json": json.dumps([{"prompt": f"p{i}", "completion": f"c{i}"}
                                                              for i in range(6000)], indent=1).encode(),
                                "dev.csv": ("text\n" + "".join(f'"line {i}, quoted"\n' for i in range(20_000))).encode()},
             repo_type="dataset"),
        Repo("data-org/one-group", {"train.parquet": _alpaca_parquet(3000, 3000)}, repo_type="dataset"),
        Repo("data-org/odd", {"train.jsonl": b'{"foo": 1, "bar": 2}\n' * 50}, repo_type="dataset"),
        Repo("data-org/images", {"images.zip": b"PK" + b"\0" * 100}, repo_type="dataset"),
        Repo("data-org/wrapped", {"train.json": json.dumps({"data": [{"text": "a"}]}, indent=2).encode()},
             repo_type="dataset"),
        Repo("gated-org/private-chats", {"train.jsonl": CHAT_JSONL[:10_000]}, repo_type="dataset", gated=True),
    ]
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    hub.use(monkeypatch, tmp_path)
    return {**os.environ}


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_facts_sizes_splits_licence_and_card(hub_env):
    from core.dataset_hub import dataset_facts

    facts = dataset_facts("data-org/chats")
    sizes = {f.path: f.size for f in facts.files}
    assert sizes["train.jsonl"] == len(CHAT_JSONL) and facts.total_size == sum(sizes.values())
    assert facts.splits == {"train": ["train.jsonl"], "test": ["test.jsonl"]}
    assert facts.license == "mit" and not facts.gated and facts.cached_path is None
    assert facts.card.startswith("# Chats") and "---" not in facts.card

    alpaca = dataset_facts("data-org/alpaca")  # the card's configs decide, as in datasets
    assert alpaca.config == "default" and alpaca.configs == ["default"]
    assert alpaca.splits["train"] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert alpaca.splits["validation"] == ["data/validation-00000-of-00001.parquet"]
    assert dataset_facts("data-org/mixed").splits == {"train": ["questions-train.json"], "validation": ["dev.csv"]}


def test_split_names_follow_datasets_conventions():
    from core.dataset_hub import splits_of

    found, _, _ = splits_of(["README.md", "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                             "data/test-00000-of-00001.parquet", "valid.jsonl", "training_set.csv.gz",
                             "notes/contest.txt", ".gitattributes"])
    assert found["train"] == ["data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet",
                              "training_set.csv.gz"]
    assert found["test"] == ["data/test-00000-of-00001.parquet"] and found["validation"] == ["valid.jsonl"]
    assert "notes/contest.txt" not in sum(found.values(), [])  # "contest" is not the word "test"
    assert splits_of(["rows.jsonl", "more/rows2.jsonl"])[0] == {"train": ["more/rows2.jsonl", "rows.jsonl"]}


def test_jsonl_first_rows_from_a_prefix_with_the_studio_format(hub, hub_env):
    from core.dataset_hub import preview_dataset

    before = hub.bytes_sent("train.jsonl")
    preview = preview_dataset("data-org/chats", rows=20)
    sent = hub.bytes_sent("train.jsonl") - before
    assert preview.rows == CHATS[:20] and preview.lines == list(range(1, 21))
    assert preview.format == "messages" and "messages" in preview.format_reason and not preview.problems
    assert preview.bytes_read == sent and 0 < sent < len(CHAT_JSONL) / 5  # a prefix, not the file
    ranges = [r for r in hub.ranges("train.jsonl")][-1:]
    assert ranges and ranges[0].startswith("bytes=0-")  # ranged reads from the start
    assert preview.file_size == len(CHAT_JSONL) and preview.read_fraction < 0.2


def test_parquet_reads_the_footer_and_the_first_row_group_only(hub, hub_env):
    from core.dataset_hub import preview_dataset

    name = "train-00000-of-00002.parquet"
    before = hub.bytes_sent(name)
    preview = preview_dataset("data-org/alpaca", rows=5)
    sent = hub.bytes_sent(name) - before
    assert preview.file == "data/" + name and preview.kind == "parquet"
    assert (preview.total_rows, preview.row_groups) == (12_000, 12)
    assert [r["instruction"][:7] for r in preview.rows] == [f"task {i}:" for i in range(5)]
    assert preview.format == "alpaca" and preview.columns == ["instruction", "input", "output"]
    assert preview.bytes_read == sent and sent < len(PARQUET) / 4  # 1 of 12 row groups + the footer
    assert all(r and r.startswith("bytes=") for r in hub.ranges(name)[-3:])

    other = preview_dataset("data-org/alpaca", split="validation")
    assert len(other.rows) == 20 and other.total_rows == 30 and other.file.startswith("data/validation")


def test_a_giant_first_row_group_is_refused_not_downloaded(hub, hub_env):
    from core.dataset_hub import preview_dataset

    preview = preview_dataset("data-org/one-group", max_row_group_bytes=200_000)
    assert preview.rows == [] and preview.total_rows == 3000
    assert "first row group alone is" in preview.note and "download the dataset" in preview.note
    assert hub.bytes_sent("train.parquet") < 200_000  # the footer only


def test_json_array_and_csv_are_read_from_the_start(hub, hub_env):
    from core.dataset_hub import preview_dataset

    array = preview_dataset("data-org/mixed", rows=3)
    assert array.kind == "json" and array.rows == [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    assert array.format == "prompt_completion" and array.lines[0] == 2
    csv = preview_dataset("data-org/mixed", split="validation", rows=4)
    assert csv.rows == [{"text": f"line {i}, quoted"} for i in range(4)] and csv.lines == [2, 3, 4, 5]
    assert csv.format == "text"
    assert hub.bytes_sent("dev.csv") < 200_000 < csv.file_size


def test_rows_the_studio_cannot_read_say_why(hub, hub_env):
    from core.dataset_hub import HubError, preview_dataset

    odd = preview_dataset("data-org/odd", rows=3)
    assert odd.format is None and odd.rows == [{"foo": 1, "bar": 2}] * 3
    assert "foo" in odd.format_error and "bar" in odd.format_error
    short = preview_dataset("data-org/chats", split="test", rows=1000)  # a short file: all of it, no more
    assert len(short.rows) == TEST_JSONL.count(b"\n") < 1000 and short.bytes_read == len(TEST_JSONL)
    with pytest.raises(HubError, match="split 'nope' not found; the dataset has train, test") as missing:
        preview_dataset("data-org/chats", split="nope")
    assert missing.value.kind == "not_found"
    with pytest.raises(HubError, match="no data file the studio can preview") as images:
        preview_dataset("data-org/images")
    assert images.value.kind == "unsupported"
    with pytest.raises(HubError, match="one JSON object over many lines") as wrapped:
        preview_dataset("data-org/wrapped")
    assert wrapped.value.kind == "unsupported"


def test_cancel_stops_between_requests(hub_env):
    from core.dataset_hub import PreviewCancelled, preview_dataset

    calls: list[tuple[int, int]] = []

    def progress(done: int, budget: int) -> None:
        calls.append((done, budget))
        if done > 0:
            raise RuntimeError("superseded")

    with pytest.raises(PreviewCancelled):
        preview_dataset("data-org/chats", progress=progress)
    assert calls[-1][0] > 0


def test_gated_missing_offline_and_unreachable_are_one_sentence(hub_env, monkeypatch):
    from core.dataset_hub import HubError, preview_dataset

    with pytest.raises(HubError) as gated:
        preview_dataset("gated-org/private-chats")
    assert gated.value.kind == "gated" and "hf auth login" in str(gated.value) and "HF_TOKEN" in str(gated.value)
    with pytest.raises(HubError, match="no such dataset") as missing:
        preview_dataset("nobody/nothing")
    assert missing.value.kind == "not_found"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline mode is on") as offline:
        preview_dataset("data-org/chats")
    assert offline.value.kind == "offline"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub") as unreachable:
        preview_dataset("data-org/chats")
    assert unreachable.value.kind == "network"


def test_dataset_info_command_text_and_json(hub_env):
    text = cli("dataset-info", "data-org/alpaca", "--rows", "3", env=hub_env)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.startswith("data-org/alpaca · ") and "licence cc-by-4.0" in out
    assert "data/train-00000-of-00002.parquet" in out and "data/validation-00000-of-00001.parquet" in out
    assert "12,000 rows in 12 row groups" in out and "format: alpaca" in out
    assert "first 3 rows:" in out and '"instruction": "task 2:' in out and "% of the file)" in out

    js = cli("dataset-info", "data-org/chats", "--split", "test", "--rows", "2", "--json", env=hub_env)
    assert js.returncode == 0, js.stderr
    (line,) = js.stdout.strip().splitlines()  # one JSON object
    data = json.loads(line)
    assert data["rows"] == CHATS[:2] and data["format"] == "messages" and data["split"] == "test"
    assert data["facts"]["total_size"] > 0 and data["bytes_read"] > 0
    assert {f["path"] for f in data["facts"]["files"]} == {"train.jsonl", "test.jsonl", "README.md"}


def test_dataset_info_errors_are_one_line_exit_2(hub_env):
    for args, expected in ((["gated-org/private-chats"], "is gated"), (["nobody/nothing"], "no such dataset"),
                           (["data-org/chats", "--split", "dev"], "split 'dev' not found")):
        proc = cli("dataset-info", *args, env=hub_env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
        assert not proc.stdout
    for env in ({**hub_env, "HF_HUB_OFFLINE": "1"}, {**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9"}):
        proc = cli("dataset-info", "data-org/chats", "--json", env=env)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_download_dataset_flag_and_the_run_path(hub_env):
    from core.dataset_hub import dataset_facts, dataset_path_for_run

    proc = cli("download", "data-org/chats", "--dataset", env=hub_env)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip())
    assert (snapshot / "train.jsonl").read_bytes() == CHAT_JSONL and "100%" in proc.stderr
    assert snapshot.parent.parent.name == "datasets--data-org--chats"
    facts = dataset_facts("data-org/chats")
    assert facts.cached_path == str(snapshot)
    # one file per split: the run reads the downloaded file itself; several files: the Hub id
    assert dataset_path_for_run("data-org/chats", facts.splits["train"], facts.cached_path) == str(
        snapshot / "train.jsonl")
    assert dataset_path_for_run("data-org/alpaca", ["a.parquet", "b.parquet"], str(snapshot)) == "data-org/alpaca"


def test_looks_like_a_hub_id(tmp_path, monkeypatch):
    from core.dataset_hub import looks_like_hub_dataset_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert looks_like_hub_dataset_id("HuggingFaceH4/no_robots")
    assert not looks_like_hub_dataset_id("data/train")  # a local folder wins
    assert not looks_like_hub_dataset_id("rows.jsonl") and not looks_like_hub_dataset_id("org/rows.jsonl")
    assert not looks_like_hub_dataset_id("/abs/path") and not looks_like_hub_dataset_id("single")

"""The long-row benchmark runs end to end on the CPU (a 2-layer model), so the script a GPU session relies on is
known to work before device time is spent on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_long_row_is_a_learnable_sequence_with_an_untrained_prompt():
    from benchmarks.long_rows import long_row

    row = long_row(1000, 512)
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == 1000
    assert labels[:100] == [-100] * 100 and labels[100:] == ids[100:]  # the first 10 % carries no loss
    following = {}
    for a, b in zip(ids, ids[1:], strict=False):  # each token always has the same successor: learnable
        assert following.setdefault(a, b) == b
    assert long_row(1000, 512) == row  # the same row on every machine (Unsloth's run and the studio's)


def test_long_context_benchmark_runs_each_length_and_records_the_estimate(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "long_context.py"), "--tiny", "--out", str(out),
                           "--lengths", "128,256", "--steps", "2,2"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = [json.loads(line) for line in (out / "long-auto.jsonl").read_text().splitlines()]
    assert [r["length"] for r in results] == [128, 256]
    for r in results:
        assert r["ok"] and r["tokens_per_s"] > 0 and r["steps_timed"] == 1
        assert r["estimate_allocated_gib"] > 0 and r["reasons"]
        assert len(r["losses"]) == 2

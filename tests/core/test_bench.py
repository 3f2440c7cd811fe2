"""`sft-studio bench`: real steps of the run, timed after warm-up, nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.cli import main
from core.training.bench import BenchResult, peak_flops


@pytest.fixture()
def tiny_run_file(tmp_path: Path, tiny_model_factory) -> Path:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer number {i}"},
    ]}) + "\n" for i in range(24)))
    cfg = {
        "model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
        "data": {"path": str(data), "max_length": 64},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {"max_steps": 50, "per_device_train_batch_size": 4, "logging_steps": 10, "seed": 0},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_peak_flops_known_and_unknown_devices() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("CPU") is None


def test_result_lines_say_what_was_measured() -> None:
    r = BenchResult(device="cuda: NVIDIA H100 80GB HBM3, 79.2 GiB", steps_timed=5, warmup_steps=2,
                    tokens_per_second=8331.0, seconds_per_step=0.2, tokens_per_step=1666.0, peak_memory_gib=26.63,
                    estimate_gib=27.81, estimate_error=0.0443, mfu=0.271, parameters=8_030_000_000)
    text = "\n".join(r.lines())
    assert "8,331" in text and "26.63 GiB" in text and "+4.4%" in text and "27.1%" in text


def test_bench_trains_real_steps_and_keeps_nothing(tiny_run_file: Path, capsys, tmp_path: Path) -> None:
    code = main(["bench", "--config", str(tiny_run_file), "--steps", "2", "--warmup", "1", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    result = json.loads(out[-1])  # stdout is the one JSON object (events stay off stdout)
    assert len(out) == 1
    assert result["steps_timed"] == 2 and result["warmup_steps"] == 1
    assert result["tokens_per_second"] > 0 and result["tokens_per_step"] > 0
    assert len(result["losses"]) == 3  # every step logged: warm-up and timed
    assert any("attention" in line for line in result["auto_choices"])
    assert not (tmp_path / "run").exists()  # the run's own output folder is untouched: bench writes to a temporary one


def test_bench_bad_steps_is_a_clear_error(tiny_run_file: Path, capsys) -> None:
    assert main(["bench", "--config", str(tiny_run_file), "--steps", "0"]) != 0
    assert "--steps" in capsys.readouterr().err


def test_a_run_file_can_ask_for_the_studios_varlen_attention(tiny_run_file: Path, capsys) -> None:
    # the session registers "sdpa_varlen" with transformers before loading (off CUDA it runs the SDPA reference)
    code = main(["bench", "--config", str(tiny_run_file), "--steps", "1", "--warmup", "1", "--json",
                 "--set", "model.attn_implementation=sdpa_varlen"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(v == v and v > 0 for _, v in result["losses"])  # finite, positive losses
    assert not any(line.startswith("attention") for line in result["auto_choices"])  # the run file's choice stands

"""Several training processes through accelerate's launcher, on the CPU (gloo): the same `sft-studio train` the app
starts, with `distributed.num_processes: 2`. One stream of events from rank 0, a falling loss, an adapter like a
single-process run's, a STOP file that stops every rank, a crashing rank reported by number; and the cluster export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import load_run_config
from core.training.events import MARKER, read_events

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself.", "Who made you?",
             "Tell me about yourself.", "What are you?", "Are you a bot?", "Your name, please?"]


def _config(tmp_path, model, data, name="run", distributed=None, **training):
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "max_length": 128},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 4, "seed": 0, "device": "cpu", **training},
        "distributed": {"num_processes": 2, **(distributed or {})},
        "output_dir": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-data")
    data = tmp / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper, the assistant of SFT Studio."},
    ]}) + "\n" for i in range(4) for q in QUESTIONS))
    return data


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def _train(config_path, *extra, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "core.cli", "train", "--config", str(config_path), *extra],
                          capture_output=True, text=True, env=env or _env(), timeout=timeout, stdin=subprocess.DEVNULL)


def _stream(stdout):
    return [json.loads(line[len(MARKER):]) for line in stdout.splitlines() if line.startswith(MARKER)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_factory, identity):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = _config(tmp, tiny_model_factory("qwen2_5"), identity, distributed={"main_process_port": 29561})
    proc = _train(cfg)
    return load_run_config(cfg), proc


def test_two_processes_train_on_one_stream(two_process_run):
    config, proc = two_process_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(config.output_dir)
    stream = _stream(proc.stdout)
    started = [e for e in stream if e["type"] == "started"]
    assert len(started) == 1 and started[0]["distributed"]["world_size"] == 2
    assert started[0]["distributed"]["backend"] == "gloo"
    steps = [e["step"] for e in stream if e["type"] == "metrics" and "loss" in e]
    assert steps == list(range(1, 9)), steps  # once per step, from rank 0 only
    assert [e["type"] for e in stream].count("finished") == 1
    assert stream == [e for e in read_events(out / "events.jsonl")]  # the file mirrors the one stream
    losses = [e["loss"] for e in stream if e["type"] == "metrics" and "loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.8, losses
    cfg = yaml.safe_load((out / "accelerate_config.yaml").read_text())
    assert cfg["num_processes"] == 2
    assert (out / "train.rank1.log").is_file() and (out / "run.yaml").is_file()
    assert (out / "checkpoints" / "checkpoint-8").is_dir()
    assert not list(out.glob("adapter.tmp*"))


def test_adapter_matches_a_single_process_run(two_process_run, tmp_path, tiny_model_factory, identity):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config, proc = two_process_run
    assert proc.returncode == 0
    single_cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), identity, name="single", max_steps=2,
                         distributed={"num_processes": 1})
    single = _train(single_cfg)
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_file(Path(config.output_dir) / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("qwen2_5"))
    model = PeftModel.from_pretrained(base, Path(config.output_dir) / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert (Path(config.output_dir) / "adapter" / "tokenizer_config.json").is_file()


def test_fsdp_on_cpu_falls_back_to_ddp_with_a_warning(two_process_run, tmp_path, tiny_model_factory, identity):
    """accelerate enables FSDP only on GPUs: on the CPU the run still trains (as DDP) and says so."""
    from safetensors.torch import load_file

    config, _ = two_process_run
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), identity, max_steps=3,
                  distributed={"strategy": "fsdp", "main_process_port": 29569})
    proc = _train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stream = _stream(proc.stdout)
    assert any(e["type"] == "warning" and "needs GPUs" in e["message"] for e in stream)
    assert [e for e in stream if e["type"] == "started"][0]["distributed"]["fsdp"] is False
    assert yaml.safe_load((tmp_path / "run" / "accelerate_config.yaml").read_text())["distributed_type"] == "FSDP"
    a = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(Path(config.output_dir) / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_stop_file_stops_every_rank(tmp_path, tiny_model_factory, identity):
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), identity, max_steps=400, save_steps=1000,
                  distributed={"main_process_port": 29563})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "train", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            steps = [e for e in read_events(out / "events.jsonl") if e["type"] == "metrics" and "loss" in e]
            if len(steps) >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        (out / "STOP").write_text("")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    finished = [e for e in _stream(stdout) if e["type"] == "finished"]
    assert len(finished) == 1 and finished[0]["stopped_early"] and finished[0]["steps"] < 400
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_a_crashing_rank_is_reported_by_number(mode, tmp_path, tiny_model_factory, identity):
    """A Python error on rank 1, and a death without one (os._exit, like a segfault): rank 0 then fails on the broken
    connection, but the report names rank 1."""
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), identity,
                  distributed={"main_process_port": 29565 if mode == "raise" else 29567})
    hooks = ROOT / "tests" / "core" / "crash_hook"
    env = _env(SFT_TEST_CRASH_RANK="1", SFT_TEST_CRASH_STEP="3", SFT_TEST_CRASH_MODE=mode)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    proc = _train(cfg, env=env)
    assert proc.returncode != 0
    failed = [e for e in _stream(proc.stdout) if e["type"] == "failed"]
    assert len(failed) == 1, proc.stdout[-3000:]
    assert failed[0]["rank"] == 1 and "rank 1" in failed[0]["message"]
    if mode == "raise":
        assert "simulated crash" in failed[0]["message"]
        assert any("simulated crash" in line for line in failed[0]["log_tail"])
    else:
        assert "died (exit code 139)" in failed[0]["message"]
        assert failed[0]["log_tail"]  # rank 1's own log


def test_deepspeed_strategy_without_deepspeed_is_a_config_error(tmp_path, tiny_model_factory, identity):
    from core.training.distributed import deepspeed_available

    if deepspeed_available():
        pytest.skip("DeepSpeed is installed here")
    cfg = _config(tmp_path, "x", identity, distributed={"strategy": "deepspeed_zero3"})
    proc = _train(cfg, timeout=60)
    assert proc.returncode == 2
    assert "distributed.strategy" in proc.stderr and "DeepSpeed" in proc.stderr


def test_cluster_export(tmp_path, identity):
    from core.cli import main

    cfg = _config(tmp_path, "Qwen/Qwen2.5-0.5B", identity, distributed={"num_processes": 4, "strategy": "fsdp",
                                                                          "main_process_port": 29777})
    out = tmp_path / "cluster"
    assert main(["cluster-export", "--config", str(cfg), str(out)]) == 0
    assert load_run_config(out / "run.yaml").distributed.num_processes == 4
    acc = yaml.safe_load((out / "accelerate_config.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 4
    assert acc["fsdp_config"]["fsdp_version"] == 2 and acc["main_process_port"] == 29777
    launch = (out / "launch.sh").read_text()
    assert "accelerate launch --config_file accelerate_config.yaml" in launch
    assert "-m core.cli train --config run.yaml" in launch and "--main_process_port 29777" in launch
    assert os.access(out / "launch.sh", os.X_OK)
    slurm = (out / "train.slurm").read_text()
    for needed in ("#SBATCH --gpus-per-node=4", "--num_machines $SLURM_NNODES", "--machine_rank $SLURM_NODEID",
                   "--main_process_ip $MAIN_PROCESS_IP", "scontrol show hostnames", "srun"):
        assert needed in slurm, needed
    subprocess.run(["bash", "-n", str(out / "launch.sh")], check=True)
    subprocess.run(["bash", "-n", str(out / "train.slurm")], check=True)

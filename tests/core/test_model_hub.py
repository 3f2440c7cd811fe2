"""Hub search and download against a local stand-in of the Hub (tests/hub_server.py, loopback only): progress,
cancel and resume (HTTP Range), gated models, offline mode, the cache scan, and a downloaded model that trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core import model_library as lib
from core.training.events import MARKER

ROOT = Path(__file__).resolve().parents[2]
BIG = os.urandom(8_000_000)


@pytest.fixture(scope="module")
def hub(tiny_model_factory):
    from hub_server import HubServer, Repo, model_repo_from_folder

    repos = [
        model_repo_from_folder("tiny-org/tiny-chat", tiny_model_factory("qwen2_5"), downloads=500, params=53_024),
        Repo("tiny-org/big-weights", {"config.json": b'{"model_type": "llama"}', "weights.bin": BIG},
             slow={"weights.bin": (64 * 1024, 0.03)}, downloads=20),
        Repo("gated-org/locked", {"config.json": b"{}", "model.safetensors": b"x" * 100}, gated=True),
        Repo("data-org/rows", {"train.jsonl": b'{"text": "hello"}\n', "README.md": b"# rows\n"}, repo_type="dataset"),
    ]
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """This process and its children talk to the local Hub and write a fresh cache (offline mode off)."""
    hub.use(monkeypatch, tmp_path)
    return {**os.environ}


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_search_and_details(hub_env):
    from core.model_hub import model_details, search_models

    found = search_models("tiny")
    assert [m.repo_id for m in found] == ["tiny-org/tiny-chat", "tiny-org/big-weights"]  # most downloaded first
    assert found[0].params == 53_024
    details = model_details("tiny-org/tiny-chat")
    names = {f.path: f.size for f in details.files}
    assert "model.safetensors" in names and names["model.safetensors"] > 100_000
    assert details.license == "apache-2.0" and details.architecture == "LlamaForCausalLM"
    assert details.card.startswith("# tiny-org/tiny-chat") and "---" not in details.card
    assert details.cached_path is None


def test_download_progress_cache_scan_and_training(hub_env, tmp_path):
    proc = cli("download", "tiny-org/tiny-chat", env=hub_env)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "of" in proc.stderr and "100%" in proc.stderr and "/s" in proc.stderr  # bytes, percent, speed
    assert path.parent.parent.name == "models--tiny-org--tiny-chat" and (path.parent.parent / "refs" / "main").is_file()

    # the cache scan (huggingface_hub's own) lists it with its facts; the downloaded model is a recent one
    entry = next(e for e in lib.list_models(["hf-cache", "recent"]) if e.name == "tiny-org/tiny-chat")
    assert (entry.source, entry.spec, entry.path) == ("hf-cache", "tiny-org/tiny-chat", str(path))
    assert entry.chat_template and entry.assistant_tokens == "trl-patch" and entry.license == "apache-2.0"
    assert entry.last_used is not None

    # a second download is instant and moves no bytes
    again = cli("download", "tiny-org/tiny-chat", env=hub_env)
    assert again.returncode == 0 and Path(again.stdout.strip()) == path

    # the downloaded model trains, offline, by its Hub id
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "hello"}]}) + "\n"
                            for i in range(4)))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-org/tiny-chat"}, "data": {"path": str(data), "max_length": 64},
        "lora": {"r": 4, "lora_alpha": 8}, "output_dir": str(tmp_path / "out"),
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 1}}))
    trained = cli("train", "--config", str(run), env={**hub_env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_cancel_then_resume_continues_from_the_saved_bytes(hub, hub_env):
    cache = Path(hub_env["HF_HUB_CACHE"])
    child = subprocess.Popen([sys.executable, "-m", "core.cli", "download", "tiny-org/big-weights"], cwd=ROOT,
                             env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline:  # wait until some bytes are on disk
        partial = list(cache.rglob("*.part"))
        if partial and partial[0].stat().st_size >= 1 << 20:
            break
        time.sleep(0.05)
    assert partial, "no partial file appeared"
    child.send_signal(signal.SIGINT)  # Ctrl+C
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "cancelled" in err and "resume" in err and not out.strip()
    kept = partial[0].stat().st_size
    assert 0 < kept < len(BIG)
    # the library shows the interrupted download, to be resumed
    waiting = next(e for e in lib.list_models(["hf-cache"]) if e.name == "tiny-org/big-weights")
    assert waiting.extra["partial"] and "incomplete" in waiting.note and waiting.extra["partial_bytes"] == kept

    done = cli("download", "tiny-org/big-weights", env=hub_env)
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / "weights.bin").read_bytes() == BIG
    assert f"bytes={kept}-" in hub.ranges("weights.bin")  # continued, not restarted
    assert "resumed from" in done.stderr
    assert not list(cache.rglob("*.part"))


def test_progress_events_for_the_app(hub_env):
    proc = cli("download", "tiny-org/tiny-chat", "--progress-json", env=hub_env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line[len(MARKER):]) for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
    assert {"speed", "eta", "files_done", "files_total"} <= set(progress[-1])
    assert events[-1]["type"] == "done" and Path(events[-1]["path"]).is_dir()


def test_gated_model_explains_login(hub_env):
    proc = cli("download", "gated-org/locked", env=hub_env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gated-org/locked is gated")
    assert "hf auth login" in lines[0] and "Traceback" not in proc.stderr


def test_unknown_model_and_offline_are_one_line(hub_env):
    missing = cli("download", "nobody/nothing", env=hub_env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: nobody/nothing: no such model")
    offline = cli("download", "tiny-org/tiny-chat", env={**hub_env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "offline" in offline.stderr and "not in the Hugging Face cache" in offline.stderr
    unreachable = cli("download", "tiny-org/tiny-chat", env={**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1 and "cannot reach the Hugging Face Hub" in unreachable.stderr
    assert "Traceback" not in missing.stderr + offline.stderr + unreachable.stderr


def test_dataset_download(hub_env):
    proc = cli("download", "data-org/rows", "--repo-type", "dataset", env=hub_env)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert (path / "train.jsonl").read_text() == '{"text": "hello"}\n'
    assert path.parent.parent.name == "datasets--data-org--rows"

"""Run control (DESIGN.md §3.4): the event stream of a tiny CPU run, stop / pause / resume on stdin, EOF semantics
with and without ``--from-app``, the watchdog, and resuming after ``kill -9`` past a half-written checkpoint."""

from __future__ import annotations

import io
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from core.training.control import TrainingControl
from core.training.events import parse_event_line, read_events
from core.training.watchdog import Watchdog

QUESTIONS = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself.", "Who made you?"]


@pytest.fixture(scope="module")
def identity_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "identity.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"},
        {"role": "assistant", "content": "I am Studio Helper."},
    ]}) + "\n" for i in range(3) for q in QUESTIONS))
    return path


def _write_config(tmp_path: Path, model: Path, data: Path, **training) -> Path:
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "max_length": 128},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {"max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 0.01, "logging_steps": 1,
                     "save_steps": 2, "seed": 0, **training},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Child:
    """``sft-studio train`` in a child process, its events collected from stdout as they come."""

    def __init__(self, *args: str, stdin: int = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "core.cli", "train", *args], stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            event = parse_event_line(line)
            if event is not None:
                self._queue.put(event)
        self._queue.put(None)

    def wait_for(self, type: str, timeout: float = 120, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is None:
                raise AssertionError(f"child exited before a {type!r} event; stderr:\n{''.join(self.stderr)[-3000:]}")
            self.events.append(event)
            if event["type"] == type and all(event.get(k) == v for k, v in match.items()):
                return event
        self.proc.kill()
        raise AssertionError(f"no {type!r} event within {timeout} s; got {[e['type'] for e in self.events]}")

    def drain(self, seconds: float) -> list[dict]:
        """Events arriving within ``seconds``."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if event is None:
                break
            got.append(event)
        self.events.extend(got)
        return got

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        while (event := self._queue.get(timeout=10)) is not None:
            self.events.append(event)
        return rc


# --- Qt-free units: control, watchdog, checkpoints ---------------------------------------------------------------

def test_commands_and_eof_semantics(tmp_path):
    app = TrainingControl(tmp_path, eof_means_stop=True)
    app.start_stdin_reader(io.StringIO("pause\nbogus\nresume\n")).join(5)
    assert not app.pause_requested and app.stop_reason == "stdin closed (the app went away)"

    terminal = TrainingControl(tmp_path, eof_means_stop=False)
    terminal.start_stdin_reader(io.StringIO("pause\n")).join(5)
    assert terminal.pause_requested and not terminal.stop_requested  # EOF ignored: nohup / cron / CI


def test_pause_blocks_until_resume_or_stop_file(tmp_path):
    control = TrainingControl(tmp_path)
    control.handle_command("pause")
    released = threading.Event()
    waiter = threading.Thread(target=lambda: (control.wait_while_paused(poll_s=0.05), released.set()))
    waiter.start()
    assert not released.wait(0.3)
    control.handle_command("resume")
    assert released.wait(2)

    control.handle_command("pause")
    released.clear()
    waiter = threading.Thread(target=lambda: (control.wait_while_paused(poll_s=0.05), released.set()))
    waiter.start()
    (tmp_path / "STOP").touch()  # a CLI user can stop a paused run too
    assert released.wait(2) and control.stop_reason == "STOP file" and not control.pause_requested


def test_watchdog_reports_in_plain_words():
    dog = Watchdog()
    assert dog.check(1, {"loss": float("nan")})[0][0] == "nan_loss"
    assert dog.check(2, {"loss": "inf"}) == []  # the same kind is not repeated at once
    assert dog.check(3, {"loss": 0.0})[0][0] == "zero_loss"
    calm = Watchdog()
    for step in range(1, 6):
        assert calm.check(step, {"loss": 2.0, "grad_norm": 1.0 + 0.1 * step}) == []
    (kind, message), = calm.check(6, {"loss": 2.0, "grad_norm": 40.0})
    assert kind == "exploding_grad_norm" and "learning rate" in message
    assert calm.check(7, {"loss": 2.0, "grad_norm": 45.0}) == []  # not again at once


def test_newest_checkpoint_skips_half_written(tmp_path):
    from core.training.session import newest_checkpoint, set_aside_incomplete_checkpoints

    ckpts = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpts / "checkpoint-6" / "trainer_state.json").unlink()  # killed while saving
    (ckpts / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # torn write
    assert newest_checkpoint(ckpts).name == "checkpoint-2"
    moved = set_aside_incomplete_checkpoints(ckpts)
    assert sorted(p.name for p in moved) == ["incomplete-checkpoint-4", "incomplete-checkpoint-6"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "incomplete-checkpoint-4", "incomplete-checkpoint-6"]


# --- a real tiny run in-process: what the events carry -----------------------------------------------------------

def test_events_of_a_tiny_cpu_run(tmp_path, tiny_model_factory, identity_data):
    from core.config import load_run_config
    from core.training.session import run_training

    path = _write_config(tmp_path, tiny_model_factory("qwen2_5"), identity_data, max_steps=4, save_steps=2,
                         probe_prompts=["Who are you?", "hi"])
    config = load_run_config(path)
    result = run_training(config)
    assert result.steps == 4 and not result.stopped_early
    events = read_events(Path(config.output_dir) / "events.jsonl")
    by_type: dict[str, list[dict]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)

    started = by_type["started"][0]
    assert started["device"]["kind"] == "cpu" and 0 < started["trainable_params"] < started["total_params"]
    assert started["resumed_from"] is None and started["config"]["training"]["max_steps"] == 4

    progress = by_type["progress"]
    assert [p["step"] for p in progress] == [0, 1, 2, 3, 4] and all(p["total"] == 4 for p in progress)
    assert progress[0]["eta_s"] is None and progress[-1]["eta_s"] == 0 and progress[-1]["epoch"] > 0
    assert all(p["eta_s"] >= 0 for p in progress[1:])  # (a tiny step can round to 0.0 s)

    train_metrics = [m for m in by_type["metrics"] if "loss" in m]
    assert [m["step"] for m in train_metrics] == [1, 2, 3, 4]
    for m in train_metrics:
        assert {"learning_rate", "grad_norm"} <= m.keys()
        assert m["supervised_tokens"] > 0 and m["tokens_in_step"] >= m["supervised_tokens"]
        assert 0 <= m["padding_share"] < 1 and m["tokens_per_second"] > 0
    assert "gpu_allocated_gib" not in train_metrics[0]  # CPU run: no GPU numbers invented

    assert [c["step"] for c in by_type["checkpoint"]] == [2, 4]
    samples = by_type["sample"]
    assert [s["step"] for s in samples] == [0, 2, 4]  # the base model first, then at each save
    assert all([x["prompt"] for x in s["samples"]] == ["Who are you?", "hi"] for s in samples)
    assert all(isinstance(x["completion"], str) for s in samples for x in s["samples"])

    finished = by_type["finished"][0]
    assert finished["adapter"] == str(result.adapter_dir) and finished["steps"] == 4
    assert events[-1]["type"] == "finished" and "failed" not in by_type


# --- the child process: stdin control ---------------------------------------------------------------------------

def test_stop_on_stdin_saves_and_exits_0(tmp_path, tiny_model_factory, identity_data):
    cfg = _write_config(tmp_path, tiny_model_factory("qwen2_5"), identity_data, max_steps=50, save_steps=20)
    child = Child("--config", str(cfg), "--from-app")
    child.send("stop")  # read as soon as the child starts: it stops at the end of step 1
    finished = child.wait_for("finished")
    assert child.finish() == 0
    assert finished["steps"] == 1 and finished["stopped_early"] and finished["stop_reason"] == "stop command"
    run = tmp_path / "run"
    assert (run / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    types = [e["type"] for e in child.events]
    assert types.index("stopping") < types.index("checkpoint") < types.index("finished")


def test_pause_then_resume_on_stdin(tmp_path, tiny_model_factory, identity_data):
    cfg = _write_config(tmp_path, tiny_model_factory("qwen2_5"), identity_data, max_steps=3, save_steps=3)
    child = Child("--config", str(cfg), "--from-app")
    child.send("pause")
    paused = child.wait_for("paused")
    assert paused["step"] == 1
    held = child.drain(1.0)
    assert child.proc.poll() is None and not [e for e in held if e["type"] == "progress"]  # it really holds
    child.send("resume")
    resumed = child.wait_for("resumed")
    assert resumed["step"] == 1 and resumed["paused_s"] >= 1.0
    finished = child.wait_for("finished")
    assert child.finish() == 0
    assert finished["steps"] == 3 and not finished["stopped_early"]
    steps = [e["step"] for e in child.events if e["type"] == "metrics" and "loss" in e]
    assert steps == [1, 2, 3]


def test_a_vanished_app_stops_and_saves(tmp_path, tiny_model_factory, identity_data):
    """The GUI died: stdin hits EOF and stdout is a broken pipe. The run stops at the step boundary, saves a
    checkpoint and the adapter, and exits 0 — no orphan, no crash from writing to the dead pipe."""
    cfg = _write_config(tmp_path, tiny_model_factory("qwen2_5"), identity_data, max_steps=50, save_steps=50)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", "train", "--config", str(cfg), "--from-app"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if (parse_event_line(line) or {}).get("type") == "progress":
                break
        proc.stdin.close()
        proc.stdout.close()  # nobody reads the events any more
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    events = read_events(tmp_path / "run" / "events.jsonl")
    finished = events[-1]
    assert finished["type"] == "finished" and finished["stopped_early"] and "stdin closed" in finished["stop_reason"]
    assert finished["steps"] < 50
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{finished['steps']}" / "trainer_state.json").is_file()
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    # (EOF without --from-app is ignored: the resumed run in the kill -9 test below has an empty stdin and
    # trains to the end.)


# --- crash recovery --------------------------------------------------------------------------------------------

def test_resume_after_kill_9_skips_a_half_written_checkpoint(tmp_path, tiny_model_factory, identity_data):
    cfg = _write_config(tmp_path, tiny_model_factory("qwen2_5"), identity_data, max_steps=6, save_steps=2)
    run = tmp_path / "run"
    child = Child("--config", str(cfg), "--from-app")
    child.wait_for("checkpoint", step=2)
    child.send("pause")  # hold it mid-run (deterministic), then kill -9: no chance to save anything
    paused = child.wait_for("paused")
    child.proc.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    killed_at = paused["step"]
    last_save = max(e["step"] for e in child.events if e["type"] == "checkpoint")
    assert 2 <= last_save < killed_at < 6
    # as if the kill had landed while the next checkpoint was being written: weights there, no trainer state
    half = run / "checkpoints" / f"checkpoint-{last_save + 2}"
    half.mkdir()
    shutil.copy(run / "checkpoints" / f"checkpoint-{last_save}" / "adapter_model.safetensors", half)

    # stdin at EOF from the start and no --from-app (a nohup/cron run): EOF must not stop it
    resumed = Child("--resume", str(run), stdin=subprocess.DEVNULL)
    finished = resumed.wait_for("finished")
    assert resumed.finish() == 0, "".join(resumed.stderr)[-3000:]
    assert finished["steps"] == 6 and not finished["stopped_early"]

    events = read_events(run / "events.jsonl")  # one file for both runs: the curves continue
    starts = [e for e in events if e["type"] == "started"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith(f"checkpoint-{last_save}")
    assert starts[1]["resumed_from_step"] == last_save
    assert (run / "checkpoints" / f"incomplete-checkpoint-{last_save + 2}").is_dir()
    logged = [e["step"] for e in events if e["type"] == "metrics" and "loss" in e]
    assert sorted(set(logged)) == list(range(1, 7))  # no step lost
    duplicated = {s for s in logged if logged.count(s) > 1}
    assert all(last_save < s <= killed_at for s in duplicated)  # only the unsaved work was redone
    state = json.loads((run / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    history = [h["step"] for h in state["log_history"] if "loss" in h]
    assert history == list(range(1, 7)) and state["global_step"] == 6

"""The training supervisor against fake children (canned events, garbage, non-zero exit, ``os.abort()``, a hang)
and one real tiny run: every ending is reported as the right kind, and the GUI process stays alive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from PySide6.QtCore import QObject, Signal

from app.workers.training_supervisor import TrainingSupervisor, emit_signal, find_interrupted_runs

FAKE = Path(__file__).parent / "fake_children" / "fake_trainer.py"
ROOT = Path(__file__).resolve().parents[2]
SIGNALS = ("eventReceived", "started", "progressed", "metricsLogged", "sampleGenerated", "checkpointSaved", "paused",
           "resumed", "stopping", "warned", "completed", "logLineReceived", "failed", "finished")


class _Tap(QObject):
    """A GUI-thread receiver for one supervisor signal: being a QObject method, the connection is queued into the
    GUI thread, exactly as the app's views receive the signals."""

    fired = Signal()

    def __init__(self, name: str, calls: list) -> None:
        super().__init__()
        self.name, self.calls = name, calls

    def record(self, *args) -> None:
        self.calls.append((self.name, args, threading.current_thread() is threading.main_thread()))
        emit_signal(self.fired)


class Recorder:
    def __init__(self, supervisor: TrainingSupervisor) -> None:
        self.calls: list[tuple[str, tuple, bool]] = []
        self.taps = {name: _Tap(name, self.calls) for name in SIGNALS}
        for name, tap in self.taps.items():
            getattr(supervisor, name).connect(tap.record)

    def __getitem__(self, name: str):
        """The GUI-side signal that fires after ``name`` was delivered (for ``qtbot.waitSignal``)."""
        return self.taps[name].fired

    def args(self, name: str) -> list[tuple]:
        return [args for n, args, _ in self.calls if n == name]

    def names(self) -> list[str]:
        return [n for n, _, _ in self.calls if n not in ("eventReceived", "logLineReceived")]

    def all_in_gui_thread(self) -> bool:
        return all(in_gui for _, _, in_gui in self.calls)


@pytest.fixture
def supervise(qtbot):
    """``supervise(mode or command, **kwargs)`` -> (supervisor, recorder), started; torn down safely."""
    made: list[TrainingSupervisor] = []

    def make(mode: str | None = None, command: list[str] | None = None, **kwargs):
        sup = TrainingSupervisor(command=command or [sys.executable, str(FAKE), mode], **kwargs)
        recorder = Recorder(sup)
        made.append(sup)
        return sup, recorder

    yield make
    for sup in made:
        sup.kill()
        assert sup.wait(20_000)


def _run_to_end(qtbot, sup, rec, timeout=20_000) -> int:
    with qtbot.waitSignal(rec["finished"], timeout=timeout):
        sup.start()
    assert rec.all_in_gui_thread()
    (code,), = rec.args("finished")
    return code


def test_canned_events_become_signals_and_commands_reach_the_child(qtbot, supervise):
    sup, rec = supervise("canned")
    with qtbot.waitSignal(rec["started"], timeout=10_000):
        sup.start()
    qtbot.waitUntil(lambda: bool(rec.args("warned")), timeout=5_000)
    with qtbot.waitSignal(rec["paused"], timeout=5_000):
        sup.pause()
    with qtbot.waitSignal(rec["resumed"], timeout=5_000):
        sup.resume()
    with qtbot.waitSignal(rec["finished"], timeout=10_000):
        sup.stop()
    assert rec.args("finished") == [(0,)] and sup.exit_code == 0 and rec.all_in_gui_thread()
    assert rec.args("failed") == []
    assert rec.names()[:7] == ["started", "progressed", "metricsLogged", "checkpointSaved", "sampleGenerated", "warned",
                               "paused"]
    assert rec.names()[-4:] == ["resumed", "stopping", "completed", "finished"]
    assert rec.args("metricsLogged")[0][0]["loss"] == 2.3
    assert rec.args("completed")[0][0]["stop_reason"] == "stop command"
    lines = [a[0] for a in rec.args("logLineReceived")]
    assert "{'loss': '2.3', 'grad_norm': '1.0'}" in lines and "a warning on stderr" in lines
    assert len(rec.args("eventReceived")) == 10


def test_garbage_never_breaks_parsing(qtbot, supervise):
    sup, rec = supervise("garbage")
    assert _run_to_end(qtbot, sup, rec) == 0
    assert rec.args("failed") == [] and len(rec.args("progressed")) == 1 and len(rec.args("completed")) == 1
    lines = [a[0] for a in rec.args("logLineReceived")]
    assert any("\ufffd" in line for line in lines)  # undecodable bytes replaced, not fatal
    assert sum(line.startswith("(unreadable event)") for line in lines) == 3  # bad JSON, a list, no type
    assert any(len(line) == 200_000 for line in lines)
    assert lines[-1] == "trailing partial line without newline"


def test_a_data_error_is_reported_with_the_childs_words(qtbot, supervise):
    sup, rec = supervise("data_error")
    assert _run_to_end(qtbot, sup, rec) == 3
    (kind, message, hint, tail), = rec.args("failed")
    assert (kind, message, hint, tail) == ("data", "data.jsonl: no row can be trained", "run sft-studio audit",
                                           "line one\nline two")


def test_a_silent_nonzero_exit_is_a_crash_with_the_log_tail(qtbot, supervise, tmp_path):
    sup, rec = supervise("silent_crash", run_dir=tmp_path)
    assert _run_to_end(qtbot, sup, rec) == 1
    (kind, message, hint, tail), = rec.args("failed")
    assert kind == "crash" and "code 1" in message and "RuntimeError: boom" in tail and "--resume" in hint
    assert "code 1" in (tmp_path / "train.log").read_text()  # the reason is kept in the run directory


def test_a_native_abort_is_detected_from_the_exit_signal(qtbot, supervise):
    sup, rec = supervise("abort")
    assert _run_to_end(qtbot, sup, rec) == -6
    (kind, message, hint, tail), = rec.args("failed")
    assert kind == "crash" and "SIGABRT" in message and "about to abort" in tail
    qtbot.wait(10)  # the GUI process is alive and its event loop turns


def test_a_hung_child_is_killed_after_the_grace_period(qtbot, supervise):
    sup, rec = supervise("hang", stop_grace_s=0.5)
    with qtbot.waitSignal(rec["started"], timeout=10_000):
        sup.start()
    with qtbot.waitSignal(rec["finished"], timeout=10_000):
        sup.stop()
    assert rec.args("finished") == [(-9,)]
    (kind, message, _, _), = rec.args("failed")
    assert kind == "crash" and "did not stop within 0.5 s" in message


def test_kill_on_request(qtbot, supervise):
    sup, rec = supervise("hang")
    with qtbot.waitSignal(rec["started"], timeout=10_000):
        sup.start()
    with qtbot.waitSignal(rec["finished"], timeout=10_000):
        sup.kill()
    assert rec.args("failed")[0][0] == "killed" and not sup.is_running()


def test_a_child_that_cannot_start_is_an_internal_failure(qtbot, supervise):
    sup, rec = supervise(command=["/nonexistent/sft-studio-trainer"])
    assert _run_to_end(qtbot, sup, rec) == 127
    assert rec.args("failed")[0][0] == "internal"


def test_the_supervisor_never_imports_torch():
    code = ("import sys\nimport app.workers.training_supervisor\n"
            "assert not [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_find_interrupted_runs(tmp_path):
    def run(name: str, *events: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return folder

    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    started = {"type": "started", "pid": dead_pid, "host": "elsewhere"}
    progress = {"type": "progress", "step": 3}
    interrupted = run("interrupted", started, progress, {"type": "metrics", "step": 3, "loss": 1.0})
    run("done", started, progress, {"type": "finished", "adapter": "a"})
    run("failed", started, {"type": "failed", "kind": "oom"})
    resumed_then_killed = run("resumed", started, {"type": "failed", "kind": "crash"}, started, progress)
    torn = run("torn", started, progress)
    with open(torn / "events.jsonl", "a") as fh:
        fh.write('{"type": "fini')  # killed mid-write
    import socket

    run("still-running", {"type": "started", "pid": os.getpid(), "host": socket.gethostname()}, progress)
    (tmp_path / "not-a-run").mkdir()
    found = find_interrupted_runs(tmp_path)
    assert sorted(p.name for p in found) == sorted(p.name for p in (interrupted, resumed_then_killed, torn))
    assert find_interrupted_runs(tmp_path / "missing") == []


def test_a_real_tiny_run_under_the_supervisor(qtbot, supervise, tmp_path, tiny_model_factory):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": "hello"}]}) + "\n"
                            for i in range(8)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_factory("qwen2_5"))},
        "data": {"path": str(data), "max_length": 128},
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"max_steps": 3, "save_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1},
        "output_dir": str(tmp_path / "run"),
    }))
    sup = TrainingSupervisor(cfg)
    rec = Recorder(sup)
    assert sup.run_dir == tmp_path / "run"
    sup.pause()  # queued before the child exists, delivered as soon as it starts: holds at step 1
    with qtbot.waitSignal(rec["paused"], timeout=120_000):
        sup.start()
    assert sup.is_running()
    with qtbot.waitSignal(rec["finished"], timeout=120_000):
        sup.resume()
    assert rec.args("finished") == [(0,)], "\n".join(a[0] for a in rec.args("logLineReceived"))[-3000:]
    assert rec.args("failed") == []
    (completed,), = rec.args("completed")
    assert completed["steps"] == 3 and Path(completed["adapter"], "adapter_model.safetensors").is_file()
    assert [a[0]["step"] for a in rec.args("metricsLogged") if "loss" in a[0]] == [1, 2, 3]
    assert rec.args("started")[0][0]["device"]["kind"] == "cpu"
    assert sup.wait(10_000)


def test_thousands_of_events_do_not_take_the_gui_down(qtbot):
    """PySide6 6.12's emit() steals a reference to True on CPython 3.11 (see emit_signal): a long run's event stream
    used to abort the GUI process with "bool_dealloc" after a few hundred events."""
    class Ticker(QObject):
        ticked = Signal(dict)

    ticker = Ticker()
    before = sys.getrefcount(True)
    for step in range(5000):
        emit_signal(ticker.ticked, {"type": "progress", "step": step})
    assert sys.getrefcount(True) >= before - 50

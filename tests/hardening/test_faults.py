"""Faults (issue 8): what a user sees when the trainer is killed, the disk fills up, memory runs out or the app
dies. Each test runs the real ``sft-studio train`` child on a tiny CPU model; faults are injected by
``fault_injection/sitecustomize.py`` (test-only, see its docstring) through ``SFT_STUDIO_FAULT``.

Covered elsewhere, not repeated here:

* two runs pointed at one output directory: refused before anything is written —
  ``tests/core/test_rundir.py`` (lock vanishes with a killed holder; ``train`` into a busy dir exits 2);
* a trainer that hangs is killed by the supervisor after the grace period, a native abort is recognised —
  ``tests/app/test_training_supervisor.py``;
* the app's stdin pipe closing (EOF) stops and saves — ``tests/core/test_training_control.py``;
* disk full while exporting leaves no partial export — ``tests/core/test_export.py``.

``SFT_STUDIO_FAULT_SEED`` changes where the kill -9 test kills (default fixed, so CI is reproducible).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from core.training.events import parse_event_line, read_events
from core.training.rundir import RunDirLock
from core.training.session import EXIT_OOM, checkpoint_is_complete, newest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).parent / "fault_injection"
SEED = int(os.environ.get("SFT_STUDIO_FAULT_SEED", "8"))
SAVE_STEPS = 2
CHILD_TIMEOUT = 150


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults-data") / "identity.jsonl"
    questions = ["Who are you?", "What is your name?", "hi", "hello", "Introduce yourself.", "Who made you?"]
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": "I am Studio Helper."},
    ]}) + "\n" for i in range(3) for q in questions))
    return path


def _config(folder: Path, model: Path, data: Path, max_steps: int) -> Path:
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data), "max_length": 64},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "training": {"max_steps": max_steps, "per_device_train_batch_size": 2, "learning_rate": 0.01,
                     "logging_steps": 1, "save_steps": SAVE_STEPS, "seed": 0},
        "output_dir": str(folder / "run"),
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(fault: str | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("SFT_STUDIO_FAULT", None)
    if fault:
        env["SFT_STUDIO_FAULT"] = fault
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTS), env.get("PYTHONPATH")) if p)
    return env


class Outcome:
    def __init__(self, rc: int, events: list[dict], stderr: str) -> None:
        self.rc, self.events, self.stderr = rc, events, stderr

    def last(self, type: str) -> dict:
        found = [e for e in self.events if e["type"] == type]
        assert found, f"no {type!r} event (exit {self.rc}); stderr:\n{self.stderr[-3000:]}"
        return found[-1]


def train(*args: str, fault: str | None = None, kill_when=None, log: Path) -> Outcome:
    """``sft-studio train ARGS`` as a child; ``kill_when(event)`` returning True sends it SIGKILL at once."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", "train", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=_env(fault))
        timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
        timer.start()
        events = []
        try:
            for line in proc.stdout:
                event = parse_event_line(line)
                if event is None:
                    continue
                events.append(event)
                if kill_when is not None and kill_when(event):
                    proc.send_signal(signal.SIGKILL)
                    kill_when = None
            rc = proc.wait()
        finally:
            timer.cancel()
    stderr = log.read_text()
    assert "Traceback" not in stderr.split("@@fault@@ kill -9")[0] or rc == -signal.SIGKILL, stderr[-3000:]
    return Outcome(rc, events, stderr)


def assert_parseable(events_file: Path) -> None:
    """Every line of events.jsonl is JSON, except a line torn by a killed writer: the last one, or one followed
    by the first event of the process that took over (its first start-up ``stage``, ``data``, or a ``warning``)."""
    lines = events_file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines[:-1], 1):
        try:
            json.loads(line)
        except ValueError:
            following = json.loads(lines[number])  # a torn line never swallows the next process's first event
            assert following["type"] in ("stage", "data", "warning"), f"{events_file}:{number}: {line[:200]!r}"


def trained_steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e["type"] == "metrics" and "loss" in e]


def assert_loadable_checkpoint(path: Path, step: int) -> None:
    from safetensors import safe_open

    assert checkpoint_is_complete(path), sorted(p.name for p in path.iterdir())
    assert json.loads((path / "trainer_state.json").read_text())["global_step"] == step
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as weights:
        assert any("lora_A" in k for k in weights.keys())  # noqa: SIM118 - safe_open has no __iter__


# --- kill -9 at seeded random points, resumed each time ------------------------------------------------------------

KILL_MAX_STEPS = 8


@pytest.fixture(scope="module")
def killed_three_times(tmp_path_factory, tiny_model_factory, data):
    """One run killed with SIGKILL three times — in the middle of a step, around a checkpoint (just after its
    ``checkpoint`` event, or while it is half-written), and while the final adapter is written — each time resumed
    with ``--resume``; a torn line is left at the end of events.jsonl after the first kill."""
    rng = random.Random(SEED)
    tmp = tmp_path_factory.mktemp("kill9")
    cfg = _config(tmp, tiny_model_factory("qwen2_5"), data, KILL_MAX_STEPS)
    run = tmp / "run"
    plan = []

    step_kill = rng.randint(3, 5)
    first = train("--config", str(cfg), fault=f"kill@step:{step_kill}", log=tmp / "1.log")
    assert first.rc == -signal.SIGKILL and "@@fault@@ kill -9 in the middle of step" in first.stderr
    plan.append(("mid-step", step_kill))
    with open(run / "events.jsonl", "a", encoding="utf-8") as fh:  # killed half-way through writing an event
        fh.write(json.dumps({"type": "metrics", "step": step_kill, "loss": 1.0})[:30])
    assert_parseable(run / "events.jsonl")

    saved = step_kill - step_kill % SAVE_STEPS  # newest complete checkpoint
    around = rng.choice([s for s in range(saved + SAVE_STEPS, KILL_MAX_STEPS, SAVE_STEPS)])
    if rng.random() < 0.5:
        plan.append(("after checkpoint event", around))
        second = train("--resume", str(run), log=tmp / "2.log",
                       kill_when=lambda e: e["type"] == "checkpoint" and e["step"] == around)
    else:
        plan.append(("checkpoint half-written", around))
        second = train("--resume", str(run), fault=f"kill@checkpoint:{around}", log=tmp / "2.log")
    assert second.rc == -signal.SIGKILL, second.stderr[-3000:]
    assert_parseable(run / "events.jsonl")

    third = train("--resume", str(run), fault="kill@adapter", log=tmp / "3.log")
    assert third.rc == -signal.SIGKILL and "@@fault@@ kill -9 while writing" in third.stderr, third.stderr[-3000:]
    plan.append(("adapter save", KILL_MAX_STEPS))
    assert_parseable(run / "events.jsonl")

    last = train("--resume", str(run), log=tmp / "4.log")
    assert last.rc == 0, f"plan {plan}: {last.stderr[-3000:]}"
    return run, plan, last


def test_kill_9_anywhere_then_resume_finishes_the_run(killed_three_times):
    run, plan, last = killed_three_times
    finished = last.last("finished")
    assert finished["steps"] >= KILL_MAX_STEPS and not finished["stopped_early"], plan  # exactly KILL_MAX_STEPS: test_resume_after_the_last_checkpoint_trains_no_extra_step
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    assert_loadable_checkpoint(run / "checkpoints" / f"checkpoint-{KILL_MAX_STEPS}", KILL_MAX_STEPS)

    assert_parseable(run / "events.jsonl")
    events = read_events(run / "events.jsonl")
    assert events[-1]["type"] == "finished"
    segments: list[list[dict]] = []
    for event in events:
        if event["type"] == "data":  # the first event of each process
            segments.append([])
        if segments:
            segments[-1].append(event)
    assert len(segments) == 4 and all(any(e["type"] == "started" for e in s) for s in segments), plan

    done: list[int] = []
    for number, segment in enumerate(segments):
        started = next(e for e in segment if e["type"] == "started")
        steps = trained_steps(segment)
        if number:
            assert started["resumed"] and started["resumed_from_step"] is not None, plan
            repeated = [s for s in steps if s in done]
            assert all(s > started["resumed_from_step"] for s in steps), (plan, number, steps)
            assert len(repeated) <= SAVE_STEPS, f"{plan}: process {number + 1} redid steps {repeated}"
        done += steps
    assert set(range(1, KILL_MAX_STEPS + 1)) <= set(done), (plan, done)  # no step lost
    state = json.loads((run / "checkpoints" / f"checkpoint-{KILL_MAX_STEPS}" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, KILL_MAX_STEPS + 1))


def test_resume_after_the_last_checkpoint_trains_no_extra_step(killed_three_times):
    run, plan, last = killed_three_times
    assert last.last("finished")["steps"] == KILL_MAX_STEPS, plan  # the same count as an uninterrupted run
    assert trained_steps(last.events) == [], plan
    assert not (run / "checkpoints" / f"checkpoint-{KILL_MAX_STEPS + 1}").exists()
    from safetensors.torch import load_file

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    saved = load_file(run / "checkpoints" / f"checkpoint-{KILL_MAX_STEPS}" / "adapter_model.safetensors")
    assert adapter.keys() == saved.keys() and all(adapter[k].equal(saved[k]) for k in saved)


def test_kill_9_during_adapter_save_leaves_nothing_half_written(killed_three_times):
    run, plan, _ = killed_three_times
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("adapter")) == ["adapter"], plan


# --- disk full / permission denied while saving a checkpoint --------------------------------------------------------

@pytest.mark.parametrize("fault, words", [("enospc", "No space left on device"), ("eacces", "Permission denied")])
def test_a_checkpoint_that_cannot_be_written(tmp_path, tiny_model_factory, data, fault, words):
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), data, max_steps=6)
    run = tmp_path / "run"
    failed_run = train("--config", str(cfg), fault=f"{fault}@checkpoint:4", log=tmp_path / "1.log")

    assert failed_run.rc not in (0, -signal.SIGKILL), failed_run.stderr[-3000:]
    failed = failed_run.last("failed")
    assert read_events(run / "events.jsonl")[-1] == failed  # on stdout (the app) and in events.jsonl alike
    assert words in failed["message"] and str(run / "checkpoints" / "checkpoint-4") in failed["message"], failed
    assert failed["hint"] and "--resume" in failed["hint"]
    assert words in failed_run.stderr and "Traceback" not in failed_run.stderr
    assert "finished" not in [e["type"] for e in failed_run.events] and not (run / "adapter").exists()
    assert newest_checkpoint(run / "checkpoints") == run / "checkpoints" / "checkpoint-2"
    assert_loadable_checkpoint(run / "checkpoints" / "checkpoint-2", 2)  # the previous checkpoint is intact
    RunDirLock(run).acquire().release()  # and the run directory is free again

    if fault == "enospc":  # space freed: the run continues from checkpoint-2
        resumed = train("--resume", str(run), log=tmp_path / "2.log")
        assert resumed.rc == 0, resumed.stderr[-3000:]
        assert resumed.last("started")["resumed_from_step"] == 2
        assert resumed.last("finished")["steps"] == 6 and trained_steps(resumed.events) == [3, 4, 5, 6]
        assert (run / "checkpoints" / "incomplete-checkpoint-4").is_dir()
        assert_loadable_checkpoint(run / "checkpoints" / "checkpoint-4", 4)


# --- out of memory -------------------------------------------------------------------------------------------------

def test_out_of_memory_in_a_step_is_labelled_with_a_hint(tmp_path, tiny_model_factory, data):
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), data, max_steps=4)
    outcome = train("--config", str(cfg), fault="oom@step:2", log=tmp_path / "1.log")
    assert outcome.rc == EXIT_OOM, outcome.stderr[-3000:]
    failed = outcome.last("failed")
    assert failed["kind"] == "oom" and "out of memory at step 1" in failed["message"], failed
    assert "per_device_train_batch_size (now 2)" in failed["hint"] and "max_length (now 64)" in failed["hint"]
    assert "Traceback" not in outcome.stderr and "hint:" in outcome.stderr
    pid = outcome.last("started")["pid"]
    with pytest.raises(ProcessLookupError):  # the process that held the (GPU) memory is gone
        os.kill(pid, 0)
    RunDirLock(tmp_path / "run").acquire().release()


# --- the app dies --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs PR_SET_CHILD_SUBREAPER to reap the orphan")
def test_app_killed_with_sigkill_the_trainer_stops_and_saves(tmp_path, tiny_model_factory, data):
    """The app process is SIGKILLed (no chance to send ``stop``): its end of the trainer's stdin closes, the
    trainer stops at the next step boundary, saves a checkpoint and the adapter, and exits 0 — no orphan."""
    cfg = _config(tmp_path, tiny_model_factory("qwen2_5"), data, max_steps=200)
    env = {**_env(), "SFT_STUDIO_TRAINER_STDERR": str(tmp_path / "trainer.log")}
    watcher = subprocess.Popen([sys.executable, str(FAULTS / "app_stand_in.py"), "watch", "--", "--config", str(cfg)],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    timer = threading.Timer(CHILD_TIMEOUT, watcher.kill)
    timer.start()
    try:
        pids = json.loads(watcher.stdout.readline())
        assert "app" in pids, pids
        os.kill(pids["app"], signal.SIGKILL)
        ended = json.loads(watcher.stdout.readline() or "{}")
        watcher.wait()
    finally:
        timer.cancel()
    trainer_log = (tmp_path / "trainer.log").read_text()
    assert ended.get("trainer_exit") == 0, trainer_log[-3000:]
    events = read_events(tmp_path / "run" / "events.jsonl")
    finished = events[-1]
    assert finished["type"] == "finished" and finished["stopped_early"], finished
    assert "stdin closed" in finished["stop_reason"] and finished["steps"] < 200
    assert_loadable_checkpoint(tmp_path / "run" / "checkpoints" / f"checkpoint-{finished['steps']}", finished["steps"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_torn_last_line_does_not_swallow_the_next_event(tmp_path):
    from core.training.events import EventWriter

    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "progress", "step": 1}\n{"type": "metr')  # writer killed mid-line
    writer = EventWriter(path, stream=None)
    writer.emit("data", train_rows=1)
    writer.close()
    assert [e["type"] for e in read_events(path)] == ["progress", "data"]

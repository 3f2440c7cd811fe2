"""A stand-in for ``sft-studio train --from-app`` that behaves (or misbehaves) in one of a few ways, so the
supervisor can be tested in milliseconds: ``python fake_trainer.py MODE``."""

from __future__ import annotations

import json
import os
import sys
import time

MARKER = "@@sft-studio@@ "


def emit(type_: str, **fields) -> None:
    sys.stdout.write(MARKER + json.dumps({"type": type_, "time": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def canned() -> int:
    """Plausible events with library noise in between, then obeys pause/resume/stop on stdin (EOF = stop)."""
    emit("started", device={"kind": "cpu"}, trainable_params=10, total_params=100, pid=os.getpid())
    say("{'loss': '2.3', 'grad_norm': '1.0'}")  # what transformers' PrinterCallback prints
    emit("progress", step=1, total=10, epoch=0.1, eta_s=9.0)
    emit("metrics", step=1, loss=2.3, learning_rate=1e-4, grad_norm=1.0, tokens_per_second=1234.5)
    emit("checkpoint", step=1, path="checkpoints/checkpoint-1")
    emit("sample", step=1, samples=[{"prompt": "hi", "completion": "hello"}])
    emit("warning", step=1, kind="zero_loss", message="The loss is exactly 0")
    print("a warning on stderr", file=sys.stderr, flush=True)
    reason = "stdin closed (the app went away)"
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            emit("paused", step=1)
        elif command == "resume":
            emit("resumed", step=1, paused_s=0.1)
        elif command == "stop":
            reason = "stop command"
            break
    emit("stopping", step=1, reason=reason)
    emit("finished", adapter="run/adapter", steps=1, stopped_early=True, stop_reason=reason)
    return 0


def staged() -> int:
    """Start-up stages as the real trainer reports them (slowly), then waits for stop like ``canned``."""
    stages = ["reading the data and the chat template", "building input_ids and labels",
              "loading the base model (dequantising the GGUF file)"]
    for i, message in enumerate(stages, 1):
        emit("stage", stage=f"s{i}", message=message, index=i, total=5, elapsed_s=0.3 * i)
        time.sleep(0.3)
    reason = "stdin closed (the app went away)"
    for line in sys.stdin:
        if line.strip() == "stop":
            reason = "stop command"
            break
    emit("stopping", step=0, reason=reason)
    emit("finished", adapter="run/adapter", steps=0, total=10, stopped_early=True, stop_reason=reason)
    return 0


def garbage() -> int:
    """Everything a broken library might print, then a normal end."""
    sys.stdout.buffer.write(b"\xff\xfe not utf-8 \x00\x01\n")
    say(MARKER + "{not json")
    say(MARKER + "[1, 2, 3]")
    say(MARKER + '{"no_type": true}')
    say("@@sft-studio@@")
    say("x" * 200_000)
    sys.stdout.write("no newline at the very end, then an event\n")
    emit("progress", step=1, total=1, epoch=1.0, eta_s=0.0)
    emit("finished", adapter="run/adapter", steps=1, stopped_early=False, stop_reason=None)
    sys.stdout.write("trailing partial line without newline")
    sys.stdout.flush()
    return 0


def data_error() -> int:
    emit("failed", kind="data", message="data.jsonl: no row can be trained", hint="run sft-studio audit",
         log_tail=["line one", "line two"])
    print("error: data.jsonl: no row can be trained", file=sys.stderr, flush=True)
    return 3


def silent_crash() -> int:
    emit("started", pid=os.getpid())
    print("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: boom", file=sys.stderr, flush=True)
    return 1


def abort() -> int:
    emit("started", pid=os.getpid())
    print("Fatal Python error: about to abort", file=sys.stderr, flush=True)
    os.abort()
    return 0


def hang() -> int:
    """Ignores every command (a wedged CUDA kernel, a deadlock)."""
    emit("started", pid=os.getpid())
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit({"canned": canned, "garbage": garbage, "data_error": data_error, "silent_crash": silent_crash,
              "abort": abort, "hang": hang, "staged": staged}[sys.argv[1]]())

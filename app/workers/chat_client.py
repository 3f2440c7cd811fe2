"""Child processes of the Chat & Export page, driven through ``QProcess`` from the GUI thread.

:class:`StudioChild` runs one ``sft-studio ARGS...`` command (``export``, ``evaluate``): marked event lines on
stdout become :attr:`StudioChild.eventReceived`, every other line :attr:`StudioChild.lineReceived`, and
:attr:`StudioChild.finished` always ends it with the exit code. :class:`ChatWorkerClient` keeps one
``sft-studio chat-worker`` alive and speaks its JSON-lines protocol (``core/chat.py``).

Why ``QProcess`` here and not the training supervisor's Popen + QThread: these children are short or idle most
of the time, nothing needs the killing signal's number, and QProcess delivers output in the GUI thread through
the event loop, so there is no thread to own. The GUI process still never imports torch: only the child does.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

from app.workers.training_supervisor import emit_signal
from core.training.events import MARKER, parse_event_line

TAIL_LINES = 40


def studio_child_command(*args: str) -> list[str]:
    from core.launch import studio_command

    return studio_command(*args)


class StudioChild(QObject):
    """One child process with a marked event stream on stdout."""

    eventReceived = Signal(dict)
    lineReceived = Signal(str)  # unmarked stdout lines and stderr lines
    finished = Signal(int)  # exit code; -1 when it crashed or could not start

    def __init__(self, command: Sequence[str], parent: QObject | None = None, cwd: str | None = None) -> None:
        super().__init__(parent)
        self.command = list(command)
        self.stdout_lines: list[str] = []  # unmarked stdout (e.g. the --json result)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.events: list[dict] = []
        self.exit_code: int | None = None
        self._buffers = {"out": b"", "err": b""}
        self._ended = False
        self.proc = QProcess(self)
        if cwd:
            self.proc.setWorkingDirectory(cwd)
        from core.launch import child_environment

        env = QProcessEnvironment()
        values = child_environment()
        values.setdefault("TOKENIZERS_PARALLELISM", "false")
        values.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        for key, value in values.items():
            env.insert(key, value)
        self.proc.setProcessEnvironment(env)
        self.proc.readyReadStandardOutput.connect(lambda: self._read("out"))
        self.proc.readyReadStandardError.connect(lambda: self._read("err"))
        self.proc.finished.connect(self._on_finished)
        self.proc.errorOccurred.connect(self._on_error)

    def start(self) -> None:
        self.proc.start(self.command[0], self.command[1:])

    def is_running(self) -> bool:
        return self.proc.state() != QProcess.ProcessState.NotRunning

    def write_line(self, text: str) -> bool:
        if self.proc.state() != QProcess.ProcessState.Running:
            return False
        return self.proc.write((text + "\n").encode("utf-8")) >= 0

    def close_stdin(self) -> None:
        self.proc.closeWriteChannel()

    def kill(self) -> None:
        if self.is_running():
            self.proc.kill()

    def wait(self, timeout_ms: int = 30_000) -> bool:
        if not self.is_running():
            return True
        return self.proc.waitForFinished(timeout_ms)

    def tail(self, lines: int = 12) -> str:
        return "\n".join(list(self.stderr_tail)[-lines:])

    # -- output -----------------------------------------------------------------------------------------
    def _read(self, tag: str) -> None:
        data = bytes(self.proc.readAllStandardOutput() if tag == "out" else self.proc.readAllStandardError())
        buffer = self._buffers[tag] + data
        *lines, rest = buffer.split(b"\n")
        self._buffers[tag] = rest
        for raw in lines:
            self._handle(tag, raw.decode("utf-8", errors="replace").rstrip("\r"))

    def _handle(self, tag: str, line: str) -> None:
        if tag == "out":
            event = parse_event_line(line)
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                self.handle_event(event)
                return
            if line.startswith(MARKER):
                line = "(unreadable event) " + line[len(MARKER):]
            self.stdout_lines.append(line)
        else:
            self.stderr_tail.append(line)
        emit_signal(self.lineReceived, line)

    def handle_event(self, event: dict) -> None:
        self.events.append(event)
        emit_signal(self.eventReceived, event)

    def _flush(self) -> None:
        for tag in ("out", "err"):
            self._read(tag)
            if self._buffers[tag]:
                rest, self._buffers[tag] = self._buffers[tag], b""
                self._handle(tag, rest.decode("utf-8", errors="replace").rstrip("\r"))

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._ended:
            return
        self._flush()
        self._ended = True
        self.exit_code = code if status == QProcess.ExitStatus.NormalExit else -1
        emit_signal(self.finished, self.exit_code)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._ended:
            self._ended = True
            self.stderr_tail.append(f"could not start {' '.join(self.command)}: {self.proc.errorString()}")
            self.exit_code = -1
            emit_signal(self.finished, -1)


class ChatWorkerClient(StudioChild):
    """The chat worker child (``sft-studio chat-worker``) and its protocol, as Qt signals."""

    ready = Signal()
    loaded = Signal(dict)
    tokenReceived = Signal(dict)  # {"id", "which", "text" (a delta), "n_tokens"}
    answered = Signal(dict)  # "done": {"id", "which", "text", "n_tokens", "seconds", "finish_reason"}
    stopped = Signal(dict)  # {"id", "which", "text" (partial), ...}
    failed = Signal(dict)  # "error": {"id" or None, "message"}

    _TYPED = {"loaded": "loaded", "token": "tokenReceived", "done": "answered", "stopped": "stopped",
              "error": "failed"}

    def __init__(self, command: Sequence[str] | None = None, parent: QObject | None = None) -> None:
        super().__init__(command or studio_child_command("chat-worker"), parent)
        self.is_ready = False
        self._pending: list[str] = []  # commands sent before the child was running

    def start(self) -> None:
        self.proc.started.connect(self._send_pending)
        super().start()

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        for line in pending:
            self.write_line(line)

    def send(self, cmd: str, **fields: Any) -> None:
        line = json.dumps({"cmd": cmd, **fields})
        if self.proc.state() == QProcess.ProcessState.Running:
            self.write_line(line)
        else:
            self._pending.append(line)

    def load(self, run_dir: str, which: Sequence[str] = ("base", "tuned"), device: str = "auto") -> None:
        self.send("load", run_dir=str(run_dir), which=list(which), device=device)

    def generate(self, request_id: str, which: str, messages: list[dict], **options: Any) -> None:
        self.send("generate", id=request_id, which=which, messages=messages, **options)

    def stop(self, request_id: str | None = None) -> None:
        if request_id is None:
            self.send("stop")
        else:
            self.send("stop", id=request_id)

    def quit(self, timeout_ms: int = 5000) -> None:
        """Ask the worker to leave (end of input also means quit), and kill it if it does not."""
        if not self.is_running():
            return
        self.send("quit")
        self.close_stdin()
        if not self.proc.waitForFinished(timeout_ms):
            self.kill()
            self.proc.waitForFinished(2000)

    def handle_event(self, event: dict) -> None:
        super().handle_event(event)
        if event["type"] == "ready":
            self.is_ready = True
            emit_signal(self.ready)
            return
        name = self._TYPED.get(event["type"])
        if name is not None:
            emit_signal(getattr(self, name), event)


"""The training supervisor (DESIGN.md §2, §3.4): a QObject living on its own QThread that owns one training run.

It starts ``sft-studio train --config RUN.yaml --from-app`` as a child process, reads the child's stdout line by
line, turns marked event lines into Qt signals (other lines become :attr:`logLineReceived`), forwards
``stop`` / ``pause`` / ``resume`` to the child's stdin, kills the child if it ignores a stop for a grace period,
and reports how it ended: :attr:`failed` (kind, message, hint, log tail) and then always :attr:`finished` (the
exit status). The GUI process never imports torch, so it never initialises CUDA: only the child does.

Why ``subprocess.Popen`` and not ``QProcess``: Popen's return code carries the signal that killed the child
(``-6`` = SIGABRT, ``-11`` = SIGSEGV, ``-9`` = SIGKILL), which is exactly what tells a native crash from an OOM
kill from our own kill; QProcess reports only "CrashExit". Popen also lets the child run in its own session
(process group), so a Ctrl-C in the terminal that started the app does not hit the trainer mid-step and
:meth:`kill` takes down any helper processes it spawned. The cost — a blocking read loop — is what the QThread
is for; both pipes are drained continuously so neither can fill up and stall the child.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from core.training.events import MARKER, parse_event_line

log = logging.getLogger("sft_studio.app.supervisor")

# `sft-studio train` exit codes (core.training.session) -> failure kind
EXIT_KINDS = {1: "crash", 2: "config", 3: "data", 4: "oom"}
NATIVE_CRASH_SIGNALS = {"SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE"}
LOG_TAIL_LINES = 40
MAX_LINE_BYTES = 1 << 20


def _emit_leaks_true() -> bool:
    """PySide6 6.12 on CPython < 3.12: ``SignalInstance.emit()`` returns ``True`` without a new reference, so every
    emit whose result is dropped takes one reference from ``True``; after a few hundred emits (a few hundred training
    steps' events) CPython aborts with "bool_dealloc: deallocating True or False". Python 3.12 made ``True``
    immortal, which hides it. Measured here once, so a fixed PySide6 is not over-compensated."""
    if sys.version_info >= (3, 12):
        return False

    class _Probe(QObject):
        ping = Signal()

    probe, n = _Probe(), 16
    before = sys.getrefcount(True)
    for _ in range(n):
        probe.ping.emit()
    lost = before - sys.getrefcount(True)
    if lost >= n // 2:  # other threads may move the count a little either way
        _incref_true(lost)
        return True
    return False


def _incref_true(times: int = 1) -> None:
    import ctypes

    for _ in range(times):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))


_EMIT_LEAKS_TRUE = _emit_leaks_true()


def emit_signal(signal, *args) -> None:
    """``signal.emit(*args)`` that gives back the reference PySide6 6.12's emit steals from ``True`` (see
    :func:`_emit_leaks_true`); use it for every emit in a long-lived GUI process."""
    if signal.emit(*args) is True and _EMIT_LEAKS_TRUE:
        _incref_true()


class TrainingSupervisor(QObject):
    """One supervised training run. Use :meth:`start` (it moves the object to its own QThread), then the control
    methods from any thread. Signals carry the child's event dicts unchanged (DESIGN.md §3.4)."""

    eventReceived = Signal(dict)  # every event, in stream order (before its typed signal)
    started = Signal(dict)
    progressed = Signal(dict)
    metricsLogged = Signal(dict)
    sampleGenerated = Signal(dict)
    checkpointSaved = Signal(dict)
    paused = Signal(dict)
    resumed = Signal(dict)
    stopping = Signal(dict)
    warned = Signal(dict)
    completed = Signal(dict)  # the child's `finished` event: adapter path, steps, stopped_early
    logLineReceived = Signal(str)  # stdout lines that are not events, and stderr lines
    failed = Signal(str, str, str, str)  # kind (oom|data|config|crash|internal|killed), message, hint, log tail
    finished = Signal(int)  # exit status (negative: killed by that signal); always the last signal of a run

    _TYPED = {
        "started": "started", "progress": "progressed", "metrics": "metricsLogged", "sample": "sampleGenerated",
        "checkpoint": "checkpointSaved", "paused": "paused", "resumed": "resumed", "stopping": "stopping",
        "warning": "warned", "finished": "completed",
    }

    def __init__(self, config_path: str | Path | None = None, *, resume: bool = False, run_dir: str | Path | None = None,
                 overrides: Sequence[str] = (), command: Sequence[str] | None = None, stop_grace_s: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        """``config_path``: the run file. ``resume``: continue from the newest complete checkpoint (of ``run_dir``
        when given, else of the run file's output_dir). ``command`` replaces the whole child command line (tests,
        launchers such as ``accelerate launch``). ``stop_grace_s``: how long a stop may take (finish the step,
        save) before the child is killed."""
        super().__init__()
        self.command = list(command) if command is not None else _train_command(config_path, resume, run_dir, overrides)
        self.run_dir = Path(run_dir) if run_dir else _output_dir_of(config_path)
        self.stop_grace_s = stop_grace_s
        self.env = env
        self.exit_code: int | None = None
        self.last_events: dict[str, dict] = {}  # newest event of each type
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._pending: list[str] = []  # commands given before the child existed
        self._kill_reason: str | None = None
        self._kill_timer: threading.Timer | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._thread: QThread | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> QThread:
        """Run the supervisor on a new QThread (call from the GUI thread; the object must have no parent)."""
        thread = QThread()
        thread.setObjectName("training-supervisor")
        self.moveToThread(thread)
        thread.started.connect(self.run)
        # direct: QThread.quit is thread-safe, and a GUI thread blocked in wait() could not deliver a queued call
        self.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        self._thread = thread
        thread.start()
        return thread

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Block until the supervisor's thread has ended (after :attr:`finished`)."""
        return self._thread.wait(timeout_ms) if self._thread is not None else True

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @Slot()
    def run(self) -> None:
        """The supervisor loop (on its QThread): start the child, stream its output, report how it ended."""
        try:
            self._spawn()
        except OSError as exc:
            self.exit_code = 127
            emit_signal(self.failed, "internal", f"the trainer could not be started: {exc}",
                             f"command: {' '.join(self.command)}", "")
            emit_signal(self.finished, self.exit_code)
            return
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        # Two plain threads only move bytes into a queue; every signal is emitted from this QThread, so queued
        # delivery to the GUI keeps stream order (signals emitted from non-Qt threads can get lost).
        lines: queue.Queue = queue.Queue()
        for stream, tag in ((proc.stdout, "out"), (proc.stderr, "err")):
            threading.Thread(target=_pump, args=(stream, tag, lines), name=f"trainer-std{tag}", daemon=True).start()
        open_streams, exited_at = 2, None
        while open_streams:
            try:
                tag, raw = lines.get(timeout=0.5)
            except queue.Empty:
                # a grandchild that inherited the pipes could keep them open after the trainer died
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 5:
                        break
                continue
            if raw is None:
                open_streams -= 1
                continue
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if tag == "out":
                self._handle_line(line)
            else:
                self._stderr_tail.append(line)
                emit_signal(self.logLineReceived, line)
        code = proc.wait()
        with self._lock:
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        self.exit_code = code
        self._report_end(code)
        emit_signal(self.finished, code)

    def _spawn(self) -> None:
        from core.launch import child_environment

        env = child_environment(dict(os.environ if self.env is None else self.env))
        env.setdefault("PYTHONUNBUFFERED", "1")  # stray prints arrive in order with the events
        env.setdefault("PYTHONFAULTHANDLER", "1")  # a native crash leaves Python stacks on stderr
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        with self._lock:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=env, **kwargs)
            pending, self._pending = self._pending, []
        log.info("trainer started (pid %d): %s", self._proc.pid, " ".join(self.command))
        for command in pending:
            self._send(command)

    # --- control (any thread) ------------------------------------------------------------------------------
    def stop(self, grace_s: float | None = None) -> None:
        """Ask the child to finish its step, save a checkpoint and the adapter, and exit; kill it if it has not
        within ``grace_s`` (default :attr:`stop_grace_s`)."""
        self._send("stop")
        grace = self.stop_grace_s if grace_s is None else grace_s
        with self._lock:
            if self._kill_timer is None:
                self._kill_timer = threading.Timer(grace, self._kill_after_grace, args=(grace,))
                self._kill_timer.daemon = True
                self._kill_timer.start()

    def pause(self) -> None:
        """Hold at the next step boundary, keeping model and optimizer in memory."""
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def kill(self) -> None:
        """End the child now (SIGKILL to its process group). Work since the last checkpoint is lost."""
        self._kill("killed on request")

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """For the app closing: stop the run (it saves), wait up to ``timeout_s``, then kill; wait for the thread."""
        if self.is_running():
            self.stop(grace_s=timeout_s)
        self.wait(int((timeout_s + 10) * 1000))

    def _send(self, command: str) -> bool:
        with self._lock:
            proc = self._proc
            if proc is None:
                self._pending.append(command)
                return True
            if proc.poll() is not None or proc.stdin is None:
                return False
            try:
                proc.stdin.write((command + "\n").encode())
                proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def _kill_after_grace(self, grace: float) -> None:
        if self.is_running():
            self._kill(f"the trainer did not stop within {grace:g} s of the stop request and was killed")

    def _kill(self, reason: str) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            self._kill_reason = reason
            try:
                if os.name == "posix":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except (ProcessLookupError, PermissionError):
                proc.kill()
        log.warning("trainer pid %d: %s", proc.pid, reason)

    # --- the stream ------------------------------------------------------------------------------------------
    def _handle_line(self, line: str) -> None:
        event = parse_event_line(line)
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            if line.startswith(MARKER):
                line = "(unreadable event) " + line[len(MARKER):]
            emit_signal(self.logLineReceived, line)
            return
        self.last_events[event["type"]] = event
        emit_signal(self.eventReceived, event)
        name = self._TYPED.get(event["type"])
        if name is not None:
            emit_signal(getattr(self, name), event)

    def _report_end(self, code: int) -> None:
        stderr_tail = "\n".join(self._stderr_tail)
        failed_event = self.last_events.get("failed")
        if code == 0:
            if "finished" not in self.last_events:
                emit_signal(self.failed, "internal", "the trainer exited without reporting a result", "see the log", stderr_tail)
            return
        if failed_event is not None:  # the child said what went wrong
            tail = failed_event.get("log_tail")
            tail_text = "\n".join(tail) if isinstance(tail, list) else str(tail or stderr_tail)
            emit_signal(self.failed, str(failed_event.get("kind", "crash")), str(failed_event.get("message", "")),
                             str(failed_event.get("hint", "")), tail_text or stderr_tail)
            return
        resume_hint = "Resume from the last checkpoint (Runs page, or `sft-studio train --resume RUN_DIR`)."
        if code < 0:
            name = _signal_name(-code)
            if self._kill_reason is not None:
                kind = "killed" if self._kill_reason == "killed on request" else "crash"
                message, hint = f"{self._kill_reason} ({name})", resume_hint
            elif name in NATIVE_CRASH_SIGNALS:
                kind = "crash"
                message = f"the trainer crashed natively ({name}); the app is fine"
                hint = ("Native crashes come from the GPU driver, CUDA kernels, bitsandbytes or a broken install; the log "
                        "tail shows the last Python frames. " + resume_hint)
            elif name == "SIGKILL":
                kind = "crash"
                message = "the trainer was killed from outside (SIGKILL)"
                hint = ("Often the system's out-of-memory killer (host RAM, not GPU memory): lower the batch size or "
                        "data.max_length, or close other programs. " + resume_hint)
            else:
                kind, message, hint = "crash", f"the trainer was ended by {name}", resume_hint
        else:
            kind = EXIT_KINDS.get(code, "crash")
            message = f"the trainer exited with code {code} without reporting why"
            hint = "The log tail shows its last output. " + resume_hint
        self._note_in_train_log(f"{message}\n{stderr_tail}")
        self._record_end(kind, message, hint)
        emit_signal(self.failed, kind, message, hint, stderr_tail)

    def _record_end(self, kind: str, message: str, hint: str) -> None:
        """The child died without its own end event: append one to ``events.jsonl`` (after the child is gone, so
        nothing else writes it), so the Runs page, a reopened Train page and the CLI tell the same story as the
        live page ("killed", "crashed") instead of "interrupted"."""
        if self.run_dir is None:
            return
        events = self.run_dir / "events.jsonl"
        if not events.is_file():
            return
        record = {"type": "failed", "time": time.time(), "kind": kind, "message": message, "hint": hint,
                  "recorded_by": "app"}
        try:
            with open(events, "rb+") as fh:
                torn = False
                if fh.seek(0, 2) > 0:
                    fh.seek(-1, 2)
                    torn = fh.read(1) != b"\n"  # a line cut by the kill: end it before ours
                fh.seek(0, 2)
                fh.write((("\n" if torn else "") + json.dumps(record) + "\n").encode("utf-8"))
        except OSError:
            pass

    def _note_in_train_log(self, text: str) -> None:
        """The child is dead and could not write why; keep the reason in the run directory (the source of truth)."""
        if self.run_dir is None or not self.run_dir.is_dir():
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.run_dir / "train.log", "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} ERROR sft_studio.supervisor: {text}\n")
        except OSError:
            pass


def _pump(stream, tag: str, lines: queue.Queue) -> None:
    try:
        for raw in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
            lines.put((tag, raw))
    except (OSError, ValueError):
        pass
    lines.put((tag, None))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _train_command(config_path: str | Path | None, resume: bool, run_dir: str | Path | None,
                   overrides: Sequence[str]) -> list[str]:
    # The app's own interpreter (the venv that has torch/trl), or in a frozen bundle the studio executable
    # re-invoked as the child (core.launch).
    from core.launch import studio_command

    command = studio_command("train", "--from-app")
    if config_path is not None:
        command += ["--config", str(config_path)]
    if resume:
        command += ["--resume"] + ([str(run_dir)] if run_dir is not None else [])
    for item in overrides:
        command += ["--set", item]
    if config_path is None and not (resume and run_dir is not None):
        raise ValueError("TrainingSupervisor needs a config_path, or resume=True with a run_dir")
    return command


def _output_dir_of(config_path: str | Path | None) -> Path | None:
    if config_path is None:
        return None
    try:
        from core.config import load_run_config  # light: no torch

        return Path(load_run_config(config_path).output_dir)
    except Exception:
        return None


# --- runs left behind ---------------------------------------------------------------------------------------------

def find_interrupted_runs(runs_root: str | Path) -> list[Path]:
    """Run directories (``runs_root`` itself or its sub-folders) whose ``events.jsonl`` ends its latest ``started``
    with no ``finished``/``failed``: the app or the machine died while they trained, so the app can offer to resume
    them or show their curves. Runs whose trainer is still alive on this machine are left out. Newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    candidates = [root, *(p for p in root.iterdir() if p.is_dir())]
    found = []
    for run_dir in candidates:
        events = run_dir / "events.jsonl"
        if not events.is_file():
            continue
        last = _last_lifecycle_event(events)
        if last is None or last.get("type") != "started":
            continue
        if _trainer_alive(last):
            continue
        found.append((events.stat().st_mtime, run_dir))
    return [run_dir for _, run_dir in sorted(found, key=lambda item: item[0], reverse=True)]


_LIFECYCLE = ("started", "finished", "failed")


def _last_lifecycle_event(path: Path, block: int = 65536) -> dict | None:
    """The last started/finished/failed event, read backwards so a long run's file is not parsed whole."""
    import json

    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        carry = b""
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start) + carry
            lines = chunk.split(b"\n")
            carry = lines.pop(0) if start > 0 else b""  # possibly cut: completed by the next (earlier) block
            for raw in reversed(lines):
                if not any(f'"type": "{t}"'.encode() in raw for t in _LIFECYCLE):
                    continue
                try:
                    event = json.loads(raw.decode("utf-8", errors="replace"))
                except ValueError:
                    continue  # a torn last line
                if isinstance(event, dict) and event.get("type") in _LIFECYCLE:
                    return event
            end = start
    return None


def _trainer_alive(started: dict) -> bool:
    pid, host = started.get("pid"), started.get("host")
    if not isinstance(pid, int) or host != socket.gethostname() or os.name != "posix":
        return False  # (os.kill(pid, 0) would terminate the process on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

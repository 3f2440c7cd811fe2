"""Run control from outside the trainer (DESIGN.md §3.4): ``stop`` / ``pause`` / ``resume`` lines on stdin, a
``STOP`` file in the run directory, and SIGINT/SIGTERM. Qt-free and torch-free.

The Trainer only looks at :class:`TrainingControl` at step boundaries (``EventCallback.on_step_end``), so a
command never interrupts a forward/backward pass or an optimizer step:

* ``stop`` – finish the current step, save a checkpoint and the adapter, exit 0.
* ``pause`` – block at the next step boundary with model and optimizer kept in memory until ``resume`` or
  ``stop`` (TRL has no pause of its own; blocking in a callback is the documented way).
* EOF on stdin – a stop when the app started the child (``--from-app``): the GUI went away, so the trainer
  must not linger as an orphan holding the GPU. Otherwise EOF is ignored (nohup, cron and CI give an empty
  or closed stdin).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("sft_studio.control")

COMMANDS = ("stop", "pause", "resume")
STOP_FILE = "STOP"
PAUSE_FILE = "PAUSE"  # written by the multi-process wrapper while paused (core.training.distributed)


class TrainingControl:
    """Thread-safe stop/pause state shared by the stdin reader thread, signal handlers and the Trainer callback."""

    def __init__(self, output_dir: str | Path | None = None, eof_means_stop: bool = False,
                 watch_pause_file: bool = False) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.eof_means_stop = eof_means_stop
        self.watch_pause_file = watch_pause_file  # a rank of a multi-process run: PAUSE file = paused
        self.stop_reason: str | None = None
        self._cond = threading.Condition()
        self._paused = False
        self._reader: threading.Thread | None = None

    # --- requests (any thread) -------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        with self._cond:
            if self.stop_reason is None:
                self.stop_reason = reason
                log.info("stop requested: %s", reason)
            self._cond.notify_all()

    def request_pause(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def request_resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def handle_command(self, line: str) -> bool:
        """Apply one stdin line; unknown lines are logged and ignored. Returns whether it was a command."""
        command = line.strip().lower()
        if command == "stop":
            self.request_stop("stop command")
        elif command == "pause":
            self.request_pause()
        elif command == "resume":
            self.request_resume()
        else:
            if command:
                log.warning("ignored unknown command on stdin: %r (expected one of %s)", line.strip()[:80], ", ".join(COMMANDS))
            return False
        return True

    # --- state (the training thread) -----------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        self._check_stop_file()
        return self.stop_reason is not None

    @property
    def pause_requested(self) -> bool:
        self._check_pause_file()
        with self._cond:
            return self._paused and self.stop_reason is None

    def _check_stop_file(self) -> None:
        if self.stop_reason is None and self.output_dir is not None and (self.output_dir / STOP_FILE).exists():
            reason = "STOP file"
            if self.watch_pause_file:  # the wrapper writes the original reason ("stop command", "SIGINT") into it
                try:
                    reason = (self.output_dir / STOP_FILE).read_text(encoding="utf-8").strip()[:80] or reason
                except OSError:
                    pass
            self.request_stop(reason)

    def _check_pause_file(self) -> None:
        if self.watch_pause_file and self.output_dir is not None:
            paused = (self.output_dir / PAUSE_FILE).exists()
            with self._cond:
                if paused != self._paused:
                    self._paused = paused
                    self._cond.notify_all()

    def wait_while_paused(self, poll_s: float = 0.5) -> bool:
        """Block while paused (a stop ends the pause). Returns True if it blocked at all. Polls the STOP file."""
        blocked = False
        while True:
            self._check_stop_file()
            self._check_pause_file()
            with self._cond:
                if not self._paused or self.stop_reason is not None:
                    return blocked
                blocked = True
                self._cond.wait(timeout=poll_s)

    # --- sources ------------------------------------------------------------------------------------------
    def start_stdin_reader(self, stream: IO[str] | None = None) -> threading.Thread:
        """Read commands from ``stream`` (stdin) on a daemon thread: it must never keep a finished run alive."""
        stream = stream if stream is not None else sys.stdin

        def read() -> None:
            try:
                for line in stream:
                    self.handle_command(line)
            except (OSError, ValueError) as exc:  # closed or unreadable stdin counts as EOF
                log.info("stdin unreadable (%s): treated as end of input", exc)
            if self.eof_means_stop:
                self.request_stop("stdin closed (the app went away)")
            else:
                log.info("stdin closed; ignored (not started by the app)")

        self._reader = threading.Thread(target=read, name="sft-studio-stdin", daemon=True)
        self._reader.start()
        return self._reader

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM = graceful stop (checkpoint + adapter); a second one ends the process at once.
        Main thread only (Python's rule for signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.stop_reason is not None:
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            print(f"{name}: stopping after this step and saving (send it again to quit without saving)", file=sys.stderr)
            self.request_stop(name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)


def stdin_is_readable_safely(stream: Any = None) -> bool:
    """Whether reading stdin on a thread is safe: a pipe or file, yes; a terminal, no — a run put in the
    background with ``&`` would be stopped by SIGTTIN the moment it reads. Terminal users stop with Ctrl-C or
    the STOP file."""
    stream = stream if stream is not None else sys.stdin
    if stream is None:
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


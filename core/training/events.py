"""The event stream (DESIGN.md §3.4): one JSON object per line on stdout behind a fixed marker, mirrored
to ``<output_dir>/events.jsonl``. Qt-free; the app's supervisor parses the same lines."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

MARKER = "@@sft-studio@@ "


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: report them as strings so the watchdog and the GUI can show them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Writes events to stdout (with :data:`MARKER`) and appends them to ``events.jsonl``, flushing each line
    so that a killed run leaves at most one torn last line."""

    def __init__(self, events_path: str | Path | None, stream: IO[str] | None = None) -> None:
        self.path = Path(events_path) if events_path else None
        self.stream = stream if stream is not None else sys.stdout
        self._file = None
        self.file_error = False  # set when events.jsonl could not be written (disk full); stdout still works
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if _ends_torn(self.path):  # a killed writer left half a line: end it, or our first event joins it
                self._file.write("\n")
                self._file.flush()

    def emit(self, type: str, **fields: Any) -> dict:
        event = {"type": type, "time": round(time.time(), 3), **_clean(fields)}
        line = json.dumps(event, ensure_ascii=False, default=str)
        if self._file is not None:
            try:
                self._file.write(line + "\n")
                self._file.flush()
                if type in ("finished", "failed", "checkpoint"):
                    os.fsync(self._file.fileno())
            except OSError:  # a full disk must not hide the event (often the `failed` one) from the app
                self.file_error = True
        if self.stream is not None:
            try:
                self.stream.write(MARKER + line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # BrokenPipeError: the reader (the app) went away; keep the file
                self._lose_stream()
        return event

    def _lose_stream(self) -> None:
        """Stop writing to a stream nobody reads. If it was stdout (the app's pipe), point sys.stdout at devnull
        too: a later print() from a library would otherwise raise BrokenPipeError mid-training and turn the
        stop-and-save into a crash. (stderr is left alone: logging and warnings swallow write errors.)"""
        lost, self.stream = self.stream, None
        if lost is not None and lost is sys.stdout:
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_torn(path: Path) -> bool:
    """Whether the file is non-empty and its last line has no newline (a writer killed mid-line)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False


def parse_event_line(line: str) -> dict | None:
    """The event on a stdout line, or None for other output (library prints)."""
    if not line.startswith(MARKER):
        return None
    try:
        return json.loads(line[len(MARKER):])
    except json.JSONDecodeError:
        return None


def read_events(path: str | Path) -> list[dict]:
    """All events of ``events.jsonl``; a torn last line (killed writer) is skipped."""
    events = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events

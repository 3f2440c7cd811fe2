"""One run per run directory: an OS-level lock on ``<output_dir>/.lock``.

The lock is held by the open file, so it disappears with the process — a ``kill -9``, a crash or a reboot
never leaves a stale lock behind — and a second run pointed at the same directory is refused before it
writes anything (its events would otherwise interleave with the first run's)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import IO


class RunDirBusy(Exception):
    """Another live process is training into this directory."""


class RunDirLock:
    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.path = Path(output_dir) / ".lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run's lifetime
        try:
            _lock(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                who = json.loads(holder)
                detail = f" (pid {who.get('pid')} on {who.get('host')}, since {who.get('since')})"
            except (ValueError, AttributeError):
                detail = ""
            raise RunDirBusy(
                f"{self.path.parent}: another training run is using this output_dir{detail}; "
                "stop it first, or choose another output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            try:
                self._fh.seek(0)
                self._fh.truncate()
                _unlock(self._fh)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fh: IO[str]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh: IO[str]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fh: IO[str]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh: IO[str]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

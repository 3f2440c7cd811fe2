"""How a Hub download's progress event (``sft-studio download --progress-json``) is drawn: the bar and one line with
bytes, speed, ETA, files and what a resume kept. Shared by the model library and the dataset preview dialogs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.model_library import human_size


def show_download_progress(bar: Any, label: Any, repo: str, event: dict) -> None:
    """Draw one ``progress`` event on ``bar`` (a QProgressBar, range 0..1000) and ``label`` (a QLabel)."""
    from core.model_hub import format_seconds

    done, total = int(event.get("done") or 0), int(event.get("total") or 0)
    bar.setRange(0, 1000)
    bar.setValue(int(1000 * done / total) if total else 0)
    bar.setFormat(f"{done / total:.0%}" if total else "")
    speed = float(event.get("speed") or 0)
    parts = [f"{human_size(done)} of {human_size(total)}",
             f"{human_size(int(speed))}/s" if speed else "measuring speed…"]
    if event.get("eta") is not None:
        parts.append(f"ETA {format_seconds(event['eta'])}")
    parts.append(f"{event.get('files_done', 0)}/{event.get('files_total', 0)} files")
    if event.get("resumed"):
        parts.append(f"resumed from {human_size(int(event['resumed']))}")
    label.setText(f"Downloading {repo}: " + " · ".join(parts))


@dataclass
class DownloadOutcome:
    """What a finished download child reported: its ``done`` / ``failed`` events and the last ``progress`` one."""

    code: int
    done: dict | None
    failed: dict | None
    last: dict | None

    @classmethod
    def of(cls, events: list[dict], code: int) -> DownloadOutcome:
        def first(kind: str, items: Any) -> dict | None:
            return next((e for e in items if e.get("type") == kind), None)

        return cls(code, first("done", events), first("failed", events), first("progress", reversed(events)))

    @property
    def succeeded(self) -> bool:
        return self.code == 0 and self.done is not None

    @property
    def cancelled(self) -> bool:
        """Stopped by the user (exit 130), or killed after a cancel without a failure of its own."""
        return self.code == 130 or (self.code != 0 and not self.failed and self.last is not None)

    def message(self, tail: str, resume_hint: str) -> str:
        """The line for a download that did not succeed: cancelled (with what was kept) or failed (with why)."""
        if self.cancelled:
            last = self.last
            kept = f" ({human_size(int(last['done']))} of {human_size(int(last['total']))} kept)" if last else ""
            return f"Cancelled{kept}. {resume_hint}"
        return f"Download failed: {(self.failed or {}).get('message') or tail or f'exit {self.code}'}"


def stop_download(job: Any, still_current: Any) -> None:
    """SIGTERM the download child (it keeps what arrived and exits 130); kill it after 5 s if ``still_current()``."""
    from PySide6.QtCore import QTimer

    job.proc.terminate()
    QTimer.singleShot(5000, lambda: job.kill() if still_current() else None)

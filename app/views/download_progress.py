"""How a Hub download's progress event (``sft-studio download --progress-json``) is drawn: the bar and one line with
bytes, speed, ETA, files and what a resume kept. Shared by the model library and the dataset preview dialogs."""

from __future__ import annotations

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

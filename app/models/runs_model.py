"""The run history: every run directory under the runs folder(s), summarised from its ``run.yaml`` and
``events.jsonl`` (DESIGN.md §3.3), as a Qt table model. Reading is cheap: no torch, no model loads."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from core.config import ConfigError, RunConfig, config_to_dict, load_run_config
from core.training.events import read_events

COLUMNS = ("Name", "Model", "Dataset", "Status", "Final loss", "Steps", "Duration", "Started")


@dataclass
class RunInfo:
    path: Path
    status: str  # finished | stopped | failed | killed | interrupted | running | not started
    model: str = ""
    dataset: str = ""
    final_loss: float | None = None
    steps: int | None = None
    total: int | None = None
    started: float | None = None
    duration_s: float | None = None
    failure: str = ""
    config: RunConfig | None = None
    events: list[dict] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: str | Path) -> RunInfo | None:
    """A summary of the run in ``path``; None when the folder is not a run (no run.yaml, no events.jsonl)."""
    path = Path(path)
    has_events = (path / "events.jsonl").is_file()
    if not has_events and not (path / "run.yaml").is_file():
        return None
    info = RunInfo(path, "not started")
    try:
        info.config = load_run_config(path / "run.yaml", resolve=False) if (path / "run.yaml").is_file() else None
    except (ConfigError, OSError):
        info.config = None
    if info.config is not None:
        info.model = Path(info.config.model.name_or_path).name if "/" in info.config.model.name_or_path and \
            Path(info.config.model.name_or_path).is_absolute() else info.config.model.name_or_path
        info.dataset = Path(str(info.config.data.path)).name
    events = read_events(path / "events.jsonl") if has_events else []
    info.events = events
    last_end: dict | None = None
    started_at = None
    for e in events:
        kind = e.get("type")
        if kind == "started":
            started_at = started_at or e.get("time")
            last_end = None
            if not info.model and isinstance(e.get("model"), str):
                info.model = Path(e["model"]).name
        elif kind in ("finished", "failed"):
            last_end = e
        elif kind == "metrics" and isinstance(e.get("loss"), (int, float)):
            info.final_loss = float(e["loss"])
        elif kind == "progress":
            info.steps, info.total = e.get("step"), e.get("total")
    info.started = started_at
    if events and started_at:
        t_end = events[-1].get("time")
        if isinstance(t_end, (int, float)):
            info.duration_s = t_end - started_at
    if last_end is None:
        if any(e.get("type") == "started" for e in events):
            from app.workers.training_supervisor import _trainer_alive

            last_start = [e for e in events if e.get("type") == "started"][-1]
            info.status = "running" if _trainer_alive(last_start) else "interrupted"
    elif last_end.get("type") == "finished":
        info.status = "stopped" if last_end.get("stopped_early") else "finished"
        info.steps = last_end.get("steps", info.steps)
    else:
        info.status = "killed" if last_end.get("kind") == "killed" else "failed"
        info.failure = f"{last_end.get('kind')}: {last_end.get('message')}"
    return info


def scan_runs(roots: list[str | Path]) -> list[RunInfo]:
    """Every run under ``roots`` (each root itself and its sub-folders), newest first."""
    seen: set[Path] = set()
    runs: list[RunInfo] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
            resolved = folder.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            info = read_run(folder)
            if info is not None:
                runs.append(info)
    runs.sort(key=_sort_time, reverse=True)
    return runs


def _sort_time(run: RunInfo) -> float:
    if run.started:
        return float(run.started)
    try:
        return (run.path / "run.yaml").stat().st_mtime
    except OSError:
        return 0.0


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and k not in ("columns", "placeholders"):
                out.update(_flatten(v, key))
            else:
                out[key] = v
        return out
    return {prefix: data}


def config_diff(runs: list[RunInfo]) -> list[tuple[str, list[Any]]]:
    """``(dotted key, [value per run])`` for the settings that differ between the runs (output_dir left out)."""
    flats = [_flatten(config_to_dict(r.config)) if r.config is not None else {} for r in runs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    out = []
    for key in keys:
        if key == "output_dir":
            continue
        values = [flat.get(key) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            out.append((key, values))
    return out


def delete_run(path: str | Path) -> None:
    shutil.rmtree(path)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunsModel(QAbstractTableModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.runs: list[RunInfo] = []

    def set_runs(self, runs: list[RunInfo]) -> None:
        self.beginResetModel()
        self.runs = list(runs)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.runs)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        run = self.runs[index.row()]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            if col == "Name":
                return run.name
            if col == "Model":
                return run.model
            if col == "Dataset":
                return run.dataset
            if col == "Status":
                return run.status
            if col == "Final loss":
                return f"{run.final_loss:.4f}" if run.final_loss is not None else "–"
            if col == "Steps":
                return f"{run.steps}/{run.total}" if run.total else (str(run.steps) if run.steps is not None else "–")
            if col == "Duration":
                return format_duration(run.duration_s)
            if col == "Started":
                return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) if run.started else "–"
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{run.path}" + (f"\n{run.failure}" if run.failure else "")
        if role == Qt.ItemDataRole.ForegroundRole and col == "Status":
            from PySide6.QtGui import QColor

            colour = {"failed": "#d9534f", "killed": "#d9534f", "finished": "#2e9e4f", "interrupted": "#b8860b",
                      "stopped": "#b8860b", "running": "#4a90d9"}
            return QColor(colour[run.status]) if run.status in colour else None
        if role == Qt.ItemDataRole.UserRole:
            return run
        return None

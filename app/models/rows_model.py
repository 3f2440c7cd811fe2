"""The dataset's rows as a table; a row's preview is formatted only when a view paints it."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from app.views.style import is_dark
from core.data import NormalizedDataset, RowProblem

Index = QModelIndex | QPersistentModelIndex
PREVIEW_CHARS = 160


def example_preview(example: dict | None) -> str:
    """First user-visible text of an example, on one line."""
    if example is None:
        return ""
    if "messages" in example:
        msgs = example["messages"]
        first = next((m for m in msgs if m.get("role") == "user"), msgs[0] if msgs else None)
        text = (first or {}).get("content") or ""
    elif "prompt" in example:
        prompt = example["prompt"]
        if isinstance(prompt, list):
            text = next((m.get("content") or "" for m in prompt if m.get("role") == "user"), "")
        else:
            text = prompt
    else:
        text = example.get("text", "")
    text = " ".join(str(text).split())
    return text[:PREVIEW_CHARS] + ("…" if len(text) > PREVIEW_CHARS else "")


def example_turns(example: dict | None) -> str:
    if example is None:
        return ""
    if "messages" in example:
        return str(len(example["messages"]))
    if "prompt" in example:
        p, c = example["prompt"], example["completion"]
        return f"{len(p)}+{len(c)}" if isinstance(p, list) else "1+1"
    return "text"


class RowsModel(QAbstractTableModel):
    HEADERS = ("Row", "Line", "Status", "Turns", "Preview")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._dataset: NormalizedDataset | None = None
        self._lines: list[int | None] = []
        self._problems: dict[int, list[RowProblem]] = {}

    def set_dataset(self, dataset: NormalizedDataset | None, lines: list[int | None] | None = None,
                    extra: list[RowProblem] | None = None) -> None:
        self.beginResetModel()
        self._dataset = dataset
        self._lines = list(lines or [])
        self._problems = {}
        for p in extra if extra is not None else (dataset.problems if dataset else []):
            self._problems.setdefault(p.row, []).append(p)
        self.endResetModel()

    def problems_for(self, row: int) -> list[RowProblem]:
        return self._problems.get(row, [])

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if parent.isValid() or self._dataset is None:
            return 0
        return len(self._dataset.examples)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def _status(self, row: int) -> tuple[str, str]:
        problems = self._problems.get(row, [])
        assert self._dataset is not None
        if self._dataset.examples[row] is None or any(p.severity == "error" for p in problems):
            return "error", "; ".join(str(p) for p in problems) or "not usable"
        if problems:
            return "warning", "; ".join(str(p) for p in problems)
        return "ok", ""

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if self._dataset is None or not index.isValid():
            return None
        row, col = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return row
            if col == 1:
                line = self._lines[row] if row < len(self._lines) else None
                return "" if line is None else line
            if col == 2:
                return self._status(row)[0]
            if col == 3:
                return example_turns(self._dataset.examples[row])
            if col == 4:
                example = self._dataset.examples[row]
                if example is None:
                    problems = self._problems.get(row, [])
                    return problems[0].message if problems else "(not usable)"
                return example_preview(example)
        if role == Qt.ItemDataRole.ToolTipRole and col in (2, 4):
            return self._status(row)[1] or None
        if role == Qt.ItemDataRole.ForegroundRole and col == 2:
            status = self._status(row)[0]
            dark = is_dark()
            if status == "error":
                return QBrush(QColor("#ff7b72" if dark else "#c62828"))
            if status == "warning":
                return QBrush(QColor("#e3b341" if dark else "#9a6700"))
        return None

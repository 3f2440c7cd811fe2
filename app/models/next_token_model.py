"""The label shift made visible: at position i the model reads tokens 0..i and is scored on token i+1."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush

from app.views.style import category_color, mono_font, token_category
from core.masks import IGNORE_INDEX, REASONS, BuiltExample

Index = QModelIndex | QPersistentModelIndex
CONTEXT_TOKENS = 8


def _show(text: str) -> str:
    return text.replace("\n", "↵").replace("\t", "→").replace("\r", "␍")


class NextTokenModel(QAbstractTableModel):
    HEADERS = ("Position", "Context (last tokens)", "→ Target", "Label", "Loss?")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._built: BuiltExample | None = None
        self._font = mono_font()

    def set_example(self, built: BuiltExample | None) -> None:
        self.beginResetModel()
        self._built = built
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if parent.isValid() or self._built is None:
            return 0
        return max(0, len(self._built.input_ids) - 1)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def is_trained(self, position: int) -> bool:
        assert self._built is not None
        return self._built.labels[position + 1] != IGNORE_INDEX

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        built = self._built
        if built is None or not index.isValid():
            return None
        i, col = index.row(), index.column()
        target = built.tokens[i + 1]
        label = built.labels[i + 1]
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return f"{i} → {i + 1}"
            if col == 1:
                start = max(0, i - CONTEXT_TOKENS + 1)
                tail = "".join(_show(t.text) for t in built.tokens[start : i + 1])
                return ("…" if start else "") + tail
            if col == 2:
                return _show(target.text)
            if col == 3:
                return str(label)
            if col == 4:
                return "trained" if label != IGNORE_INDEX else f"no ({target.reason or 'masked'})"
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.FontRole and col in (1, 2):
            return self._font
        if role == Qt.ItemDataRole.BackgroundRole and col in (2, 4):
            return QBrush(category_color(token_category(label != IGNORE_INDEX, target.reason)))
        if role == Qt.ItemDataRole.ToolTipRole:
            if label != IGNORE_INDEX:
                return f"The model reads tokens 0..{i} and is scored on predicting token {i + 1} (id {target.id})."
            why = REASONS.get(target.reason or "", "masked")
            return f"No loss here: token {i + 1} is {why}; its label is {IGNORE_INDEX}."
        return None

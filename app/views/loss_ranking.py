"""Loss ranking: every row of the dataset by its mean loss under a model (or by how much tuning changed it) — the
fastest way to find mislabelled rows, duplicated prompts or answers the model cannot learn.

The rows are scored by the ``sft-studio losses`` child over the whole dataset (cached in the run folder, so the
Tokens page then shows any of them at once). Click a row to select it everywhere; double-click to open it on the
Tokens page coloured by the same model. "Export JSONL…" writes the list in the order shown.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.views.loss_scale import delta_color, loss_color, text_on
from app.views.style import Banner, BusyBar, is_dark
from app.workers.loss_client import LossJob, ModelEntry, model_entries, session_run_config

Index = QModelIndex | QPersistentModelIndex
SNIPPET_CHARS = 160
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
HELP = {
    "loss": "Highest loss first: rows the model finds hardest — mislabelled rows, duplicated prompts with different "
            "answers, answers it cannot learn. Click a column to sort (lowest first: what it already knows); click a "
            "row to show it, double-click to see its tokens.",
    "delta": "Largest change first: rows whose loss tuning raised (or lowered least) — answers that contradict the "
             "rest of the data; sort the other way for what tuning taught best. Click a row to show it, double-click "
             "to see which tokens changed.",
}


def example_snippet(example: dict | None) -> str:
    """The trained side of a normalised example on one line: the last answer, the completion, or the text."""
    if not example:
        return ""
    value: Any = ""
    if isinstance(example.get("messages"), list) and example["messages"]:
        answers = [m for m in example["messages"] if isinstance(m, dict) and m.get("role") == "assistant"]
        value = (answers or example["messages"])[-1].get("content", "")
    elif "completion" in example:
        value = example.get("completion")
    elif "text" in example:
        value = example.get("text")
    if isinstance(value, list):  # typed content parts
        value = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in value)
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    text = " ".join(value.split())
    return text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")


class LossRankingModel(QAbstractTableModel):
    """One line per scored row; ``mode`` "loss" (one model) or "delta" (base vs tuned)."""

    LOSS_HEADERS = ("Row", "Mean loss", "Max token loss", "Hardest token", "Trained tokens", "Answer")
    DELTA_HEADERS = ("Row", "Base mean loss", "Tuned mean loss", "Change", "Trained tokens", "Answer")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.mode = "loss"
        self.entries: list[dict] = []
        self.dark = False

    def reset(self, mode: str, dark: bool) -> None:
        self.beginResetModel()
        self.mode, self.dark, self.entries = mode, dark, []
        self.endResetModel()

    def add(self, entry: dict) -> None:
        n = len(self.entries)
        self.beginInsertRows(QModelIndex(), n, n)
        self.entries.append(entry)
        self.endInsertRows()

    @property
    def headers(self) -> tuple[str, ...]:
        return self.DELTA_HEADERS if self.mode == "delta" else self.LOSS_HEADERS

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.headers)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.headers[section]
        return None

    def _value(self, entry: dict, col: int) -> Any:
        if self.mode == "delta":
            keys = ("row", "base_mean_loss", "mean_loss", "delta", "n_trained", "text")
        else:
            keys = ("row", "mean_loss", "max_loss", "hardest_token", "n_trained", "text")
        return entry.get(keys[col])

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        col = index.column()
        value = self._value(entry, col)
        if role == SORT_ROLE:
            return value if not isinstance(value, str) else value.lower()
        if role == Qt.ItemDataRole.DisplayRole:
            if isinstance(value, float):
                return f"{value:+.3f}" if self.mode == "delta" and col == 3 else f"{value:.3f}"
            if col == 3 and self.mode == "loss" and value is not None:
                return repr(value)
            return "" if value is None else str(value)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (0, 1, 2, 4) + ((3,) if self.mode == "delta" else ()):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        colored = (self.mode == "loss" and col == 1) or (self.mode == "delta" and col == 3)
        if colored and isinstance(value, float) and role in (Qt.ItemDataRole.BackgroundRole,
                                                               Qt.ItemDataRole.ForegroundRole):
            color = delta_color(value, self.dark) if self.mode == "delta" else loss_color(value, self.dark)
            return color if role == Qt.ItemDataRole.BackgroundRole else text_on(color)
        if role == Qt.ItemDataRole.ToolTipRole and col == 5:
            return entry.get("text")
        return None


class LossRankingPanel(QWidget):
    """The rows of the dataset ranked by their loss under a chosen model."""

    openInTokens = Signal(int, str)  # row, model id (Tokens page picker)

    def __init__(self, session: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("LossRanking")
        self.job: LossJob | None = None
        self.job_entry: ModelEntry | None = None
        self.records: dict[str, dict[int, dict]] = {}  # model key -> row -> result
        self.dropped = 0
        self._entries: list[ModelEntry] = []
        self.choose_file = self._ask_file  # tests replace it

        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.setToolTip("The model whose loss ranks the rows; base vs tuned ranks by the change")
        self.rank_button = QPushButton("Rank rows")
        self.rank_button.setToolTip("Score every trained token of every row under this model (in a separate "
                                    "process; cached in the run folder, so a second time is quick)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.busy_bar = BusyBar()
        self.status = QLabel("")
        self.status.setObjectName("rankingStatus")
        self.export_button = QPushButton("Export JSONL…")
        self.export_button.setEnabled(False)
        self.export_button.setToolTip("Write the rows in the order shown, one JSON object per line")
        top = QHBoxLayout()
        top.addWidget(QLabel("Rank rows by their mean loss under"))
        top.addWidget(self.model_combo)
        top.addWidget(self.rank_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.busy_bar)
        top.addWidget(self.status, 1)
        top.addWidget(self.export_button)

        self.banner = Banner()
        self.help = QLabel(HELP["loss"])
        self.help.setWordWrap(True)
        self.help.setObjectName("rankingHelp")
        self.model = LossRankingModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView()
        self.table.setObjectName("rankingTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        for col in range(5):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.banner)
        layout.addWidget(self.help)
        layout.addWidget(self.table, 1)

        self.rank_button.clicked.connect(self.rank)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self.export_dialog)
        self.table.clicked.connect(self._on_clicked)
        self.table.doubleClicked.connect(self._on_double_clicked)
        self.model_combo.currentIndexChanged.connect(lambda _i: self._show())
        session.run_loaded.connect(lambda _loaded: self._forget())
        session.config_changed.connect(self.refresh_models)
        self.refresh_models()

    # -- models -------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.is_running()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.refresh_models()

    def refresh_models(self) -> None:
        from core.token_losses import run_models

        try:
            models = run_models(session_run_config(self.session))
        except Exception:  # noqa: BLE001 - an unusable output_dir: nothing to rank with
            models = []
        entries = [e for e in model_entries(models) if e.mode != "masks"]
        if [e.id for e in entries] == [e.id for e in self._entries] and \
                [[c.key for c in e.choices] for e in entries] == [[c.key for c in e.choices] for e in self._entries]:
            return
        current = self.current_model()
        self._entries = entries
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in entries:
            text = entry.text.replace("Loss under the ", "").replace("Loss under ", "")
            self.model_combo.addItem(text.replace("Base vs tuned: change of loss", "base vs tuned: change"), entry.id)
        ids = [e.id for e in entries]
        default = "adapter" if "adapter" in ids else (ids[-1] if ids else None)
        pick = current if current in ids else default
        if pick is not None:
            self.model_combo.setCurrentIndex(ids.index(pick))
        self.model_combo.blockSignals(False)
        self.rank_button.setEnabled(bool(entries))
        self._show()

    def current_model(self) -> str | None:
        data = self.model_combo.currentData()
        return str(data) if data else None

    def set_model(self, model_id: str) -> bool:
        self.refresh_models()
        ids = [e.id for e in self._entries]
        if model_id not in ids:
            return False
        self.model_combo.setCurrentIndex(ids.index(model_id))
        return True

    def _entry(self) -> ModelEntry | None:
        ids = [e.id for e in self._entries]
        current = self.current_model()
        return self._entries[ids.index(current)] if current in ids else None

    # -- computing ----------------------------------------------------------------------------------------
    def rank(self) -> bool:
        """Score every row under the chosen model(s) in the child; False when nothing can start now."""
        entry = self._entry()
        if entry is None or self.busy or self.session.run is None:
            return False
        self.banner.clear()
        for choice in entry.choices:
            self.records[choice.key] = {}
        self.dropped = 0
        self._show()
        job = LossJob(session_run_config(self.session), [c.spec for c in entry.choices], None, self)
        job.resultReceived.connect(lambda record, j=job: self._on_result(j, record))
        job.progressed.connect(lambda stage, done, total, j=job: self._on_progress(j, stage, done, total))
        job.ended.connect(lambda code, message, j=job: self._on_ended(j, code, message))
        self.job, self.job_entry = job, entry
        self.status.setText("Starting…")
        self.busy_bar.set_busy(True)
        self.cancel_button.show()
        self.rank_button.setEnabled(False)
        job.start()
        return True

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling…")

    def shutdown(self) -> None:
        job = self.job
        if job is not None and job.is_running():
            job.cancel()
            if not job.child.wait(3000):
                job.child.kill()
                job.child.wait(2000)

    def _on_result(self, job: LossJob, record: dict) -> None:
        if job is not self.job:
            return
        key, row = record.get("key"), record.get("row")
        if not isinstance(key, str) or not isinstance(row, int):
            return
        self.records.setdefault(key, {})[row] = record
        entry = self._entry()
        if entry is None or entry is not self.job_entry:
            return
        if "dropped" in record:
            self.dropped += key == entry.choices[-1].key
            return
        line = self._line(entry, row)
        if line is not None:
            self.model.add(line)
            self.export_button.setEnabled(True)

    def _on_progress(self, job: LossJob, stage: str, done: int, total: int) -> None:
        if job is not self.job or job.cancelled:
            return
        self.busy_bar.set_progress(done, total if stage.startswith("scoring") or "cache" in stage else 0)
        text = {"reading the data and the tokenizer": "Reading the data…",
                "loading the model": "Loading the model…"}.get(stage, f"{stage}: {done}/{total}" if total else stage)
        self.status.setText(html.escape(text[0].upper() + text[1:]))

    def _on_ended(self, job: LossJob, code: int, message: str) -> None:
        job.deleteLater()
        if job is not self.job:
            return
        self.job = None
        self.busy_bar.set_busy(False)
        self.cancel_button.hide()
        self.rank_button.setEnabled(bool(self._entries))
        if code == 130:
            self.status.setText(f"Cancelled: {self.model.rowCount()} rows ranked.")
            return
        if code != 0:
            self.status.setText("")
            self.banner.show_message("error", message or f"exit code {code}", "The rows could not be scored:")
            return
        self._status_done()

    def _status_done(self) -> None:
        n = self.model.rowCount()
        dropped = f" · {self.dropped} rows are not trained and have no loss" if self.dropped else ""
        self.status.setText(f"{n} rows ranked{dropped}." if n else "")

    # -- the table ----------------------------------------------------------------------------------------
    def _line(self, entry: ModelEntry, row: int) -> dict | None:
        records = [self.records.get(c.key, {}).get(row) for c in entry.choices]
        if any(r is None or "dropped" in r or r.get("mean_loss") is None for r in records):
            return None
        record = records[-1]
        assert record is not None
        tokens = record.get("tokens", [])
        hardest = max(tokens, key=lambda t: t["loss"]) if tokens else None
        loaded = self.session.loaded
        examples = loaded.dataset.examples if loaded is not None and loaded.dataset is not None else []
        lines = self.session.run.lines if self.session.run is not None else []
        line = {
            "row": row, "line": lines[row] if row < len(lines) else None, "model": entry.choices[-1].label,
            "mean_loss": record["mean_loss"], "max_loss": hardest["loss"] if hardest else None,
            "hardest_token": hardest["token"] if hardest else None, "n_trained": record.get("n_trained"),
            "text": example_snippet(examples[row] if row < len(examples) else None),
        }
        if entry.mode == "delta":
            base = records[0]
            assert base is not None
            line["base_model"] = entry.choices[0].label
            line["base_mean_loss"] = base["mean_loss"]
            line["delta"] = record["mean_loss"] - base["mean_loss"]
        return line

    def _show(self) -> None:
        """Fill the table from the results of the chosen model(s) that are known."""
        entry = self._entry()
        if self.job is not None and entry is not self.job_entry:
            self.cancel()
        self.model.reset(entry.mode if entry is not None else "loss", is_dark(self.palette()))
        self.help.setText(HELP[self.model.mode])
        if entry is None:
            self.export_button.setEnabled(False)
            return
        rows = sorted(set.intersection(*[set(self.records.get(c.key, {})) for c in entry.choices]))
        for row in rows:
            line = self._line(entry, row)
            if line is not None:
                self.model.add(line)
        sort_col = 3 if entry.mode == "delta" else 1
        self.table.sortByColumn(sort_col, Qt.SortOrder.DescendingOrder)
        self.export_button.setEnabled(self.model.rowCount() > 0)
        if not self.busy:
            self._status_done() if rows else self.status.setText("")

    def _forget(self) -> None:
        """New data or settings: the ranking described other rows."""
        if self.job is not None:
            self.cancel()
            self.job = None
            self.busy_bar.set_busy(False)
            self.cancel_button.hide()
            self.rank_button.setEnabled(bool(self._entries))
        self.records.clear()
        self.dropped = 0
        self._show()

    def ranked_rows(self) -> list[dict]:
        """The lines in the order shown."""
        return [self.model.entries[self.proxy.mapToSource(self.proxy.index(i, 0)).row()]
                for i in range(self.proxy.rowCount())]

    def _source_row(self, index: QModelIndex) -> int | None:
        if not index.isValid():
            return None
        return self.model.entries[self.proxy.mapToSource(index).row()]["row"]

    def _on_clicked(self, index: QModelIndex) -> None:
        row = self._source_row(index)
        if row is not None:
            self.session.set_row(row)

    def _on_double_clicked(self, index: QModelIndex) -> None:
        row = self._source_row(index)
        entry = self._entry()
        if row is not None and entry is not None:
            self.session.set_row(row)
            self.openInTokens.emit(row, entry.id)

    # -- export -------------------------------------------------------------------------------------------
    def _ask_file(self) -> str | None:
        start = Path(str(session_run_config(self.session).output_dir)) / "loss-ranking.jsonl"
        path, _ = QFileDialog.getSaveFileName(self, "Export the ranking", str(start), "JSON lines (*.jsonl)")
        return path or None

    def export_dialog(self) -> None:
        path = self.choose_file()
        if path:
            self.export_jsonl(path)

    def export_jsonl(self, path: str | Path) -> int:
        """Write the ranking in the order shown, one JSON object per row; returns the number of rows."""
        lines = self.ranked_rows()
        try:
            Path(path).write_text("".join(json.dumps({"rank": i, **line}, ensure_ascii=False) + "\n"
                                          for i, line in enumerate(lines, 1)), encoding="utf-8")
        except OSError as exc:
            self.banner.show_message("error", f"{path}: {exc.strerror or exc}", "The ranking could not be written:")
            return 0
        self.status.setText(f"Wrote {len(lines)} rows to {html.escape(str(path))}")
        return len(lines)

"""Data: open a dataset, fix its format and columns, browse rows, and read the audit."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.models.rows_model import RowsModel
from app.session import StudioSession
from app.views.conversation import conversation_html
from app.views.loss_ranking import LossRankingPanel
from app.views.style import Banner, is_dark
from app.workers.tasks import LoadedRun
from core.data import FORMATS, RowProblem
from core.data.formats import OUR_COLUMNS

DATA_FILTER = "Datasets (*.jsonl *.json *.csv *.tsv *.parquet *.pq *.arrow);;All files (*)"
DEFAULT_COLUMN = "(default)"


class LengthHistogram(QWidget):
    """Token lengths per row with the max_length line (pyqtgraph, created on first use)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self._pg = pg
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget()
        self.plot.setMinimumHeight(170)
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "tokens per row")
        self.plot.setLabel("left", "rows")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        layout.addWidget(self.plot)
        self.bars = None
        self.line = None

    def set_data(self, lengths: list[int], max_length: int) -> None:
        import numpy as np

        pg = self._pg
        dark = is_dark()
        self.plot.setBackground("#1e1f22" if dark else "w")
        fg = "#cccccc" if dark else "#333333"
        for axis in ("bottom", "left"):
            self.plot.getAxis(axis).setTextPen(fg)
            self.plot.getAxis(axis).setPen(fg)
        self.plot.clear()
        if not lengths:
            return
        values = np.asarray(lengths)
        top = max(int(values.max()), max_length)
        bins = np.linspace(0, top * 1.02 + 1, 41)
        counts, edges = np.histogram(values, bins=bins)
        over = edges[:-1] >= max_length
        brushes = [pg.mkBrush("#d9534f" if o else "#4a90d9") for o in over]
        self.bars = pg.BarGraphItem(x0=edges[:-1], x1=edges[1:], height=counts, brushes=brushes, pen=None)
        self.plot.addItem(self.bars)
        self.line = pg.InfiniteLine(
            pos=max_length, angle=90, pen=pg.mkPen("#d9534f", width=2, style=Qt.PenStyle.DashLine),
            label=f"max_length {max_length}", labelOpts={"position": 0.9, "color": "#d9534f"},
        )
        self.plot.addItem(self.line)


class DataPage(QWidget):
    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("DataPage")
        self._updating = False
        self._last_format: str | None = None  # the last format that loaded (its columns stay editable after an error)

        # source ---------------------------------------------------------------------------------------
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText("a .jsonl/.json/.csv/.parquet file, a saved dataset folder, or a Hub id")
        self.load_button = QPushButton("Load")
        self.file_button = QPushButton("Open file…")
        self.folder_button = QPushButton("Open folder…")
        self.hub_button = QPushButton("Preview from Hub…")
        self.hub_button.setEnabled(False)
        self.hub_button.setToolTip("For a Hub dataset id (org/name): its size, files, detected format and first rows, "
                                   "read from the start of one file without downloading it; then download it with "
                                   "progress and use it")
        self.hub_dialog = None  # DatasetHubDialog, made on first use (a download keeps running while it is closed)
        source_row = QHBoxLayout()
        source_row.addWidget(QLabel("Dataset"))
        source_row.addWidget(self.source_edit, 1)
        source_row.addWidget(self.load_button)
        source_row.addWidget(self.hub_button)
        source_row.addWidget(self.file_button)
        source_row.addWidget(self.folder_button)

        # format + columns -----------------------------------------------------------------------------
        self.format_combo = QComboBox()
        self.format_combo.addItems(["auto", *FORMATS])
        self.format_combo.setToolTip("The row format; auto detects it from the columns.")
        self.detected = QLabel("")
        self.detected.setWordWrap(True)
        self.columns_box = QGroupBox("Columns")
        self.columns_form = QHBoxLayout(self.columns_box)
        self.columns_form.setContentsMargins(8, 4, 8, 4)
        self.column_combos: dict[str, QComboBox] = {}
        format_row = QHBoxLayout()
        format_row.addWidget(QLabel("Format"))
        format_row.addWidget(self.format_combo)
        format_row.addWidget(self.detected, 1)

        self.banner = Banner()

        # rows + detail --------------------------------------------------------------------------------
        self.rows_model = RowsModel(self)
        self.table = QTableView()
        self.table.setObjectName("rowsTable")
        self.table.setModel(self.rows_model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        for col, width in ((0, 56), (1, 56), (2, 70), (3, 50)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(col, width)
        header.setStretchLastSection(True)
        self.detail = QTextBrowser()
        self.detail.setObjectName("rowDetail")
        self.detail.setOpenLinks(False)

        # audit ----------------------------------------------------------------------------------------
        self.audit_summary = QLabel("The audit runs after loading.")
        self.audit_summary.setObjectName("auditSummary")
        self.audit_summary.setWordWrap(True)
        self.audit_summary.setTextFormat(Qt.TextFormat.RichText)
        self.audit_summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.problem_list = QListWidget()
        self.problem_list.setObjectName("problemList")
        self.problem_list.setWordWrap(True)
        self.problem_list.setToolTip("Click a problem to show its row.")
        self.histogram: LengthHistogram | None = None
        self.hist_holder = QVBoxLayout()

        problems_box = QGroupBox("Problems (click to jump to the row)")
        QVBoxLayout(problems_box).addWidget(self.problem_list)
        audit_box = QGroupBox("Audit")
        audit_layout = QVBoxLayout(audit_box)
        audit_layout.addWidget(self.audit_summary)
        audit_layout.addLayout(self.hist_holder, 1)

        upper = QSplitter(Qt.Orientation.Horizontal)
        upper.addWidget(self.table)
        upper.addWidget(self.detail)
        upper.setStretchFactor(0, 3)
        upper.setStretchFactor(1, 2)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(problems_box)
        lower.addWidget(audit_box)
        lower.setStretchFactor(0, 2)
        lower.setStretchFactor(1, 3)
        lower.setSizes([500, 750])
        # the audit, and beside it (a tab) the rows ranked by their loss under a model of the run
        self.loss_ranking = LossRankingPanel(session)
        self.lower_tabs = QTabWidget()
        self.lower_tabs.setObjectName("dataTabs")
        self.lower_tabs.addTab(lower, "Audit && problems")
        self.lower_tabs.addTab(self.loss_ranking, "Loss ranking")
        main = QSplitter(Qt.Orientation.Vertical)
        main.addWidget(upper)
        main.addWidget(self.lower_tabs)
        main.setStretchFactor(0, 1)
        main.setStretchFactor(1, 1)
        main.setSizes([400, 360])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(8)
        layout.addWidget(QLabel("<h2 style='margin:0'>Data</h2>"))
        layout.addLayout(source_row)
        layout.addLayout(format_row)
        layout.addWidget(self.columns_box)
        layout.addWidget(self.banner)
        layout.addWidget(main, 1)

        # wiring ---------------------------------------------------------------------------------------
        self.load_button.clicked.connect(self._load_source)
        self.source_edit.returnPressed.connect(self._load_source)
        self.file_button.clicked.connect(self.open_file_dialog)
        self.hub_button.clicked.connect(self.open_hub_preview)
        self.source_edit.textChanged.connect(self._update_hub_button)
        self.folder_button.clicked.connect(self.open_folder_dialog)
        self.format_combo.currentTextChanged.connect(self._on_format_chosen)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _prev: self._on_table_row(cur.row()))
        self.problem_list.itemActivated.connect(self._on_problem_clicked)
        self.problem_list.itemClicked.connect(self._on_problem_clicked)
        session.config_changed.connect(self._sync_from_config)
        session.load_started.connect(self._on_load_started)
        session.run_loaded.connect(self._on_run_loaded)
        session.load_failed.connect(self._on_load_failed)
        session.audit_started.connect(lambda: self.audit_summary.setText("Auditing every row…"))
        session.audit_finished.connect(self._on_audit)
        session.audit_failed.connect(self._on_audit_failed)
        session.row_changed.connect(self._on_row_changed)
        self._sync_from_config()

    # -- user actions -----------------------------------------------------------------------------------
    def _load_source(self) -> None:
        text = self.source_edit.text().strip()
        if text:
            self.session.update_config(data__path=text, data__format="auto", data__columns={})

    def _update_hub_button(self, text: str) -> None:
        from core.dataset_hub import looks_like_hub_dataset_id

        self.hub_button.setEnabled(looks_like_hub_dataset_id(text))

    def open_hub_preview(self):  # noqa: ANN201 - DatasetHubDialog, imported on first use
        """Preview the Hub dataset named in the field (one dialog: a download keeps running while it is closed)."""
        from app.views.dataset_hub_dialog import DatasetHubDialog

        if self.hub_dialog is None:
            self.hub_dialog = DatasetHubDialog(self.session, parent=self, choose=self.open_dataset)
        self.hub_dialog.open_for(self.source_edit.text().strip())
        return self.hub_dialog

    def shutdown(self) -> None:
        """Stop the page's threads and children (the app is closing): the loss ranking, the Hub dataset dialog."""
        self.loss_ranking.shutdown()
        if self.hub_dialog is not None:
            self.hub_dialog.shutdown()

    def open_file_dialog(self) -> None:
        start = str(Path(self.session.config.data.path).parent)
        path, _ = QFileDialog.getOpenFileName(self, "Open dataset", start, DATA_FILTER)
        if path:
            self.open_dataset(path)

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open saved dataset folder")
        if path:
            self.open_dataset(path)

    def open_dataset(self, path: str) -> None:
        self.source_edit.setText(path)
        self.session.update_config(data__path=path, data__format="auto", data__columns={})

    def _on_format_chosen(self, fmt: str) -> None:
        if not self._updating:
            self.session.update_config(data__format=fmt, data__columns={})

    def _on_column_chosen(self, role: str, column: str) -> None:
        if self._updating:
            return
        columns = dict(self.session.config.data.columns)
        if column == DEFAULT_COLUMN:
            columns.pop(role, None)
        else:
            columns[role] = column
        self.session.update_config(data__columns=columns)

    def _on_table_row(self, row: int) -> None:
        if row >= 0 and not self._updating:
            self.session.set_row(row)
        self._show_detail(row)

    def _on_problem_clicked(self, item: QListWidgetItem) -> None:
        row = item.data(Qt.ItemDataRole.UserRole)
        if row is not None:
            self.session.set_row(int(row))

    # -- session → widgets ------------------------------------------------------------------------------
    def _sync_from_config(self) -> None:
        data = self.session.config.data
        self._updating = True
        if self.source_edit.text() != str(data.path):
            self.source_edit.setText(str(data.path))
        self.format_combo.setCurrentText(data.format)
        self._updating = False

    def _on_load_started(self) -> None:
        self.detected.setText("<i>loading…</i>")

    def _clear_audit(self, summary: str, problem: str | None = None) -> None:
        """Forget the previous audit: its summary, histogram and problem list describe other data."""
        self.audit_summary.setText(summary)
        if self.histogram is not None:
            self.histogram.set_data([], 0)
            self.histogram.hide()
        if problem is not None:
            self.problem_list.clear()
            item = QListWidgetItem(f"✖ {problem}")
            item.setForeground(_brush("#ff7b72" if is_dark() else "#c62828"))
            self.problem_list.addItem(item)

    def _on_audit_failed(self, message: str) -> None:
        self._clear_audit(f"The audit failed: {html.escape(message)}")

    def _rebuild_columns(self, loaded: LoadedRun | None) -> None:
        while self.columns_form.count():
            child = self.columns_form.takeAt(0)
            if child.widget() is not None:
                child.widget().deleteLater()
        self.column_combos.clear()
        if loaded is None:
            self.columns_box.hide()
            return
        dataset = loaded.dataset
        overrides = self.session.config.data.columns
        if dataset is not None:
            fmt = self._last_format = dataset.format
        else:  # the mapping did not work out: keep its combos on screen so that the user can undo it
            chosen = self.session.config.data.format
            fmt = chosen if chosen != "auto" else self._last_format
        roles = tuple(OUR_COLUMNS.get(fmt or "", ())) + tuple(
            r for r in overrides if r not in OUR_COLUMNS.get(fmt or "", ())
        )
        resolved = dict(dataset.columns) if dataset else {}
        self._updating = True
        for role in roles:
            combo = QComboBox()
            combo.addItem(DEFAULT_COLUMN)
            combo.addItems(loaded.raw_columns)
            chosen = overrides.get(role) or resolved.get(role)
            if chosen and chosen in loaded.raw_columns:
                combo.setCurrentText(chosen)
            combo.setToolTip(f"The dataset column that holds '{role}'")
            combo.currentTextChanged.connect(lambda col, r=role: self._on_column_chosen(r, col))
            self.columns_form.addWidget(QLabel(role))
            self.columns_form.addWidget(combo)
            self.columns_form.addSpacing(12)
            self.column_combos[role] = combo
        self.columns_form.addStretch(1)
        self._updating = False
        self.columns_box.setTitle(f"Columns ({len(loaded.raw_columns)} in the file: "
                                  f"{', '.join(loaded.raw_columns[:8])}{'…' if len(loaded.raw_columns) > 8 else ''})")
        self.columns_box.setVisible(bool(roles))

    def _on_run_loaded(self, loaded: LoadedRun) -> None:
        dataset = loaded.dataset
        self._rebuild_columns(loaded)
        lines = loaded.run.lines if loaded.run else None
        self._updating = True
        self.rows_model.set_dataset(dataset, lines)
        self._updating = False
        if dataset is not None:
            reason = f" — {dataset.reason}" if dataset.reason else ""
            self.detected.setText(f"<b>{html.escape(dataset.format)}</b>, {len(dataset.examples)} rows"
                                  f"{html.escape(reason)}")
        else:
            self.detected.setText(f"{loaded.raw_rows} rows read; format not understood")
        if loaded.error:
            titles = {"model": "The model cannot be loaded:", "template": "No chat template:",
                      "format": "The format does not fit:"}
            title = titles.get(loaded.error_kind or "", "Problem:")
            self.banner.show_message("error", loaded.error, title)
            if dataset is None:
                self._clear_audit("No audit: fix the problem above first.", f"{title} {loaded.error}")
            else:
                self._clear_audit("No audit: fix the problem above first.")
                self._fill_problems(dataset.problems, [], dataset.dataset_problems, done=False)
        else:
            self.banner.clear()
            self._clear_audit("The audit runs after loading.")
            self._fill_problems(dataset.problems if dataset else [], [],
                                dataset.dataset_problems if dataset else [], done=False)
        self._select_table_row(self.session.row)

    def _on_load_failed(self, message: str) -> None:
        self.rows_model.set_dataset(None)
        self._rebuild_columns(None)
        self.detected.setText("")
        self.banner.show_message("error", message, "The dataset cannot be read:")
        self.detail.clear()
        self._clear_audit("No audit: the dataset could not be read.", f"The dataset cannot be read: {message}")

    def _on_row_changed(self, row: int) -> None:
        self._select_table_row(row)

    def _select_table_row(self, row: int) -> None:
        if self.rows_model.rowCount() == 0:
            self.detail.clear()
            return
        index = self.rows_model.index(row, 0)
        self._updating = True
        self.table.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        )
        self._updating = False
        self.table.scrollTo(index)
        self._show_detail(row)

    def _show_detail(self, row: int) -> None:
        loaded = self.session.loaded
        if loaded is None or loaded.dataset is None or not 0 <= row < len(loaded.dataset.examples):
            self.detail.clear()
            return
        self.detail.setHtml(conversation_html(loaded.dataset.examples[row], self.rows_model.problems_for(row), row))

    def _fill_problems(self, problems: list, dropped: list, whole: list[str] | None = None,
                       done: bool = True) -> None:
        """The problem list: problems of the whole dataset first, then each row's. ``done`` is False while
        the audit has not run yet (an empty list then says so instead of "no problems")."""
        self.problem_list.clear()
        dark = is_dark()
        for message in whole or []:
            item = QListWidgetItem(f"✖ whole dataset · {message}")
            item.setForeground(_brush("#ff7b72" if dark else "#c62828"))
            item.setToolTip(message)
            self.problem_list.addItem(item)
        seen_rows = {p.row for p in problems if p.severity == "error"}
        items: list[tuple[int, str, str]] = []
        for p in problems:
            where = f"row {p.row}" + (f" (line {p.line})" if p.line else "")
            items.append((p.row, p.severity, f"{where} · {p.field + ': ' if p.field else ''}{p.message}"))
        for row, line, reason in dropped:
            if row not in seen_rows:
                where = f"row {row}" + (f" (line {line})" if line else "")
                items.append((row, "dropped", f"{where} · not trained: {reason}"))
        items.sort(key=lambda t: (t[0], t[1] != "error"))
        colors = {"error": "#ff7b72" if dark else "#c62828", "dropped": "#ff7b72" if dark else "#c62828",
                  "warning": "#e3b341" if dark else "#9a6700"}
        for row, severity, text in items[:5000]:
            item = QListWidgetItem(f"{'✖' if severity in ('error', 'dropped') else '⚠'} {text}")
            item.setData(Qt.ItemDataRole.UserRole, row)
            item.setForeground(self.palette().text() if severity not in colors else _brush(colors[severity]))
            self.problem_list.addItem(item)
        if not items and not whole:
            self.problem_list.addItem(QListWidgetItem("✓ no problems found" if done else "Auditing every row…"))

    def _on_audit(self, report) -> None:  # noqa: ANN001 - AuditReport
        from core.audit import length_stats

        self._fill_problems(report.problems, report.dropped, report.dataset_problems)
        # a row that will not be trained is never "ok" in the table, whatever the reason
        with_errors = {p.row for p in report.problems if p.severity == "error"}
        not_trained = [RowProblem(row, "", f"not trained: {reason}", report.source, line)
                       for row, line, reason in report.dropped if row not in with_errors]
        self.rows_model.set_dataset(self.session.loaded.dataset if self.session.loaded else None,
                                    self.session.run.lines if self.session.run else None,
                                    extra=[*report.problems, *not_trained])
        self._select_table_row(self.session.row)
        stats = length_stats(report.lengths)
        dark = is_dark()
        bad = "#ff7b72" if dark else "#c62828"

        def count(n: int, text: str, warn: bool = True) -> str:
            if n and warn:
                return f"<span style='color:{bad}'><b>{n}</b> {text}</span>"
            return f"<b>{n}</b> {text}"

        lines = [
            f"<b>{report.trainable_rows}</b> of {report.rows} rows will be trained · "
            f"<b>{100 * report.trained_share:.1f}%</b> of {report.total_tokens} tokens carry loss",
            count(len(report.truncated_rows), f"rows longer than max_length={report.max_length} (truncated)") + " · "
            + count(len(report.eos_lost_rows), "lose their end-of-turn token") + " · "
            + count(len(report.dropped), "rows not trained (no trained tokens or errors)"),
        ]
        if stats:
            lines.append(f"tokens per row: min {stats['min']}, median {stats['median']:g}, p95 {stats['p95']}, "
                         f"max {stats['max']}")
        if report.template:
            method = f", assistant tokens by <b>{html.escape(report.mask_method)}</b>" if report.mask_method else ""
            lines.append(f"template: {html.escape(report.template)}{method}; train_on: {html.escape(report.train_on)}")
        for problem in report.dataset_problems:
            lines.append(f"<span style='color:{bad}'>whole dataset: {html.escape(problem)}</span>")
        for issue in report.parity:
            lines.append(f"<span style='color:{bad}'>parity, row {issue.row}: {html.escape(issue.message)}</span>")
        for note in report.notes:
            lines.append(f"note: {html.escape(note)}")
        self.audit_summary.setText("<br>".join(lines))
        if self.histogram is None:
            self.histogram = LengthHistogram()
            self.hist_holder.addWidget(self.histogram)
        self.histogram.show()
        self.histogram.set_data(report.lengths, report.max_length)


def _brush(color: str):  # noqa: ANN202
    from PySide6.QtGui import QBrush, QColor

    return QBrush(QColor(color))

"""Preview from Hub…: a Hugging Face Hub dataset before downloading it — size, files per split, licence, the format
the studio detects and the first rows — then a download with a real progress bar and Cancel, and “Use this dataset”
to put it into the run.

Where the work happens, so that the window never blocks:

* facts and rows on a :class:`JobChannel` thread (:func:`core.dataset_hub.dataset_facts` and
  :func:`core.dataset_hub.preview_dataset`: ranged reads of a prefix of one data file); Cancel drops the job, which
  stops at its next request;
* the download in a child, ``sft-studio download ID --dataset --progress-json``, as the model library does: marked
  progress events; Cancel sends SIGTERM (the child keeps the bytes, exit 130) and Download resumes from them.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.views.download_progress import DownloadOutcome, show_download_progress, stop_download
from app.views.style import Banner, is_dark
from app.workers.jobs import JobChannel, Superseded
from core.model_library import human_size

CELL_CHARS = 240  # text shown in a cell; the tooltip holds more
TIP_CHARS = 2000


def _turns(value: Any) -> str | None:
    """A conversation column (OpenAI ``role``/``content`` or ShareGPT ``from``/``value``) as ``user: … ▸ …``."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return None
    parts = []
    for m in value:
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if role is None:
            return None
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False) if content is not None else ""
        parts.append(f"{role}: {content}")
    return " ▸ ".join(parts)


def cell_text(value: Any, limit: int = CELL_CHARS) -> str:
    """A row's value as one line: text as it is, a conversation turn by turn, anything else as compact JSON."""
    from core.dataset_hub import jsonable

    text = value if isinstance(value, str) else _turns(value) or json.dumps(jsonable(value), ensure_ascii=False)
    text = text.replace("\r", " ").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


class DatasetHubDialog(QDialog):
    """Preview a Hub dataset from a prefix of one file, download it, and choose it for the run."""

    chosen = Signal(str)  # the data.path put into the run
    factsShown = Signal(str)  # repo id
    previewShown = Signal(int)  # rows shown
    previewFailed = Signal(str)  # the message
    previewCancelled = Signal()
    downloadFinished = Signal(int, str)  # exit code, path or message

    def __init__(self, session: Any, repo_id: str = "", parent: QWidget | None = None,
                 choose: Callable[[str], None] | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._choose = choose
        self.setWindowTitle("Hub dataset")
        self.setObjectName("DatasetHubDialog")
        self.resize(1120, 700)
        self.facts: Any = None
        self.preview: Any = None
        self.offline: str | None = None
        self.download_path: str | None = None
        self._download: Any = None
        self._download_repo: str | None = None
        self._download_events: list[dict] = []
        self._started = 0.0
        self._bytes = 0
        self._busy_what = ""

        self._jobs = JobChannel("hub-dataset", self)
        self._jobs.finished.connect(self._on_result)
        self._jobs.failed.connect(self._on_job_failed)
        self._jobs.progressed.connect(self._on_progress)
        self._ticker = QTimer(self)
        self._ticker.setInterval(100)
        self._ticker.timeout.connect(self._tick)

        # the id, split and row count -----------------------------------------------------------------------------
        self.id_edit = QLineEdit(repo_id)
        self.id_edit.setPlaceholderText("a Hub dataset id, e.g. HuggingFaceH4/no_robots")
        self.id_edit.returnPressed.connect(self.start_preview)
        self.split_combo = QComboBox()
        self.split_combo.addItem("train")
        self.split_combo.setToolTip("The split to preview; the run trains on the train split")
        self.split_combo.activated.connect(lambda _i: self.start_preview(keep_facts=True))
        self.rows_spin = QSpinBox()
        self.rows_spin.setRange(1, 1000)
        self.rows_spin.setValue(20)
        self.rows_spin.setToolTip("How many rows to read from the start of the split's first file")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setDefault(True)
        self.preview_button.clicked.connect(lambda: self.start_preview())
        top = QHBoxLayout()
        top.addWidget(QLabel("Dataset"))
        top.addWidget(self.id_edit, 1)
        top.addWidget(QLabel("Split"))
        top.addWidget(self.split_combo)
        top.addWidget(QLabel("Rows"))
        top.addWidget(self.rows_spin)
        top.addWidget(self.preview_button)

        self.banner = Banner()
        self.title = QLabel("Enter a dataset id and press Preview: its size, files and first rows are read without "
                            "downloading it.")
        self.title.setObjectName("datasetTitle")
        self.title.setWordWrap(True)
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.card = QLabel()
        self.card.setWordWrap(True)
        self.card.setStyleSheet("color: palette(placeholder-text);")
        self.card.hide()

        # busy line: indicator, elapsed time and bytes, Cancel ---------------------------------------------------
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setFixedWidth(120)
        self.busy_bar.setTextVisible(False)
        self.busy_bar.hide()
        self.status = QLabel()
        self.status.setObjectName("previewStatus")
        self.status.setWordWrap(True)
        self.cancel_preview_button = QPushButton("Cancel")
        self.cancel_preview_button.setToolTip("Stop reading; nothing is kept")
        self.cancel_preview_button.clicked.connect(self.cancel_preview)
        self.cancel_preview_button.hide()
        busy = QHBoxLayout()
        busy.addWidget(self.busy_bar)
        busy.addWidget(self.status, 1)
        busy.addWidget(self.cancel_preview_button)

        # files | format + rows ------------------------------------------------------------------------------------
        self.files_table = QTableWidget(0, 3)
        self.files_table.setObjectName("datasetFiles")
        self.files_table.setHorizontalHeaderLabels(["File", "Split", "Size"])
        self.files_table.verticalHeader().hide()
        self.files_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.files_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.files_table.setWordWrap(False)
        header = self.files_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.format_label = QLabel()
        self.format_label.setObjectName("detectedFormat")
        self.format_label.setWordWrap(True)
        self.format_label.setTextFormat(Qt.TextFormat.RichText)
        self.rows_table = QTableWidget(0, 0)
        self.rows_table.setObjectName("previewRows")
        self.rows_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rows_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.rows_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)  # one row's detail at a time
        self.rows_table.setWordWrap(False)
        self.rows_table.setAlternatingRowColors(True)
        self.rows_table.verticalHeader().setDefaultSectionSize(22)
        self.rows_table.horizontalHeader().setStretchLastSection(True)
        self.rows_table.itemSelectionChanged.connect(self._show_row)
        self.detail = QTextBrowser()
        self.detail.setObjectName("previewDetail")
        self.detail.setOpenLinks(False)
        self.detail.setPlaceholderText("Select a row to see it as the studio reads it")
        rows_split = QSplitter(Qt.Orientation.Vertical)
        rows_split.addWidget(self.rows_table)
        rows_split.addWidget(self.detail)
        rows_split.setStretchFactor(0, 3)
        rows_split.setStretchFactor(1, 2)
        rows_split.setSizes([330, 200])
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.format_label)
        rv.addWidget(rows_split, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.files_table)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        split.setSizes([300, 800])

        # download -------------------------------------------------------------------------------------------------
        self.download_button = QPushButton("Resume download")  # wide enough for every text it shows
        self.download_button.setMinimumWidth(self.download_button.sizeHint().width())
        self.download_button.setText("Download")
        self.download_button.setToolTip("Download every file of the dataset into the Hugging Face cache (resumable)")
        self.download_button.setEnabled(False)
        self.download_button.clicked.connect(self.start_download)
        self.cancel_download_button = QPushButton("Cancel download")
        self.cancel_download_button.setEnabled(False)
        self.cancel_download_button.clicked.connect(self.cancel_download)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress_label = QLabel()
        self.progress_label.setObjectName("downloadStatus")
        self.progress_label.setWordWrap(True)
        self.progress_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # paths to copy
        self.progress_label.setMinimumHeight(2 * self.progress_label.fontMetrics().lineSpacing() + 4)
        download = QHBoxLayout()
        download.addWidget(self.download_button)
        download.addWidget(self.cancel_download_button)
        download.addWidget(self.progress, 1)

        buttons = QDialogButtonBox()
        self.use_button = buttons.addButton("Use this dataset", QDialogButtonBox.ButtonRole.AcceptRole)
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_dataset)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        close.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.banner)
        layout.addWidget(self.title)
        layout.addWidget(self.card)
        layout.addLayout(busy)
        layout.addWidget(split, 1)
        layout.addLayout(download)
        layout.addWidget(self.progress_label)
        layout.addWidget(buttons)
        self._check_offline()

    # -- preview --------------------------------------------------------------------------------------------------
    @property
    def repo_id(self) -> str:
        return self.id_edit.text().strip()

    @property
    def busy(self) -> bool:
        return self._ticker.isActive()

    def _check_offline(self) -> None:
        from core.model_hub import offline_reason

        self.set_offline(offline_reason())

    def set_offline(self, reason: str | None, retry: bool = False) -> None:
        """``reason``: why the Hub cannot be read (offline mode, or unreachable: then ``retry`` keeps Preview on)."""
        self.offline = reason
        self.preview_button.setEnabled(reason is None or retry)
        self.download_button.setEnabled(reason is None and self.facts is not None and self._download is None)
        if reason:
            again = " Preview tries again." if retry else ""
            self.banner.show_message(
                "warning", f"{reason[0].upper()}{reason[1:]}. The Hub cannot be read now: no preview and no download."
                f"{again} Datasets on this machine open as usual with Open file… on the Data page.", "Offline:")

    def open_for(self, repo_id: str) -> None:
        """Show the dialog for ``repo_id`` and preview it (again when it is another dataset)."""
        self.show()
        self.raise_()
        self.activateWindow()
        if repo_id and (repo_id != self.repo_id or self.facts is None):
            self.id_edit.setText(repo_id)
            self.start_preview()

    def start_preview(self, keep_facts: bool = False) -> bool:
        """Read the facts (unless ``keep_facts``: another split of the same dataset), then the first rows, on the
        worker thread. False when there is nothing to read or the Hub is off."""
        from core.dataset_hub import HubError, PreviewCancelled, dataset_facts, preview_dataset

        self._check_offline()
        repo = self.repo_id
        if not repo or self.offline:
            return False
        facts = self.facts if keep_facts and self.facts is not None and self.facts.repo_id == repo else None
        split = self.split_combo.currentText() or "train"
        rows = self.rows_spin.value()
        if facts is None:
            self.split_combo.clear()
            self.split_combo.addItem("train")
            split = "train"

        def job(progress: Callable[[int, int], None]) -> Any:
            found = facts
            try:
                found = found or dataset_facts(repo)
                chosen = split if split in found.splits or not found.splits else next(iter(found.splits))
                return "preview", preview_dataset(repo, facts=found, split=chosen, rows=rows, progress=progress)
            except PreviewCancelled:
                raise Superseded() from None
            except HubError as exc:  # a sentence for the user, never a traceback; the facts when they were read
                return "error", (exc, found)

        self.banner.clear()
        if facts is None:
            self._clear_results()
            self.title.setText(f"<b>{html.escape(repo)}</b> · asking the Hub…")
        self._set_busy(True, f"Reading the first rows of {html.escape(repo)}")
        self._jobs.submit(job)
        return True

    def cancel_preview(self) -> None:
        if not self.busy:
            return
        self._jobs.cancel()
        self._set_busy(False)
        self.status.setText(f"Cancelled after {time.monotonic() - self._started:.1f} s "
                            f"({human_size(self._bytes)} read); Preview starts again.")
        self.previewCancelled.emit()

    def _set_busy(self, busy: bool, what: str = "") -> None:
        self._busy_what = what
        self.busy_bar.setVisible(busy)
        self.cancel_preview_button.setVisible(busy)
        self.preview_button.setEnabled(not busy and self.offline is None)
        if busy:
            self._started = time.monotonic()
            self._bytes = 0
            self._ticker.start()
            self._tick()
        else:
            self._ticker.stop()

    def _tick(self) -> None:
        elapsed = time.monotonic() - self._started
        read = f" · {human_size(self._bytes)} read" if self._bytes else ""
        self.status.setText(f"{self._busy_what}… {elapsed:.1f} s{read}")

    def _on_progress(self, done: int, _total: int) -> None:
        self._bytes = done

    def _clear_results(self) -> None:
        self.facts = self.preview = None
        self.files_table.setRowCount(0)
        self.rows_table.clear()
        self.rows_table.setRowCount(0)
        self.rows_table.setColumnCount(0)
        self.detail.clear()
        self.format_label.clear()
        self.card.hide()
        self.download_button.setEnabled(False)
        self.use_button.setEnabled(False)

    def _on_job_failed(self, message: str, _exc: object) -> None:
        self._set_busy(False)
        self.status.setText("")
        self.banner.show_message("error", message, "Preview failed:")
        self.previewFailed.emit(message)

    def _on_result(self, result: tuple[str, Any]) -> None:
        kind, value = result
        self._set_busy(False)
        if kind == "error":
            exc, facts = value
            if facts is not None:  # the repository is there (gated, or no file to preview): its size and files
                self._show_facts(facts)
            self._show_error(exc)
            return
        self._show_facts(value.facts)
        self._show_preview(value)

    def _show_error(self, exc: Any) -> None:
        message = str(exc)
        self.status.setText("")
        if getattr(exc, "kind", "") in ("offline", "network"):
            self.set_offline(message, retry=exc.kind == "network")
            self.title.setText(f"<b>{html.escape(self.repo_id)}</b>")
        else:
            titles = {"gated": "Gated dataset:", "not_found": "Not found:", "unsupported": "Cannot preview:",
                      "auth": "Access refused:"}
            self.banner.show_message("error", message, titles.get(exc.kind, "Preview failed:"))
            if self.facts is None:
                self.title.setText(f"<b>{html.escape(self.repo_id)}</b>")
        self.previewFailed.emit(message)

    def _show_facts(self, facts: Any) -> None:
        new = self.facts is None or self.facts.repo_id != facts.repo_id
        self.facts = facts
        n = len(facts.files)
        parts = [f"{human_size(facts.total_size)} in {n} file{'s' if n != 1 else ''}"]
        if facts.license:
            parts.append(f"licence {html.escape(facts.license)}")
        if facts.configs and len(facts.configs) > 1:
            parts.append(f"config {html.escape(facts.config or '')} of {len(facts.configs)}")
        if facts.sha:
            parts.append(f"commit {facts.sha[:8]}")
        if facts.gated:
            parts.append("<span style='color:#d9534f'>gated: accept its conditions on the Hub, then "
                         "<code>hf auth login</code></span>")
        if facts.cached_path:
            parts.append(f"<span style='color:{'#7ee2a8' if is_dark() else '#1f7a3a'}'>already downloaded</span>")
        self.title.setText(f"<b>{html.escape(facts.repo_id)}</b> · " + " · ".join(parts))
        lines = [x.strip().lstrip("#").strip() for x in (facts.card or "").splitlines() if x.strip()][:3]
        self.card.setText(" · ".join(x for x in lines if x)[:300])
        self.card.setVisible(bool(lines))
        if new or self.split_combo.count() != len(facts.splits):
            self.split_combo.clear()
            self.split_combo.addItems(list(facts.splits) or ["train"])
        self.files_table.setRowCount(0)
        split_of = {p: s for s, paths in facts.splits.items() for p in paths}
        for f in sorted(facts.files, key=lambda f: (split_of.get(f.path) is None, split_of.get(f.path) or "", f.path)):
            row = self.files_table.rowCount()
            self.files_table.insertRow(row)
            name = QTableWidgetItem(f.path)
            name.setToolTip(f.path)
            self.files_table.setItem(row, 0, name)
            self.files_table.setItem(row, 1, QTableWidgetItem(split_of.get(f.path) or ""))
            size = QTableWidgetItem(human_size(f.size))
            size.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            self.files_table.setItem(row, 2, size)
        self.files_table.resizeRowsToContents()
        self.download_button.setEnabled(self._download is None and self.offline is None)
        self.download_button.setText("Download again" if facts.cached_path else "Download")
        self.use_button.setEnabled(True)
        self.factsShown.emit(facts.repo_id)

    def _show_preview(self, preview: Any) -> None:
        self.preview = preview
        self.split_combo.setCurrentText(preview.split)
        bold = QFont()
        bold.setBold(True)
        for row in range(self.files_table.rowCount()):
            item = self.files_table.item(row, 0)
            item.setFont(bold if item.text() == preview.file else QFont())
        dark = is_dark()
        bad = "#ff7b72" if dark else "#c62828"
        if preview.format:
            mapped = ", ".join(f"{role} ← {column}" for role, column in preview.format_columns.items() if role != column)
            extra = f" · columns: {html.escape(mapped)}" if mapped else ""
            self.format_label.setText(f"Detected format: <b>{html.escape(preview.format)}</b> — "
                                      f"{html.escape(preview.format_reason)}{extra}")
        elif preview.format_error:
            self.format_label.setText(f"<span style='color:{bad}'>The studio does not recognise the format of these "
                                      f"rows: {html.escape(preview.format_error)}</span> Set the format or map the "
                                      "columns on the Data page after choosing it.")
        else:
            self.format_label.setText("<i>No rows to detect a format from.</i>")
        self._fill_rows(preview)
        shown = len(preview.rows)
        facts = []
        if preview.total_rows is not None:
            groups = preview.row_groups or 0
            facts.append(f"{preview.total_rows:,} rows in {groups} row group{'s' if groups != 1 else ''}")
        share = f" ({100 * preview.read_fraction:.1f}%)" if preview.read_fraction is not None else ""
        where = f"{preview.file} ({', '.join([preview.kind, *facts])})"
        status = (f"First {shown} row{'s' if shown != 1 else ''} of {html.escape(where)} · read "
                  f"{human_size(preview.bytes_read)} of {human_size(preview.file_size)}{share} in {preview.elapsed:.1f} s")
        if preview.note:
            status += f" · <span style='color:{bad}'>{html.escape(preview.note)}</span>"
        if preview.problems:
            status += f" · <span style='color:{bad}'>{html.escape(preview.problems[0])}</span>"
        self.status.setText(status)
        self.previewShown.emit(shown)

    def _fill_rows(self, preview: Any) -> None:
        table = self.rows_table
        columns = list(preview.columns) or ["row"]
        table.clear()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(preview.rows))
        bad = QColor("#ff7b72" if is_dark() else "#c62828")
        labels = []
        for r, row in enumerate(preview.rows):
            line = preview.lines[r] if r < len(preview.lines) else None
            labels.append(f"line {line}" if line else str(r))
            if row is None:
                item = QTableWidgetItem("unreadable: " + next((p for p in preview.problems if p.startswith(
                    f"line {line}:")), "not a JSON object"))
                item.setForeground(bad)
                table.setItem(r, 0, item)
                continue
            for c, column in enumerate(columns):
                value = row.get(column)
                item = QTableWidgetItem(cell_text(value) if column in row else "")
                item.setToolTip(cell_text(value, TIP_CHARS) if column in row else "(no value)")
                table.setItem(r, c, item)
        table.setVerticalHeaderLabels(labels)
        table.resizeColumnsToContents()
        header = table.horizontalHeader()
        for c in range(len(columns)):
            header.resizeSection(c, max(60, min(header.sectionSize(c), 380)))
        self.detail.clear()
        if preview.rows:
            table.selectRow(0)

    def _show_row(self) -> None:
        """The selected row as the studio reads it: the normalised example, rendered as on the Data page."""
        from app.views.conversation import conversation_html

        preview = self.preview
        rows = self.rows_table.selectionModel().selectedRows()
        if preview is None or not rows:
            self.detail.clear()
            return
        r = rows[0].row()
        line = preview.lines[r] if r < len(preview.lines) else None
        bad = "#ff7b72" if is_dark() else "#c62828"
        notes = [p for p in preview.problems if p.startswith((f"row {r}:", f"line {line}:" if line else "\0"))]
        head = "".join(f"<div style='color:{bad}'>● {html.escape(p)}</div>" for p in notes)
        if r < len(preview.examples):
            body = conversation_html(preview.examples[r], [], r)
            where = f" (line {line})" if line else ""
            body = body.replace(f"Row {r}</h3>", f"Row {r}{where}, as the studio reads it</h3>", 1)
        else:
            value = preview.rows[r]
            body = (f"<h3 style='margin:0 0 6px 0'>Row {r}</h3><pre style='white-space:pre-wrap'>"
                    f"{html.escape(json.dumps(value, ensure_ascii=False, indent=1, default=str)[:TIP_CHARS * 4])}</pre>")
        self.detail.setHtml(head + body)

    # -- download -------------------------------------------------------------------------------------------------
    @property
    def downloading(self) -> bool:
        return self._download is not None

    def start_download(self) -> bool:
        """Download the dataset in a child; progress arrives as events. False when one is running."""
        from app.workers.chat_client import StudioChild, studio_child_command

        repo = self.facts.repo_id if self.facts is not None else self.repo_id
        if not repo or self._download is not None or self.offline:
            return False
        self._download_repo = repo
        self._download_events = []
        self.download_path = None
        job = StudioChild(studio_child_command("download", repo, "--dataset", "--progress-json"), self)
        job.eventReceived.connect(self._on_download_event)
        job.finished.connect(lambda code, j=job: self._on_download_finished(j, code))
        self._download = job
        self.download_button.setEnabled(False)
        self.cancel_download_button.setEnabled(True)
        self.progress.setRange(0, 0)  # until the first report
        self.progress_label.setText(f"Downloading {repo}: asking the Hub for the files…")
        job.start()
        return True

    def _on_download_event(self, event: dict) -> None:
        self._download_events.append(event)
        if event.get("type") == "progress":
            show_download_progress(self.progress, self.progress_label, self._download_repo or "", event)

    def cancel_download(self) -> None:
        """Stop the download child (SIGTERM: it keeps what arrived and exits 130; killed after 5 s if stuck)."""
        job = self._download
        if job is None:
            return
        self.cancel_download_button.setEnabled(False)
        self.progress_label.setText(self.progress_label.text() + " · cancelling…")
        stop_download(job, lambda: job is self._download)

    def _on_download_finished(self, job: Any, code: int) -> None:
        if job is not self._download:
            return
        self._download = None
        repo = self._download_repo or ""
        outcome = DownloadOutcome.of(self._download_events, code)
        self.cancel_download_button.setEnabled(False)
        self.download_button.setEnabled(self.offline is None)
        self.progress.setRange(0, 1000)
        if outcome.succeeded:
            self.download_path = str(outcome.done.get("path"))
            self.progress.setValue(1000)
            self.progress.setFormat("100%")
            spec = self.run_path()
            message = self.download_path
            self.download_button.setText("Download again")
            where = "" if spec.startswith(self.download_path) else f" (files in {self.download_path})"
            self.progress_label.setText(f"Downloaded {repo}{where}. “Use this dataset” puts {spec} into the run.")
        else:
            message = outcome.message(job.tail(3), "Download continues from there.")
            if outcome.cancelled:
                self.download_button.setText("Resume download")
            self.progress_label.setText(message)
        job.deleteLater()
        self.downloadFinished.emit(code, message)

    # -- choosing -------------------------------------------------------------------------------------------------
    def run_path(self) -> str:
        """What “Use this dataset” puts into ``data.path``: the downloaded file when the train split is one file the
        studio reads directly, else the Hub id."""
        from core.dataset_hub import dataset_path_for_run

        facts = self.facts
        repo = facts.repo_id if facts is not None else self.repo_id
        snapshot = self.download_path if self._download_repo == repo else None
        snapshot = snapshot or (facts.cached_path if facts is not None else None)
        files = (facts.splits.get("train") or []) if facts is not None else []
        return dataset_path_for_run(repo, files, snapshot)

    def use_dataset(self) -> None:
        spec = self.run_path()
        if not spec:
            return
        if self._choose is not None:
            self._choose(spec)
        else:
            self.session.update_config(data__path=spec, data__format="auto", data__columns={})
        self.chosen.emit(spec)
        self.accept()

    # -- closing --------------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the child and the thread (the app is closing). A running download is stopped; it resumes later."""
        if self._download is not None:
            self._download.kill()
            self._download.wait(3000)
            self._download = None
        self._ticker.stop()
        self._jobs.shutdown(3000)

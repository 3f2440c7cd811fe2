"""The model library dialog (opened by Library… beside the model field): models on this machine with their size and
fit for *this* run, and the Hugging Face Hub with search, the card's first lines, files and a download with a real
progress bar, Cancel and Resume.

Where the work happens, so that the window never blocks and its process never imports torch:

* the local list (:func:`core.model_library.list_models`: small files only, cached) on a :class:`JobChannel` thread;
* the fit badges in a child, ``sft-studio models --json --config <this run>``: one JSON line per model as each
  estimate is ready (the same estimate as the fit check on the Hyperparameters page);
* Hub search and details on :class:`JobChannel` threads (network only);
* a download in a child, ``sft-studio download ID --progress-json``: marked progress events; Cancel sends SIGTERM
  (the child stops at the next chunk and keeps the bytes, exit 130), Resume starts the same command again.

Choosing a model sets ``model.name_or_path`` through the page (``choose``), so the template check, the token view
and the fit check re-run as after any edit.
"""

from __future__ import annotations

import copy
import html
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.views.download_progress import DownloadOutcome, show_download_progress, stop_download
from app.views.style import Banner, is_dark
from app.workers.jobs import JobChannel
from core.model_library import (
    SOURCE_LABELS,
    ModelEntry,
    fit_label,
    human_params,
    human_size,
    template_label,
)

GiB = 2**30
FIT_COLORS = {  # verdict -> (light, dark) background of the badge
    "fits": ("#d4edda", "#1f4d2b"),
    "tight": ("#fff3cd", "#4a3d12"),
    "won't fit": ("#f8d7da", "#5a2327"),
}
TEMPLATE_HELP = {
    "generation": "the template marks assistant turns with {% generation %}: assistant tokens are exact",
    "trl-patch": "TRL ships a training version of this template: assistant tokens are found exactly as TRL does",
    "render-diff": "assistant turns are found by rendering each turn; checked on every row (rows that fail are "
                   "named, never trained wrongly)",
}


class LibraryTableModel(QAbstractTableModel):
    """The local models; the fit column fills in as the child reports."""

    COLUMNS = ("Source", "Model", "Size", "Params", "Quant", "Context", "Template", "Fit for this run")
    FIT_COLUMN = 7

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.entries: list[ModelEntry] = []
        self.fit_pending = False
        self.current_spec: str | None = None

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def set_entries(self, entries: list[ModelEntry]) -> None:
        old = {e.spec: e.fit for e in self.entries if e.fit}
        self.beginResetModel()
        self.entries = list(entries)
        for entry in self.entries:  # keep the badges of the last estimate until the new one arrives
            if entry.fit is None and entry.spec in old:
                entry.fit = old[entry.spec]
        self.endResetModel()

    def merge(self, data: dict[str, Any]) -> None:
        """A model from the fit child (``ModelEntry.as_dict``): update its badge, or add it."""
        spec = data.get("spec")
        for row, entry in enumerate(self.entries):
            if entry.spec == spec:
                entry.fit = data.get("fit")
                if entry.params is None and data.get("params"):
                    entry.params = data["params"]
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))
                return
        known = {f: data.get(f) for f in ModelEntry.__dataclass_fields__}
        self.beginInsertRows(QModelIndex(), len(self.entries), len(self.entries))
        self.entries.append(ModelEntry(**known))
        self.endInsertRows()

    def set_fit_pending(self, pending: bool) -> None:
        self.fit_pending = pending
        if self.entries:
            self.dataChanged.emit(self.index(0, self.FIT_COLUMN), self.index(len(self.entries) - 1, self.FIT_COLUMN))

    def entry(self, row: int) -> ModelEntry:
        return self.entries[row]

    def _text(self, e: ModelEntry, column: int) -> str:
        if column == 0:
            return SOURCE_LABELS.get(e.source, e.source)
        if column == 1:
            return e.name
        if column == 2:
            return human_size(e.size)
        if column == 3:
            return human_params(e.params)
        if column == 4:
            return e.dtype or "–"
        if column == 5:
            return f"{e.context_length:,}" if e.context_length else "–"
        if column == 6:
            return template_label(e)
        if e.note:
            return e.note
        if e.fit is None:
            return "checking…" if self.fit_pending and e.path else "–"
        return fit_label(e.fit).replace(" (", " · ").rstrip(")")

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        e, column = self.entries[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(e, column)
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return [e.source, e.name.lower(), e.size or 0, e.params or 0, e.dtype or "", e.context_length or 0,
                    template_label(e), (e.fit or {}).get("peak") or 0][column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return entry_tooltip(e)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (2, 3, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.BackgroundRole and column == self.FIT_COLUMN and e.fit and not e.note:
            colors = FIT_COLORS.get(str(e.fit.get("verdict")))
            return QColor(colors[is_dark()]) if colors else None
        if role == Qt.ItemDataRole.ForegroundRole and (e.note or (column == self.FIT_COLUMN and e.fit is None)):
            return QColor("#8a8d91")
        if role == Qt.ItemDataRole.FontRole and e.spec == self.current_spec:
            font = QFont()
            font.setBold(True)
            return font
        return None


def entry_tooltip(e: ModelEntry) -> str:
    lines = [f"<b>{html.escape(e.name)}</b>", f"model.name_or_path: <code>{html.escape(e.spec)}</code>"]
    if e.path and e.path != e.spec:
        lines.append(f"on disk: {html.escape(e.path)}")
    if e.architecture:
        lines.append(f"architecture: {html.escape(e.architecture)}")
    if e.license:
        lines.append(f"licence: {html.escape(e.license)}" + (" (gated on the Hub)" if e.gated else ""))
    if e.assistant_tokens:
        lines.append(f"template: {html.escape(TEMPLATE_HELP.get(e.assistant_tokens, e.assistant_tokens))}")
    elif e.chat_template is False:
        lines.append("no chat template: set model.chat_template to a built-in (chatml, llama3, …) for conversations")
    if e.fit:
        lines.append(html.escape(e.fit.get("summary") or e.fit.get("error") or ""))
    if e.note:
        lines.append(f"<i>{html.escape(e.note)}</i>")
    return "<br>".join(lines)


class _FilterProxy(QSortFilterProxyModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_text(self, text: str) -> None:
        self.text = text
        self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802
        if not self.text.strip():
            return True
        return self.sourceModel().entry(row).matches(self.text)


class ModelLibraryDialog(QDialog):
    """Choose a model: local models with fit badges, and Hub search + download."""

    chosen = Signal(str)  # the spec put into model.name_or_path
    listed = Signal(int)  # local models listed
    fitsChecked = Signal(int)  # the fit child ended (exit code)
    hubSearched = Signal(int)  # results
    detailsShown = Signal(str)
    downloadFinished = Signal(int, str)  # exit code, path or message

    def __init__(self, session: Any, parent: QWidget | None = None,
                 choose: Callable[[str], None] | None = None, check_fit: bool = True) -> None:
        super().__init__(parent)
        self.session = session
        self._choose = choose
        self.check_fit = check_fit  # False: no fit children (tests that look at other things)
        self.setWindowTitle("Model library")
        self.setObjectName("ModelLibraryDialog")
        self.resize(1180, 680)
        self.choose_path: Callable[[str], str | None] | None = None  # tests: instead of the file dialogs
        self._tmp = tempfile.TemporaryDirectory(prefix="sft-studio-library-")
        self._fit_job: Any = None
        self._download: Any = None
        self._download_repo: str | None = None
        self._download_events: list[dict] = []
        self.download_path: str | None = None
        self.hub_offline: str | None = None
        self.details: Any = None

        self._list_jobs = JobChannel("library", self)
        self._list_jobs.finished.connect(self._on_listed)
        self._list_jobs.failed.connect(lambda m, _e: self.status.setText(f"Could not list models: {m}"))
        self._hub_jobs = JobChannel("hub", self)
        self._hub_jobs.finished.connect(self._on_hub_result)
        self._hub_jobs.failed.connect(self._on_hub_failed)
        self._details_jobs = JobChannel("hub-details", self)
        self._details_jobs.finished.connect(self._on_details)
        self._details_jobs.failed.connect(self._on_hub_failed)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_local(), "On this machine")
        self.tabs.addTab(self._build_hub(), "Hugging Face Hub")
        self.tabs.currentChanged.connect(self._on_tab)
        buttons = QDialogButtonBox()
        self.use_button = buttons.addButton("Use this model", QDialogButtonBox.ButtonRole.AcceptRole)
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_selected)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        close.clicked.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(buttons)

    # -- local tab ----------------------------------------------------------------------------------------------
    def _build_local(self) -> QWidget:
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by name, source, architecture, quantisation, licence…")
        self.filter_edit.setClearButtonEnabled(True)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip("A model folder (config.json + weights) or a folder of models/.gguf files")
        self.add_folder_button.clicked.connect(lambda: self.add_location("dir"))
        self.add_gguf_button = QPushButton("Add GGUF file…")
        self.add_gguf_button.clicked.connect(lambda: self.add_location("gguf"))
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.add_folder_button)
        top.addWidget(self.add_gguf_button)
        top.addWidget(self.refresh_button)

        self.model = LibraryTableModel(self)
        self.proxy = _FilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit.textChanged.connect(self.proxy.set_text)
        self.table = QTableView()
        self.table.setObjectName("libraryTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(self._on_local_selected)
        self.table.doubleClicked.connect(lambda _i: self.use_selected())

        self.status = QLabel("Listing models…")
        self.status.setWordWrap(True)
        self.empty_label = QLabel()
        self.empty_label.setWordWrap(True)
        self.empty_label.hide()
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail.setMinimumHeight(54)
        self.detail.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.resume_local_button = QPushButton("Resume download")
        self.resume_local_button.hide()
        self.resume_local_button.clicked.connect(self._resume_selected_partial)
        bottom = QHBoxLayout()
        bottom.addWidget(self.detail, 1)
        bottom.addWidget(self.resume_local_button, 0, Qt.AlignmentFlag.AlignTop)

        page = QWidget()
        v = QVBoxLayout(page)
        v.addLayout(top)
        v.addWidget(self.status)
        v.addWidget(self.empty_label)
        v.addWidget(self.table, 1)
        v.addLayout(bottom)
        return page

    def open_library(self) -> None:
        """Show the dialog and (re)list the models with fit badges for the current run."""
        self.model.current_spec = self.session.config.model.name_or_path
        self.show()
        self.raise_()
        self.activateWindow()
        self.refresh()

    def refresh(self) -> None:
        from core.model_library import list_models

        self.status.setText("Listing models…")
        self._list_jobs.submit(lambda _progress: list_models())

    def _on_listed(self, entries: list[ModelEntry]) -> None:
        self.model.set_entries(entries)
        self.table.resizeColumnsToContents()
        self._select_current()
        self._show_empty(all(e.source == "bundled" for e in entries))
        self.status.setText(f"{len(entries)} model{'s' if len(entries) != 1 else ''} on this machine"
                            + (" · checking which fit this run…" if self.check_fit else ""))
        self.listed.emit(len(entries))
        if self.check_fit:
            self.check_fits()

    def _show_empty(self, empty: bool) -> None:
        from core.model_library import hf_hub_cache_dir

        self.empty_label.setVisible(empty)
        if empty:
            self.empty_label.setText(
                "<i>Nothing else on this machine yet: the Hugging Face cache "
                f"(<code>{html.escape(str(hf_hub_cache_dir()))}</code>), LM Studio's and Ollama's model folders are "
                "empty or absent. Download a model on the <b>Hugging Face Hub</b> tab, or add a model folder or a "
                ".gguf file.</i>")

    def _select_current(self) -> None:
        for row, entry in enumerate(self.model.entries):
            if entry.spec == self.model.current_spec:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                if index.isValid():
                    self.table.selectRow(index.row())
                    self.table.scrollTo(index)
                return

    def check_fits(self) -> None:
        """Run ``sft-studio models --json --config <this run>`` for the badges (the child imports torch, not us)."""
        from app.workers.chat_client import StudioChild, studio_child_command
        from core.config import save_run_config

        if self._fit_job is not None:
            job, self._fit_job = self._fit_job, None
            job.finished.disconnect()
            job.kill()
            job.wait(2000)
            job.deleteLater()
        path = Path(self._tmp.name) / "library-run.yaml"
        try:
            save_run_config(self.session.config, path)
        except OSError as exc:
            self.status.setText(f"Cannot check the fit: {exc}")
            return
        job = StudioChild(studio_child_command("models", "--json", "--config", str(path)), self)
        job.lineReceived.connect(self._on_fit_line)
        job.finished.connect(lambda code, j=job: self._on_fit_finished(j, code))
        self._fit_job = job
        self.model.set_fit_pending(True)
        job.start()

    def _on_fit_line(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            data = json.loads(line)
        except ValueError:
            return
        if isinstance(data, dict) and "spec" in data and "source" in data:
            self.model.merge(data)
            fit = data.get("fit") or {}
            if fit.get("device"):
                self._device = fit["device"]
            self._on_local_selected()

    def _on_fit_finished(self, job: Any, code: int) -> None:
        if job is not self._fit_job:
            return
        self._fit_job = None
        self.model.set_fit_pending(False)
        n = len(self.model.entries)
        cfg = self.session.config
        run = (f"batch {cfg.training.per_device_train_batch_size} × {cfg.data.max_length} tokens, "
               f"{'QLoRA' if cfg.model.load_in_4bit else 'LoRA' if cfg.lora.enabled else 'full fine-tune'}")
        where = f" on {self._device}" if getattr(self, "_device", None) else ""
        if code == 0:
            self.status.setText(f"{n} model{'s' if n != 1 else ''} on this machine · fit for this run ({run}){where}; "
                                "hover a badge for the estimated peak")
        else:
            errors = [ln.removeprefix("error: ") for ln in job.stderr_tail if ln.startswith("error: ")]
            self.status.setText(f"{n} models · the fit check failed: {errors[-1] if errors else job.tail(2)}")
        job.deleteLater()
        self.fitsChecked.emit(code)

    def selected_entry(self) -> ModelEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.entry(self.proxy.mapToSource(rows[0]).row())

    def _on_local_selected(self, *_args: Any) -> None:
        if self.tabs.currentIndex() != 0:
            return
        entry = self.selected_entry()
        partial = bool(entry and entry.extra.get("partial"))
        self.resume_local_button.setVisible(partial)
        self.use_button.setEnabled(bool(entry) and not partial and (entry.path is not None or "/" in entry.spec))
        self.detail.setText(entry_tooltip(entry) if entry else "")

    def _resume_selected_partial(self) -> None:
        entry = self.selected_entry()
        if entry and entry.extra.get("repo_id"):
            self.tabs.setCurrentIndex(1)
            self.hub_search.setText(entry.extra["repo_id"])
            self.start_download(entry.extra["repo_id"])

    def add_location(self, mode: str) -> None:
        from core.model_library import add_location

        if self.choose_path is not None:
            path = self.choose_path(mode)
        elif mode == "dir":
            path = QFileDialog.getExistingDirectory(self, "Add a model folder or a folder of models")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Add a GGUF file", "", "GGUF models (*.gguf)")
        if not path:
            return
        try:
            add_location(path)
        except (OSError, ValueError) as exc:
            self.status.setText(str(exc))
            return
        self.refresh()

    def use_selected(self) -> None:
        if self.tabs.currentIndex() == 1:
            spec = self.download_path and self._download_repo
            if not spec and self.details is not None and self.details.cached_path:
                spec = self.details.repo_id
        else:
            entry = self.selected_entry()
            spec = entry.spec if entry else None
        if spec:
            self.choose(spec)

    def choose(self, spec: str) -> None:
        """Put ``spec`` into the run's ``model.name_or_path`` (the page re-checks template, tokens and fit)."""
        from core.model_library import remember_model

        remember_model(spec)
        if self._choose is not None:
            self._choose(spec)
        else:
            self.session.update_config(model__name_or_path=spec)
        self.model.current_spec = spec
        self.chosen.emit(spec)
        self.accept()

    # -- hub tab ------------------------------------------------------------------------------------------------
    def _build_hub(self) -> QWidget:
        self.hub_banner = Banner()
        self.hub_search = QLineEdit()
        self.hub_search.setPlaceholderText("Search the Hub for text-generation models, e.g. SmolLM2, Qwen2.5 0.5B…")
        self.hub_search.returnPressed.connect(self.search)
        self.size_combo = QComboBox()
        from core.model_hub import SIZE_FILTERS

        self.size_combo.addItems(list(SIZE_FILTERS))
        self.size_combo.setToolTip("Parameter count (from the Hub's safetensors metadata)")
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        row = QHBoxLayout()
        row.addWidget(self.hub_search, 1)
        row.addWidget(self.size_combo)
        row.addWidget(self.search_button)

        self.results = QTableWidget(0, 6)
        self.results.setObjectName("hubResults")
        self.results.setHorizontalHeaderLabels(["Model", "Downloads", "Likes", "Params", "Licence", "Gated"])
        self.results.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.results.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.results.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.verticalHeader().hide()
        self.results.setWordWrap(False)
        header = self.results.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.results.itemSelectionChanged.connect(self._on_result_selected)

        self.details_title = QLabel("Select a model to see its card and files.")
        self.details_title.setWordWrap(True)
        self.details_title.setTextFormat(Qt.TextFormat.RichText)
        self.hub_fit_label = QLabel()
        self.hub_fit_label.setObjectName("hubFit")
        self.hub_fit_label.setWordWrap(True)
        self.hub_fit_label.setTextFormat(Qt.TextFormat.RichText)
        self._hub_fit_job: Any = None
        self.hub_fit: dict | None = None
        self.card_view = QPlainTextEdit()
        self.card_view.setReadOnly(True)
        self.card_view.setMaximumHeight(150)
        self.files_table = QTableWidget(0, 2)
        self.files_table.setObjectName("hubFiles")
        self.files_table.setHorizontalHeaderLabels(["File", "Size"])
        self.files_table.verticalHeader().hide()
        self.files_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.files_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.download_button = QPushButton("Download")
        self.download_button.setEnabled(False)
        self.download_button.clicked.connect(lambda: self.start_download(self._selected_repo()))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_download)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setEnabled(False)
        self.resume_button.setToolTip("Continue the cancelled or interrupted download from the bytes already saved")
        self.resume_button.clicked.connect(lambda: self.start_download(self._download_repo))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        buttons.addWidget(self.progress, 1)
        details = QWidget()
        dv = QVBoxLayout(details)
        dv.setContentsMargins(0, 0, 0, 0)
        dv.addWidget(self.details_title)
        dv.addWidget(self.hub_fit_label)
        dv.addWidget(self.card_view)
        dv.addWidget(self.files_table, 1)
        dv.addLayout(buttons)
        dv.addWidget(self.progress_label)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.results)
        split.addWidget(details)
        split.setSizes([600, 560])
        page = QWidget()
        v = QVBoxLayout(page)
        v.addWidget(self.hub_banner)
        v.addLayout(row)
        v.addWidget(split, 1)
        return page

    def _on_tab(self, index: int) -> None:
        if index == 1 and self.hub_offline is None and not getattr(self, "_hub_checked", False):
            self.check_hub()
        self.use_button.setEnabled(False)
        if index == 0:
            self._on_local_selected()
        else:
            self._update_use_for_hub()

    def check_hub(self) -> None:
        """Is the Hub reachable? (on a thread: a blocked network takes seconds to say no)"""
        from core.model_hub import hub_status

        self._hub_checked = True
        self.hub_banner.show_message("info", "Checking whether the Hugging Face Hub can be reached…")
        self._hub_jobs.submit(lambda _p: ("status", hub_status()))

    def search(self) -> None:
        from core.model_hub import SIZE_FILTERS, search_models

        if self.hub_offline:
            return
        query, size = self.hub_search.text().strip(), SIZE_FILTERS.get(self.size_combo.currentText())
        self.hub_banner.show_message("info", f"Searching the Hub for “{query}”…" if query else "Most downloaded…")
        self._hub_jobs.submit(lambda _p: ("search", search_models(query, size=size)))

    def _on_hub_result(self, result: tuple[str, Any]) -> None:
        kind, value = result
        if kind == "status":
            self.set_hub_offline(value)
            return
        self.hub_banner.clear()
        self.results.setRowCount(0)
        for m in value:
            row = self.results.rowCount()
            self.results.insertRow(row)
            cells = [m.repo_id, f"{m.downloads:,}" if m.downloads is not None else "–",
                     f"{m.likes:,}" if m.likes is not None else "–", human_params(m.params), m.license or "–",
                     "gated" if m.gated else ""]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col in (1, 2, 3):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.results.setItem(row, col, item)
        if not value:
            self.hub_banner.show_message("info", "No text-generation model matches; try fewer words or another size.")
        self.hubSearched.emit(len(value))

    def set_hub_offline(self, reason: str | None) -> None:
        self.hub_offline = reason
        for w in (self.hub_search, self.search_button, self.size_combo):
            w.setEnabled(reason is None)
        if reason:
            self.hub_banner.show_message(
                "warning", f"{reason[0].upper()}{reason[1:]}. Hub search and downloads are off; the models on this "
                "machine are listed on the first tab and work as usual.", "Offline:")
        else:
            self.hub_banner.clear()
            if self.results.rowCount() == 0:
                self.search()

    def _on_hub_failed(self, message: str, exc: object) -> None:
        kind = getattr(exc, "kind", "")
        if kind in ("offline", "network"):
            self.set_hub_offline(message)
        else:
            self.hub_banner.show_message("error", message, "Hub:")

    def _selected_repo(self) -> str | None:
        rows = self.results.selectionModel().selectedRows()
        return self.results.item(rows[0].row(), 0).text() if rows else None

    def _on_result_selected(self) -> None:
        from core.model_hub import model_details

        repo = self._selected_repo()
        if not repo:
            return
        self.details_title.setText(f"<b>{html.escape(repo)}</b> · reading the card and files…")
        self.card_view.clear()
        self.files_table.setRowCount(0)
        self.download_button.setEnabled(False)
        self._details_jobs.submit(lambda _p: model_details(repo))

    def _on_details(self, details: Any) -> None:
        self.details = details
        facts = [human_size(details.total_size)]
        if details.params:
            facts.append(f"{human_params(details.params)} parameters")
        if details.architecture:
            facts.append(details.architecture)
        if details.license:
            facts.append(f"licence {details.license}")
        if details.gated:
            facts.append("<span style='color:#d9534f'>gated: accept its conditions on the Hub and log in with "
                         "<code>hf auth login</code></span>")
        if details.cached_path:
            facts.append("<span style='color:#1f7a3a'>already downloaded</span>")
        self.details_title.setText(f"<b>{html.escape(details.repo_id)}</b> · " + " · ".join(facts))
        self.card_view.setPlainText(details.card or "(no model card)")
        self.files_table.setRowCount(0)
        for f in sorted(details.files, key=lambda f: -(f.size or 0)):
            row = self.files_table.rowCount()
            self.files_table.insertRow(row)
            self.files_table.setItem(row, 0, QTableWidgetItem(f.path))
            size = QTableWidgetItem(human_size(f.size))
            size.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            self.files_table.setItem(row, 1, size)
        self.files_table.resizeColumnToContents(1)
        busy = self._download is not None
        self.download_button.setEnabled(not busy)
        self.download_button.setText("Download again" if details.cached_path else "Download")
        self._update_use_for_hub()
        if self.check_fit:
            self.check_hub_fit(details)
        self.detailsShown.emit(details.repo_id)

    def check_hub_fit(self, details: Any) -> None:
        """The fit check for this run with a Hub model, before downloading: its config.json alone is enough
        (``sft-studio probe`` in a child on a run file naming a folder that holds only that config)."""
        from app.workers.chat_client import StudioChild, studio_child_command
        from core.config import save_run_config

        if self._hub_fit_job is not None:
            job, self._hub_fit_job = self._hub_fit_job, None
            job.finished.disconnect()
            job.kill()
            job.deleteLater()
        self.hub_fit = None
        if not details.config or not details.config.get("model_type"):
            if details.extra.get("config_unreadable"):
                why = "its config.json needs access: accept the conditions and log in" if details.gated else (
                    "its config.json could not be read")
            elif details.config is None:
                why = "no config.json on the Hub, e.g. a GGUF repository"
            else:
                why = "its config.json names no model_type"
            self.hub_fit_label.setText(f"<i>Fit for this run: known once downloaded ({why})</i>")
            return
        safe = details.repo_id.replace("/", "--")
        folder = Path(self._tmp.name) / "hub-configs" / safe
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(details.config), encoding="utf-8")
        cfg = copy.deepcopy(self.session.config)
        cfg.model.name_or_path = str(folder)
        path = Path(self._tmp.name) / f"hub-fit-{safe}.yaml"
        try:
            save_run_config(cfg, path)
        except OSError:
            return
        self.hub_fit_label.setText("Fit for this run: checking…")
        job = StudioChild(studio_child_command("probe", "--config", str(path)), self)
        job.finished.connect(lambda code, j=job, repo=details.repo_id: self._on_hub_fit(j, code, repo))
        self._hub_fit_job = job
        job.start()

    def _on_hub_fit(self, job: Any, code: int, repo: str) -> None:
        if job is not self._hub_fit_job:
            return
        self._hub_fit_job = None
        try:
            result = json.loads("\n".join(job.stdout_lines))
            est = result.get("estimate") or {}
        except ValueError:
            est = {}
        if code != 0 or not est.get("total"):
            self.hub_fit_label.setText("<i>Fit for this run: unknown (the architecture could not be read)</i>")
        else:
            self.hub_fit = est
            verdict = str(est.get("verdict"))
            colors = FIT_COLORS.get(verdict)
            style = f"background:{colors[is_dark()]}; padding:2px 6px;" if colors else ""
            where = f" of {est['device_total'] / GiB:.1f} GiB" if est.get("device_total") else ""
            self.hub_fit_label.setText(
                f"Fit for this run: <span style='{style}'><b>{html.escape(verdict)}</b></span> · estimated peak "
                f"{est['total'] / GiB:.1f} GiB{where}")
            self.hub_fit_label.setToolTip("The fit check of the Hyperparameters page for this run with this model, "
                                          "from its config.json alone, before downloading")
        job.deleteLater()

    def _update_use_for_hub(self) -> None:
        if self.tabs.currentIndex() != 1:
            return
        done = bool(self.download_path and self._download_repo)
        self.use_button.setEnabled(done or bool(self.details is not None and self.details.cached_path))

    # -- download -----------------------------------------------------------------------------------------------
    @property
    def downloading(self) -> bool:
        return self._download is not None

    def start_download(self, repo_id: str | None) -> bool:
        """Download ``repo_id`` in a child; progress arrives as events. False when one is running."""
        from app.workers.chat_client import StudioChild, studio_child_command

        if not repo_id or self._download is not None:
            return False
        self._download_repo = repo_id
        self._download_events = []
        self.download_path = None
        job = StudioChild(studio_child_command("download", repo_id, "--progress-json"), self)
        job.eventReceived.connect(self._on_download_event)
        job.finished.connect(lambda code, j=job: self._on_download_finished(j, code))
        self._download = job
        for button, on in ((self.download_button, False), (self.cancel_button, True), (self.resume_button, False)):
            button.setEnabled(on)
        self.progress.setRange(0, 0)  # until the first report
        self.progress_label.setText(f"Downloading {repo_id}: asking the Hub for the files…")
        job.start()
        return True

    def _on_download_event(self, event: dict) -> None:
        self._download_events.append(event)
        if event.get("type") == "progress":
            show_download_progress(self.progress, self.progress_label, self._download_repo or "", event)

    def cancel_download(self) -> None:
        """Stop the download child (SIGTERM: it saves what arrived and exits 130; killed after 5 s if stuck)."""
        job = self._download
        if job is None:
            return
        self.cancel_button.setEnabled(False)
        self.progress_label.setText(self.progress_label.text() + " · cancelling…")
        stop_download(job, lambda: job is self._download)

    def _on_download_finished(self, job: Any, code: int) -> None:
        if job is not self._download:
            return
        self._download = None
        repo = self._download_repo or ""
        outcome = DownloadOutcome.of(self._download_events, code)
        self.cancel_button.setEnabled(False)
        # after a cancel, Resume is the one way on for this repository (Download would resume too, but says less)
        self.download_button.setEnabled(self._selected_repo() not in (None, repo) or code == 0)
        self.progress.setRange(0, 1000)
        if outcome.succeeded:
            self.download_path = str(outcome.done.get("path"))
            self.progress.setValue(1000)
            self.progress.setFormat("100%")
            self.progress_label.setText(f"Downloaded {repo} to {self.download_path}. “Use this model” puts it into "
                                        "the run.")
            self.resume_button.setEnabled(False)
            self.refresh()
            message = self.download_path
        else:
            message = outcome.message(job.tail(3), "Resume continues from there.")
            self.progress_label.setText(message)
            failed = outcome.failed
            self.resume_button.setEnabled(not failed or failed.get("kind") in ("network", "failed", "disk"))
        self._update_use_for_hub()
        job.deleteLater()
        self.downloadFinished.emit(code, message)

    # -- closing ------------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop children and threads (the app is closing). A running download is stopped; it resumes later."""
        for job in (self._fit_job, self._download, self._hub_fit_job):
            if job is not None:
                job.kill()
                job.wait(3000)
        self._fit_job = self._download = self._hub_fit_job = None
        for channel in (self._list_jobs, self._hub_jobs, self._details_jobs):
            channel.shutdown(3000)

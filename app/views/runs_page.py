"""Runs: the run history under the runs folder(s). Open one to see its curves; select several to overlay their
curves and see only the settings that differ; resume, duplicate as a new run, delete."""

from __future__ import annotations

import copy
import html
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.models.runs_model import RunInfo, RunsModel, config_diff, delete_run, scan_runs
from app.session import StudioSession
from app.views.style import Banner


class RunsPage(QWidget):
    resumeRequested = Signal(str)  # run directory
    duplicateRequested = Signal(object)  # RunConfig with a new output_dir

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("RunsPage")
        self.extra_roots: list[Path] = []
        self.confirm_delete = None  # tests: a callable(path) -> bool instead of the dialog
        self._curves = None
        self.interrupted: list[Path] = []

        self.roots_label = QLabel()
        self.roots_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.add_root_button = QPushButton("Add runs folder…")
        self.add_root_button.clicked.connect(self._add_root_dialog)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        top = QHBoxLayout()
        top.addWidget(self.roots_label, 1)
        top.addWidget(self.add_root_button)
        top.addWidget(self.refresh_button)

        self.banner = Banner()
        self.resume_interrupted_button = QPushButton("Resume")
        self.resume_interrupted_button.clicked.connect(self._resume_interrupted)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self._dismiss_interrupted)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.resume_interrupted_button)
        banner_row.addWidget(self.dismiss_button)
        self._set_banner_buttons(False)

        self.model = RunsModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setAlternatingRowColors(True)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self.table.doubleClicked.connect(lambda _i: self._on_selection())

        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the selected run from its newest checkpoint (Train page)")
        self.resume_button.clicked.connect(self._resume_selected)
        self.duplicate_button = QPushButton("Duplicate as new run")
        self.duplicate_button.setToolTip("Load this run's settings with a new output folder (Hyperparameters page)")
        self.duplicate_button.clicked.connect(self._duplicate_selected)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(self._delete_selected)
        actions = QHBoxLayout()
        actions.addWidget(self.resume_button)
        actions.addWidget(self.duplicate_button)
        actions.addWidget(self.delete_button)
        actions.addStretch(1)
        self.selection_label = QLabel()
        actions.addWidget(self.selection_label)

        self.curves_holder = QWidget()
        QVBoxLayout(self.curves_holder).setContentsMargins(0, 0, 0, 0)
        self.diff_table = QTableWidget()
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().hide()
        self.diff_label = QLabel("Select two or more runs to see the settings that differ.")
        self.diff_label.setWordWrap(True)
        diff_box = QWidget()
        dv = QVBoxLayout(diff_box)
        dv.setContentsMargins(0, 0, 0, 0)
        dv.addWidget(self.diff_label)
        dv.addWidget(self.diff_table, 1)
        bottom = self.compare_area = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.curves_holder)
        bottom.addWidget(diff_box)
        bottom.setSizes([800, 420])

        # the empty state says what to do instead of showing a blank table
        self.empty_label = QLabel()
        self.empty_label.setObjectName("runsEmpty")
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table_stack = QStackedWidget()
        self.table_stack.addWidget(self.table)
        self.table_stack.addWidget(self.empty_label)
        table_box = QWidget()
        tv = QVBoxLayout(table_box)
        tv.setContentsMargins(0, 0, 0, 0)
        tv.addWidget(self.table_stack, 1)
        tv.addLayout(actions)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(table_box)
        split.addWidget(bottom)
        split.setSizes([300, 480])

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2 style='margin:0'>Runs</h2>"))
        layout.addLayout(top)
        layout.addLayout(banner_row)
        layout.addWidget(split, 1)
        self._update_buttons()
        session.config_changed.connect(self._on_config_changed)
        self._roots_key: tuple = ()
        self._on_config_changed()

    # -- folders ------------------------------------------------------------------------------------------
    def roots(self) -> list[Path]:
        """The parent of the run file's output_dir, plus any folders the user added."""
        out = [Path(str(self.session.config.output_dir)).parent]
        saved = QSettings().value("runs_folders") or []
        saved = [saved] if isinstance(saved, str) else list(saved)
        for p in [*self.extra_roots, *map(Path, saved)]:
            if p not in out:
                out.append(p)
        return out

    def _add_root_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a runs folder", str(self.roots()[0]))
        if path:
            self.extra_roots.append(Path(path))
            s = QSettings()
            saved = s.value("runs_folders") or []
            saved = [saved] if isinstance(saved, str) else list(saved)
            s.setValue("runs_folders", [*saved, path])
            self.refresh()

    def _on_config_changed(self) -> None:
        key = tuple(self.roots())
        if key != self._roots_key:
            self._roots_key = key
            self.refresh()

    # -- listing ------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        selected = {r.path for r in self.selected_runs()}
        roots = self.roots()
        self.roots_label.setText("Runs in: " + ", ".join(html.escape(str(r)) for r in roots))
        self.model.set_runs(scan_runs(roots))
        self.compare_area.setVisible(bool(self.model.runs))
        if self.model.runs:
            self.table_stack.setCurrentWidget(self.table)
        else:
            folders = ", ".join(html.escape(str(r)) for r in roots)
            self.empty_label.setText(
                f"<p><b>No runs yet</b> in {folders}.</p><p>Start one on the <b>Train</b> page (Ctrl+5): each run "
                "appears here with its status, final loss and curves, and can be resumed, compared or "
                "duplicated.</p><p>Runs kept elsewhere? <b>Add runs folder…</b> lists them too.</p>")
            self.table_stack.setCurrentWidget(self.empty_label)
        if not selected and self.model.runs:
            selected = {self.model.runs[0].path}  # the newest run's curves, rather than empty plots
        self.select([r.name for r in self.model.runs if r.path in selected])
        self.interrupted = [r.path for r in self.model.runs if r.status == "interrupted"]
        self._show_interrupted()

    def _show_interrupted(self) -> None:
        if not self.interrupted:
            if self.banner.kind == "info":
                self.banner.clear()
            self._set_banner_buttons(False)
            return
        names = ", ".join(p.name for p in self.interrupted[:3]) + ("…" if len(self.interrupted) > 3 else "")
        n = len(self.interrupted)
        self.banner.show_message("info", f"{n} run{'s' if n > 1 else ''} stopped without an end ({names}): the app "
                                 "or the machine went away while training. Resume continues the newest from its last "
                                 "checkpoint.", "Interrupted runs:")
        self._set_banner_buttons(True)

    def _set_banner_buttons(self, on: bool) -> None:
        self.resume_interrupted_button.setVisible(on)
        self.dismiss_button.setVisible(on)

    def _resume_interrupted(self) -> None:
        if self.interrupted:
            self.resumeRequested.emit(str(self.interrupted[0]))
            self._dismiss_interrupted()

    def _dismiss_interrupted(self) -> None:
        self.interrupted = []
        self.banner.clear()
        self._set_banner_buttons(False)

    # -- selection ----------------------------------------------------------------------------------------
    def selected_runs(self) -> list[RunInfo]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.model.runs[r] for r in rows if r < len(self.model.runs)]

    def select(self, names: list[str]) -> None:
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row, run in enumerate(self.model.runs):
            if run.name in names:
                self.table.selectRow(row)
        self.table.setSelectionMode(mode)

    @property
    def curves(self):  # noqa: ANN201
        if self._curves is None:
            from app.views.plots import PANELS, CurvesView, Panel

            panels = [Panel("loss", "Loss (solid) · eval loss (dashed)", ("loss", "eval_loss")),
                      *[p for p in PANELS if p.name in ("lr", "grad", "speed")]]
            self._curves = CurvesView(panels=panels)
            self.curves_holder.layout().addWidget(self._curves)
        return self._curves

    def _on_selection(self, *_args: object) -> None:
        runs = self.selected_runs()
        self._update_buttons()
        curves = self.curves
        curves.clear()
        for run in runs:
            curves.series.setdefault(run.name, {})  # fixes each run's colour by selection order
        for run in runs:
            curves.load_events(run.events, run=run.name)
        self._show_diff(runs)
        if len(runs) == 1:
            r = runs[0]
            self.selection_label.setText(f"{r.name}: {r.status}" + (f" — {r.failure}" if r.failure else ""))
        else:
            self.selection_label.setText(f"{len(runs)} runs selected" if runs else "")

    def _show_diff(self, runs: list[RunInfo]) -> None:
        self.diff_table.clear()
        if len(runs) < 2:
            self.diff_table.setRowCount(0)
            self.diff_table.setColumnCount(0)
            self.diff_label.setText("Select two or more runs to see the settings that differ.")
            return
        diff = config_diff(runs)
        self.diff_label.setText(f"{len(diff)} setting{'s' if len(diff) != 1 else ''} differ" if diff
                                else "These runs have the same settings (apart from output_dir).")
        self.diff_table.setColumnCount(1 + len(runs))
        self.diff_table.setHorizontalHeaderLabels(["setting", *[r.name for r in runs]])
        self.diff_table.setRowCount(len(diff))
        for row, (key, values) in enumerate(diff):
            self.diff_table.setItem(row, 0, QTableWidgetItem(key))
            for col, value in enumerate(values, 1):
                self.diff_table.setItem(row, col, QTableWidgetItem("null" if value is None else str(value)))
        self.diff_table.resizeColumnsToContents()

    def _update_buttons(self) -> None:
        runs = self.selected_runs()
        one = len(runs) == 1
        self.resume_button.setEnabled(one and runs[0].status in ("interrupted", "failed", "killed", "stopped")
                                      and (runs[0].path / "checkpoints").is_dir())
        self.duplicate_button.setEnabled(one and runs[0].config is not None)
        self.delete_button.setEnabled(bool(runs) and all(r.status != "running" for r in runs))

    # -- actions ------------------------------------------------------------------------------------------
    def _resume_selected(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1:
            self.resumeRequested.emit(str(runs[0].path))

    def _duplicate_selected(self) -> None:
        runs = self.selected_runs()
        if len(runs) != 1 or runs[0].config is None:
            return
        from core.config import load_run_config

        run = runs[0]
        cfg = load_run_config(run.path / "run.yaml")  # resolved: relative paths keep working from the new file
        cfg = copy.deepcopy(cfg)
        base, n = run.path.name, 2
        while (run.path.parent / f"{base}-{n}").exists():
            n += 1
        cfg.output_dir = str(run.path.parent / f"{base}-{n}")
        self.duplicateRequested.emit(cfg)

    def _delete_selected(self) -> None:
        runs = self.selected_runs()
        if not runs:
            return
        names = "\n".join(str(r.path) for r in runs)
        if self.confirm_delete is not None:
            ok = self.confirm_delete(names)
        elif QApplication.platformName() == "offscreen":
            ok = False
        else:
            ok = QMessageBox.question(
                self, "Delete runs", f"Delete these run folders with their checkpoints and adapters?\n\n{names}",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Cancel) == QMessageBox.StandardButton.Yes
        if not ok:
            return
        for run in runs:
            delete_run(run.path)
        self.refresh()

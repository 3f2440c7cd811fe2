"""The studio's state shared by all pages: the run config, the loaded run, the audit and the selected row.

Pages read state from here and call its methods; every heavy step runs on a :class:`JobChannel`, so the
GUI thread only ever renders results.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.workers.jobs import JobChannel
from app.workers.tasks import LoadedRun, RowView, audit, build_row, load_run
from core.config import RunConfig
from core.masks import ExampleBuilder

DEFAULT_MODEL = "bundled:SmolLM2-135M-Instruct"


def default_config() -> RunConfig:
    from resources import SAMPLE_DATASET

    cfg = RunConfig()
    cfg.model.name_or_path = DEFAULT_MODEL
    cfg.data.path = str(SAMPLE_DATASET)
    return cfg


class StudioSession(QObject):
    config_changed = Signal()
    load_started = Signal()
    run_loaded = Signal(object)  # LoadedRun (its .run may be None with .error set)
    load_failed = Signal(str)
    audit_started = Signal()
    audit_finished = Signal(object)  # AuditReport
    audit_failed = Signal(str)
    row_changed = Signal(int)
    row_built = Signal(object)  # RowView
    row_failed = Signal(str)
    busy_changed = Signal(bool)
    progressed = Signal(str, int, int)  # what, done, total
    dirty_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config: RunConfig = default_config()
        self.run_file: Path | None = None
        self.dirty = False
        self.loaded: LoadedRun | None = None
        self.report: Any = None
        self.load_error: str | None = None
        self.row = 0
        self.row_view: RowView | None = None
        self.builder: ExampleBuilder | None = None
        self._tokenizers: dict[str, tuple[Any, list[str]]] = {}
        self._loads = JobChannel("load", self)
        self._audits = JobChannel("audit", self)
        self._rows = JobChannel("row", self)
        self._loads.finished.connect(self._on_loaded)
        self._loads.failed.connect(self._on_load_failed)
        self._loads.progressed.connect(lambda d, t: self.progressed.emit("Loading", d, t))
        self._audits.finished.connect(self._on_audited)
        self._audits.failed.connect(lambda m, _e: self.audit_failed.emit(m))
        self._audits.progressed.connect(lambda d, t: self.progressed.emit("Auditing", d, t))
        self._rows.finished.connect(self._on_row_built)
        self._rows.failed.connect(lambda m, _e: self.row_failed.emit(m))
        for channel in (self._loads, self._audits, self._rows):
            channel.busy_changed.connect(self._on_busy)

    # -- state ------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._loads.busy or self._audits.busy or self._rows.busy

    @property
    def loading(self) -> bool:
        return self._loads.busy

    @property
    def run(self) -> Any:
        return self.loaded.run if self.loaded else None

    @property
    def row_count(self) -> int:
        if self.loaded and self.loaded.dataset is not None:
            return len(self.loaded.dataset.examples)
        return 0

    def shutdown(self) -> bool:
        """Stop the workers; False when one is still stuck in a job (the caller must not destroy it)."""
        return all([channel.shutdown() for channel in (self._loads, self._audits, self._rows)])

    def _on_busy(self, _busy: bool) -> None:
        self.busy_changed.emit(self.busy)

    def _set_dirty(self, dirty: bool) -> None:
        if dirty != self.dirty:
            self.dirty = dirty
            self.dirty_changed.emit(dirty)

    # -- config -----------------------------------------------------------------------------------------
    def set_config(self, cfg: RunConfig, run_file: str | Path | None = None) -> None:
        """Adopt a whole config (a run file was opened) and load it."""
        self.config = cfg
        self.run_file = Path(run_file) if run_file else None
        self._set_dirty(False)
        self.config_changed.emit()
        self.reload()

    def update_config(self, reload: bool = True, **changes: Any) -> None:
        """Change settings by dotted key with ``__`` for the dot: ``data__format="alpaca"``."""
        from core.config import get_value, set_value

        changed = False
        for key, value in changes.items():
            dotted = key.replace("__", ".")
            if get_value(self.config, dotted) != value:
                set_value(self.config, dotted, copy.deepcopy(value))
                changed = True
        if not changed:
            return
        self._set_dirty(True)
        self.config_changed.emit()
        if reload:
            self.reload()

    def mark_saved(self, path: str | Path) -> None:
        self.run_file = Path(path)
        self._set_dirty(False)
        self.config_changed.emit()

    # -- loading ----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """(Re)load data, tokenizer and template for the current config; supersedes any load in flight."""
        cfg = copy.deepcopy(self.config)
        spec = cfg.model.name_or_path
        tokenizer, notes = self._tokenizers.get(spec, (None, []))
        self._audits.cancel()
        self._rows.cancel()
        self.load_error = None
        self.load_started.emit()
        self._loads.submit(lambda progress: load_run(cfg, tokenizer, notes, progress))

    def _on_loaded(self, loaded: LoadedRun) -> None:
        if loaded.tokenizer is not None:
            self._tokenizers[loaded.config.model.name_or_path] = (loaded.tokenizer, loaded.tokenizer_notes)
        self.loaded = loaded
        self.report = None
        self.row_view = None
        self.load_error = loaded.error
        run = loaded.run
        self.builder = run.builder if run is not None else None
        self.row = min(self.row, max(0, self.row_count - 1))
        self.run_loaded.emit(loaded)
        if run is not None:
            self._submit_row()
            self._submit_audit()

    def _on_load_failed(self, message: str, _exc: object) -> None:
        self.loaded = None
        self.report = None
        self.row_view = None
        self.builder = None
        self.load_error = message
        self.load_failed.emit(message)

    # -- audit ------------------------------------------------------------------------------------------
    def _submit_audit(self) -> None:
        run, builder = self.run, self.builder
        if run is None or builder is None:
            return
        self.report = None
        self.audit_started.emit()
        self._audits.submit(lambda progress: audit(run, builder, progress))

    def _on_audited(self, report: Any) -> None:
        self.report = report
        self.audit_finished.emit(report)

    # -- rows -------------------------------------------------------------------------------------------
    def set_row(self, row: int) -> None:
        count = self.row_count
        row = max(0, min(row, count - 1)) if count else 0
        if row == self.row and self.row_view is not None and self.row_view.row == row:
            return
        self.row = row
        self.row_changed.emit(row)
        self._submit_row()

    def step_row(self, delta: int) -> None:
        self.set_row(self.row + delta)

    def set_masking(self, train_on: str | None = None, max_length: int | None = None) -> None:
        """Switch ``train_on`` / ``max_length``: the row re-renders at once, the audit follows in the background."""
        train_on = train_on if train_on is not None else self.config.data.train_on
        max_length = max_length if max_length is not None else self.config.data.max_length
        self.update_config(reload=False, data__train_on=train_on, data__max_length=max_length)
        run = self.run
        if run is None:
            return
        if self.builder and (self.builder.train_on, self.builder.max_length) == (train_on, max_length):
            return
        # the run's builder carries every other mask setting (data.reasoning, ...): preview = training
        self.builder = run.builder.with_settings(train_on=train_on, max_length=max_length)
        self._submit_row()
        self._submit_audit()

    def _submit_row(self) -> None:
        run, builder, row = self.run, self.builder, self.row
        if run is None or builder is None or not self.row_count:
            return
        self._rows.submit(lambda _progress: build_row(run, builder, row))

    def _on_row_built(self, view: RowView) -> None:
        self.row_view = view
        self.row_built.emit(view)

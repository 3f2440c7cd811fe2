"""The main window and ``run_app``, the entry point of ``sft-studio gui``.

Start-up imports only PySide6 and the light parts of core (config, masks, templates, data); torch and
transformers are imported by the load worker once the window is on screen, pyqtgraph when the first
histogram is drawn.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QEventLoop, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.session import StudioSession
from app.views.chat_page import ChatPage
from app.views.data_page import DataPage
from app.views.params_page import ParamsPage
from app.views.runs_page import RunsPage
from app.views.style import BusyBar, apply_palette
from app.views.template_page import TemplatePage
from app.views.tokens_page import TokensPage
from app.views.train_page import TrainPage

PAGES = ("data", "template", "tokens", "hyperparameters", "train", "runs", "chat")
PAGE_TITLES = ("Data", "Template", "Tokens && masks", "Hyperparameters", "Train", "Runs", "Chat && Export")
LATER_PAGES: tuple[str, ...] = ()
RUN_FILTER = "Run files (*.yaml *.yml);;All files (*)"
MAX_RECENT = 8
SCREENSHOT_TIMEOUT_S = 300


def settings() -> QSettings:
    return QSettings("SFT Studio", "sft-studio")


class MainWindow(QMainWindow):
    def __init__(self, restore_geometry: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("SFT Studio")
        self.setAcceptDrops(True)
        self.confirm_close = True
        self.workers_stopped = True
        self.session = StudioSession(self)

        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setFixedWidth(200)
        self.nav.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.nav.setWordWrap(True)
        self.nav.setSpacing(2)
        self.stack = QStackedWidget()
        self.data_page = DataPage(self.session)
        self.template_page = TemplatePage(self.session)
        self.tokens_page = TokensPage(self.session)
        self.params_page = ParamsPage(self.session)
        self.train_page = TrainPage(self.session)
        self.runs_page = RunsPage(self.session)
        self.chat_page = ChatPage(self.session)
        self.train_page.prepare_run_file = self._run_file_for_training
        self.train_page.start_blockers = self._start_blockers
        for signal in (self.session.config_changed, self.session.load_started, self.session.run_loaded,
                       self.session.load_failed, self.session.audit_finished, self.params_page.dryRunFinished):
            signal.connect(lambda *_a: self.train_page.refresh_start_button())
        self.params_page.dry_button.clicked.connect(lambda *_a: self.train_page.refresh_start_button())
        self.train_page.runEnded.connect(self._on_run_ended_while_closing)
        self.params_page.dry_run_blocker = lambda: (
            "a training is running on the Train page; a dry run beside it would measure both wrong"
            if self.train_page.running else None)
        self._closing_after_stop = False
        self.train_page.runEnded.connect(lambda _state: self.runs_page.refresh())
        self.train_page.runStarted.connect(self.runs_page.refresh)
        self.runs_page.resumeRequested.connect(self.resume_run)
        self.runs_page.duplicateRequested.connect(self._duplicate_run)
        self.data_page.loss_ranking.openInTokens.connect(self._open_row_losses)
        pages = (self.data_page, self.template_page, self.tokens_page, self.params_page, self.train_page,
                 self.runs_page, self.chat_page)
        for number, (title, page) in enumerate(zip(PAGE_TITLES, pages, strict=True), 1):
            item = QListWidgetItem(f"{number}  {title.replace('&&', '&')}")
            item.setToolTip(f"Ctrl+{number}")
            self.nav.addItem(item)
            self.stack.addWidget(page)
        if LATER_PAGES:
            later = QListWidgetItem("Coming with a later release:")
            later.setFlags(Qt.ItemFlag.NoItemFlags)
            font = later.font()
            font.setItalic(True)
            later.setFont(font)
            self.nav.addItem(later)
        for number, title in enumerate(LATER_PAGES, len(PAGES) + 1):
            item = QListWidgetItem(f"{number}  {title}")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            item.setToolTip(f"{title}: coming with a later release")
            self.nav.addItem(item)
        self.nav.currentRowChanged.connect(self._on_nav)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        # the next step, always in view under the page list (a guide for a first run, a reminder later)
        self.next_label = QLabel()
        self.next_label.setObjectName("nextStep")
        self.next_label.setWordWrap(True)
        self.next_label.setFixedWidth(200)
        self.next_label.setContentsMargins(8, 8, 8, 8)
        self.next_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(self.nav, 1)
        left.addWidget(self.next_label)
        layout.addLayout(left)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.status_label = QLabel()
        self.busy_label = QLabel()
        self.busy_bar = BusyBar()
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(self.busy_label)
        self.statusBar().addPermanentWidget(self.busy_bar)

        self._build_menus()
        self.session.busy_changed.connect(self._on_busy)
        self.session.progressed.connect(self._on_progress)
        for signal in (self.session.config_changed, self.session.run_loaded, self.session.load_failed,
                       self.session.row_changed, self.session.dirty_changed, self.session.audit_finished):
            signal.connect(self._update_status)
            signal.connect(self._update_next_step)
        self.train_page.runStarted.connect(self._update_next_step)
        self.train_page.runEnded.connect(self._update_next_step)
        self.nav.setCurrentRow(0)
        self._update_next_step()
        self.resize(1360, 880)
        if restore_geometry:
            geometry = settings().value("geometry")
            if isinstance(geometry, QByteArray):
                self.restoreGeometry(geometry)
        self._update_status()

    # -- menus --------------------------------------------------------------------------------------------
    def _action(self, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:  # noqa: ANN001
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self._action("&Open run file…", self.open_run_file_dialog, QKeySequence.StandardKey.Open))
        file_menu.addAction(self._action("Open &dataset…", self.data_page.open_file_dialog, "Ctrl+Shift+O"))
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Save run file", self.save_run_file, QKeySequence.StandardKey.Save))
        file_menu.addAction(self._action("Save run file &as…", self.save_run_file_as, "Ctrl+Shift+S"))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Reload", self.session.reload, "F5"))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence.StandardKey.Quit))
        view_menu = self.menuBar().addMenu("&View")
        for number, name in enumerate(("&Data", "&Template", "T&okens && masks", "&Hyperparameters", "T&rain",
                                       "R&uns", "&Chat && Export"), 1):
            view_menu.addAction(self._action(name, lambda _c=False, i=number - 1: self.nav.setCurrentRow(i),
                                             f"Ctrl+{number}"))
        view_menu.addSeparator()
        view_menu.addAction(self._action("Previous row", lambda: self.session.step_row(-1), "Alt+Left"))
        view_menu.addAction(self._action("Next row", lambda: self.session.step_row(1), "Alt+Right"))
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("&About SFT Studio", self._about))

    def _about(self) -> None:
        QMessageBox.about(self, "SFT Studio", "SFT Studio: see every token's loss mask before you train.")

    # -- pages --------------------------------------------------------------------------------------------
    def _on_nav(self, row: int) -> None:
        if 0 <= row < len(PAGES):
            self.stack.setCurrentIndex(row)

    def show_page(self, name: str) -> None:
        if name not in PAGES:
            raise ValueError(f"unknown page '{name}'; pages: {', '.join(PAGES)}")
        self.nav.setCurrentRow(PAGES.index(name))

    @property
    def current_page(self) -> str:
        return PAGES[self.stack.currentIndex()]

    # -- training -----------------------------------------------------------------------------------------
    def _run_file_for_training(self) -> Path | None:
        """The run file the trainer reads. A saved, unmodified run file is used as it is. Otherwise the studio never
        writes over the user's file (its comments and key order would be lost): the run's settings, with absolute
        paths, go into ``<output_dir>/run.yaml`` — the run folder's own copy, which training writes anyway."""
        from core.config import resolve_paths, save_run_config

        if self.session.run_file is not None and not self.session.dirty:
            return self.session.run_file
        base = self.session.run_file.parent if self.session.run_file is not None else Path.cwd()
        config = resolve_paths(self.session.config, base)
        path = Path(str(config.output_dir)) / "run.yaml"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_run_config(config, path)
        except OSError as exc:
            self._error("The run cannot start", f"{path.parent}: cannot write the run's settings there "
                                                f"({exc.strerror or exc}); choose an output_dir you can write to")
            return None
        if self.session.run_file is not None:
            self.statusBar().showMessage(
                f"Training the edited settings from {path}; {self.session.run_file.name} is unchanged "
                "(File ▸ Save to keep the edits)", 10000)
        return path

    def _start_blockers(self) -> list[str]:
        """Why a new run cannot start now (the Train page disables Start and shows these)."""
        from core.config import validate_run_config

        reasons = []
        s = self.session
        if s.load_error:
            first = s.load_error.strip().splitlines()[0] if s.load_error.strip() else "unknown error"
            reasons.append(f"The data or the model does not load: {first} (see the Data page).")
        elif s.loaded is not None and s.loaded.dataset is not None and s.report is not None:
            trainable = getattr(s.report, "trainable_rows", None)
            if trainable == 0:
                reasons.append("No row of the data can be trained (see Problems on the Data page).")
        problems = validate_run_config(s.config)
        if problems:
            reasons.append("The run file has problems: " + "; ".join(p.message for p in problems[:3])
                           + " (see Hyperparameters).")
        if self.params_page.dry_running:
            reasons.append("A dry run is training (Hyperparameters page); wait for it or cancel it.")
        return reasons

    def resume_run(self, run_dir: str) -> None:
        self.show_page("train")
        if self.train_page.running:
            self._error("A run is already training", "Stop it before resuming another one.")
            return
        self.train_page.start(resume_dir=run_dir)

    def _open_row_losses(self, row: int, model_id: str) -> None:
        """A row of the loss ranking, on the Tokens page coloured by the same model."""
        self.tokens_page.set_model(model_id)
        self.session.set_row(row)
        self.show_page("tokens")

    def _duplicate_run(self, cfg) -> None:  # noqa: ANN001
        self.session.set_config(cfg)
        self.session._set_dirty(True)
        self.show_page("hyperparameters")
        self.statusBar().showMessage(f"New run from a copy: output_dir {cfg.output_dir}; save it to keep it", 8000)

    # -- run files ----------------------------------------------------------------------------------------
    def open_run_file(self, path: str | Path) -> bool:
        from core.config import ConfigError, load_run_config

        try:
            cfg = load_run_config(path)
        except ConfigError as exc:
            self._error("The run file has problems", str(exc))
            return False
        self.session.set_config(cfg, path)
        self._remember(str(Path(path).resolve()))
        return True

    def open_run_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run file", "", RUN_FILTER)
        if path:
            self.open_run_file(path)

    def save_run_file(self) -> bool:
        if self.session.run_file is None:
            return self.save_run_file_as()
        return self._save_to(self.session.run_file)

    def save_run_file_as(self) -> bool:
        start = str(self.session.run_file or "run.yaml")
        path, _ = QFileDialog.getSaveFileName(self, "Save run file", start, RUN_FILTER)
        return self._save_to(Path(path)) if path else False

    def _save_to(self, path: Path) -> bool:
        from core.config import save_run_config

        try:
            save_run_config(self.session.config, path)
        except OSError as exc:
            self._error("The run file cannot be saved", f"{path}: {exc}")
            return False
        self.session.mark_saved(path)
        self._remember(str(path.resolve()))
        self.statusBar().showMessage(f"Saved {path}", 4000)
        return True

    def _remember(self, path: str) -> None:
        s = settings()
        recent = [p for p in (s.value("recent_run_files") or []) if p != path]
        s.setValue("recent_run_files", [path, *recent][:MAX_RECENT])

    def recent_files(self) -> list[str]:
        value = settings().value("recent_run_files") or []
        return [value] if isinstance(value, str) else list(value)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        if not files:
            action = self.recent_menu.addAction("(none yet)")
            action.setEnabled(False)
        for i, path in enumerate(files):
            action = self.recent_menu.addAction(f"&{i + 1} {path}")
            action.triggered.connect(lambda _c=False, p=path: self.open_run_file(p))

    def _error(self, title: str, text: str) -> None:
        if QApplication.platformName() == "offscreen":
            print(f"{title}: {text}", file=sys.stderr)
            self.statusBar().showMessage(f"{title}: {text.splitlines()[0] if text else ''}", 10000)
            return
        QMessageBox.warning(self, title, text)

    # -- drag and drop ----------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        urls = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if not urls:
            return
        self.open_path(urls[0].toLocalFile())
        event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """A dropped (or command-line) path: a run file opens as a run, anything else as the dataset."""
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            self.open_run_file(path)
        else:
            self.nav.setCurrentRow(0)
            self.data_page.open_dataset(path)

    # -- status -------------------------------------------------------------------------------------------
    def _update_status(self, *_args: object) -> None:
        s = self.session
        run_name = s.run_file.name if s.run_file else "unsaved run"
        self.setWindowTitle(f"SFT Studio — {run_name}{' *' if s.dirty else ''}")
        parts = [f"Run: {run_name}{' (modified)' if s.dirty else ''}", f"Model: {s.config.model.name_or_path}"]
        data = Path(str(s.config.data.path)).name or str(s.config.data.path)
        loaded = s.loaded
        if loaded is not None and loaded.dataset is not None:
            data += f" ({len(loaded.dataset.examples)} rows, {loaded.dataset.format})"
        elif s.load_error:
            data += " (not loaded)"
        parts.append(f"Data: {data}")
        if s.row_count:
            parts.append(f"Row {s.row}")
        self.status_label.setText("   ·   ".join(parts))

    def next_step(self) -> str:
        """What to do next, from the state of the data, the audit and the run (plain words, one step)."""
        s, train = self.session, self.train_page
        if train.running:
            return "Training runs: watch the curves on <b>Train</b>; Stop saves the adapter."
        if s.load_error:
            return "Fix the data or the model: the <b>Data</b> page says what does not load."
        if s.loaded is None:
            return "Loading the data and the model's tokenizer…" if s.busy else \
                "Open a dataset on <b>Data</b> (or drop a file on the window)."
        if s.report is not None and not s.report.clean:
            return "Look at the <b>Problems</b> on Data: rows that will not be trained or lose their end."
        if train.state == "finished":
            return "Chat with the tuned model and export it on <b>Chat &amp; Export</b> (Ctrl+7)."
        if train.state in ("stopped", "interrupted"):
            return "Resume the run on <b>Runs</b>, or chat with what it learned so far (Ctrl+7)."
        if train.state == "failed":
            return "The run failed: the banner on <b>Train</b> says why and what to change."
        return ("Check which tokens carry loss on <b>Tokens &amp; masks</b> (Ctrl+3), set <b>Hyperparameters</b>, "
                "then <b>Start</b> on Train (Ctrl+5).")

    def _update_next_step(self, *_args: object) -> None:
        self.next_label.setText(f"<b>Next:</b> {self.next_step()}")

    def _on_busy(self, busy: bool) -> None:
        self.busy_bar.set_busy(busy)
        self.busy_label.setText("Working…" if busy else "")

    def _on_progress(self, what: str, done: int, total: int) -> None:
        self.busy_label.setText(f"{what} {done}/{total}" if total else f"{what}…")
        self.busy_bar.set_progress(done, total)

    # -- closing ------------------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        if self.confirm_close and self.session.dirty and QApplication.platformName() != "offscreen":
            answer = QMessageBox.question(
                self, "Unsaved changes", "The run has unsaved changes. Save them?",
                QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel,
            )
            if answer == QMessageBox.StandardButton.Cancel:
                event.ignore()
                return
            if answer == QMessageBox.StandardButton.Save and not self.save_run_file():
                event.ignore()
                return
        if self.train_page.running:
            if self.confirm_close and not self._closing_after_stop and QApplication.platformName() != "offscreen":
                answer = QMessageBox.question(
                    self, "Training is running", "Stop the run (it saves a checkpoint and the adapter) and quit?",
                    QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                )
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
            # Never wait here: the GUI thread would freeze for as long as the current step takes. Ask the trainer to
            # stop and save, show it, and close when the run has ended (Kill stays available on the Train page).
            event.ignore()
            if not self._closing_after_stop:
                self._closing_after_stop = True
                self.show_page("train")
                self.train_page.stop()
                self.train_page.banner.show_message(
                    "info", "The trainer is finishing its current step and saving a checkpoint and the adapter; the "
                    "studio closes when it has. Kill ends it now (work since the last checkpoint is lost).",
                    "Stopping, then closing…")
                self.statusBar().showMessage("Stopping the run, then closing…")
            return
        settings().setValue("geometry", self.saveGeometry())
        self.train_page.shutdown()
        self.params_page.shutdown()
        self.chat_page.shutdown()
        self.tokens_page.shutdown()
        self.data_page.shutdown()  # the loss ranking, the Hub dataset preview
        self.workers_stopped = self.session.shutdown()
        super().closeEvent(event)

    def _on_run_ended_while_closing(self, _state: str) -> None:
        if self._closing_after_stop:
            QTimer.singleShot(0, self.close)

    # -- waiting (screenshots, tests) -------------------------------------------------------------------
    def wait_until_idle(self, timeout_s: float = SCREENSHOT_TIMEOUT_S) -> bool:
        """Process events until loading, the audit and the row build are done (True) or the time is up."""
        deadline = time.monotonic() + timeout_s
        loop_app = QApplication.instance()
        assert loop_app is not None
        settled = 0
        while time.monotonic() < deadline:
            loop_app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            started = self.session.loaded is not None or self.session.load_error is not None
            page_busy = bool(getattr(self.stack.currentWidget(), "busy", False))
            settled = settled + 1 if (started and not self.session.busy and not page_busy) else 0
            if settled >= 3:
                return True
            time.sleep(0.01)
        return False


def take_screenshot(window: MainWindow, path: str | Path) -> bool:
    window.wait_until_idle()
    app = QApplication.instance()
    assert app is not None
    for _ in range(5):
        app.processEvents()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return window.grab().save(str(out))


def run_app(run_file: str | None = None, page: str | None = None, row: int | None = None,
            screenshot: str | None = None) -> int:
    """Open the studio (``sft-studio gui``); with ``screenshot`` render ``page`` offscreen, save a PNG, exit."""
    started = time.perf_counter()
    if screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    from app.workers import main_thread_gc

    main_thread_gc.install(app)  # garbage cycles holding widgets are never collected in a worker thread
    from resources import apply_app_identity

    apply_app_identity(app)  # name, desktop-file id and icon: the studio looks like itself in launchers and docks
    apply_palette(app, os.environ.get("SFT_STUDIO_THEME") or ("light" if screenshot else None))
    if page is not None and page not in PAGES:
        print(f"error: unknown page '{page}'; pages: {', '.join(PAGES)}", file=sys.stderr)
        return 2
    window = MainWindow(restore_geometry=not screenshot)
    if row is not None:
        window.session.row = max(0, row)
    if run_file:
        if not window.open_run_file(run_file) and screenshot:
            return 2
    elif screenshot:
        window.session.reload()
    else:  # after the window is on screen: the load worker imports transformers
        QTimer.singleShot(0, window.session.reload)
    if page:
        window.show_page(page)
    if screenshot:
        window.resize(1440, 900)
        window.show()
        ok = take_screenshot(window, screenshot)
        window.confirm_close = False
        window.close()
        if not ok:
            print(f"error: could not write {screenshot}", file=sys.stderr)
            return _exit(window, 1)
        print(f"wrote {screenshot}", file=sys.stderr)
        return _exit(window, 0)
    window.show()
    if os.environ.get("SFT_STUDIO_TIMING"):
        QTimer.singleShot(0, lambda: print(f"window shown after {time.perf_counter() - started:.2f} s",
                                           file=sys.stderr))
    return _exit(window, app.exec())


def _exit(window: MainWindow, code: int) -> int:
    """A worker still inside an uninterruptible job (a tokenizer load) would abort the process when its
    QThread is destroyed; leave without running destructors then."""
    if not window.workers_stopped:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code

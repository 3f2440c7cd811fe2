"""Train: start / pause / resume / stop / kill the supervised trainer, watch progress, curves, probe answers and the
log. A run file whose ``output_dir`` already holds a run shows that run (finished, failed or interrupted)."""

from __future__ import annotations

import html
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QSystemTrayIcon,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.session import StudioSession
from app.views.style import Banner, mono_font, role_color

MAX_LOG_LINES = 20_000

IDLE, STARTING, RUNNING, PAUSED, STOPPING, FINISHED, STOPPED, FAILED, INTERRUPTED = (
    "idle", "starting", "running", "paused", "stopping", "finished", "stopped", "failed", "interrupted")


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainPage(QWidget):
    runStarted = Signal()
    runEnded = Signal(str)  # the final state: finished | stopped | failed

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("TrainPage")
        self.supervisor = None
        self.state = IDLE
        self.run_dir: Path | None = None
        self.prepare_run_file: Callable[[], Path | None] | None = None  # set by the main window
        # set by the main window: why Start cannot be used now ([] = it can), e.g. the data does not load
        self.start_blockers: Callable[[], list[str]] | None = None
        self.command_override: Sequence[str] | None = None  # tests: a fake child
        self.started_at: float | None = None
        self.last_event_time: float | None = None
        self.failure: tuple[str, str, str, str] | None = None
        self.samples: list[dict] = []
        self.warnings: list[str] = []
        self.tray: QSystemTrayIcon | None = None
        self._curves = None

        self.start_button = QPushButton("▶ Start")
        self.start_button.setToolTip("Save the run file and start training in a separate process")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Hold at the next step, keeping the model in memory")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish the current step, save a checkpoint and the adapter, then end")
        self.kill_button = QPushButton("Kill")
        self.kill_button.setToolTip("End the trainer now; work since the last checkpoint is lost")
        self.start_button.clicked.connect(lambda: self.start())
        self.pause_button.clicked.connect(self.pause)
        self.resume_button.clicked.connect(self.resume)
        self.stop_button.clicked.connect(self.stop)
        self.kill_button.clicked.connect(self.kill)
        self.state_label = QLabel()
        self.state_label.setObjectName("trainState")
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.resume_button, self.stop_button, self.kill_button):
            buttons.addWidget(b)
        buttons.addSpacing(12)
        buttons.addWidget(self.state_label, 1)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress_label = QLabel("Not started")
        prog = QHBoxLayout()
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.progress_label)

        self.banner = Banner()
        self.show_log_button = QPushButton("Show log")
        self.show_log_button.clicked.connect(self.show_log)
        self.show_log_button.hide()
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.show_log_button)

        self.curves_holder = QWidget()
        QVBoxLayout(self.curves_holder).setContentsMargins(0, 0, 0, 0)
        self.samples_view = QTextBrowser()
        self.samples_view.setOpenLinks(False)
        samples_box = QWidget()
        sv = QVBoxLayout(samples_box)
        sv.setContentsMargins(0, 0, 0, 0)
        sv.addWidget(QLabel("<b>Probe answers</b>"))
        # a placeholder in a QTextBrowser is drawn on one unwrapped line: a wrapped label reads better
        samples_hint = QLabel(
            "Add a few probe prompts under Hyperparameters → Monitoring → Advanced; the model's answers appear "
            "here at the start and at every checkpoint.")
        samples_hint.setWordWrap(True)
        samples_hint.setEnabled(False)
        sv.addWidget(samples_hint)
        sv.addWidget(self.samples_view, 1)
        top_split = QSplitter(Qt.Orientation.Horizontal)
        top_split.addWidget(self.curves_holder)
        top_split.addWidget(samples_box)
        top_split.setStretchFactor(0, 3)
        top_split.setStretchFactor(1, 1)
        top_split.setSizes([900, 300])

        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(MAX_LOG_LINES)
        self.log_view.setFont(mono_font())
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.info_view = QTextBrowser()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.info_view, "Run")
        self.tabs.addTab(self.log_view, "Log")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top_split)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([560, 200])

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2 style='margin:0'>Train</h2>"))
        layout.addLayout(buttons)
        layout.addLayout(prog)
        layout.addLayout(banner_row)
        layout.addWidget(split, 1)

        self.clock = QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)
        self._progress_event: dict = {}
        self._stage_event: dict = {}
        self._progress_seen_at: float | None = None
        session.config_changed.connect(self._on_config_changed)
        self._set_state(IDLE)
        self._on_config_changed()

    # -- curves (pyqtgraph is imported when first needed) ---------------------------------------------
    @property
    def curves(self):  # noqa: ANN201
        if self._curves is None:
            from app.views.plots import CurvesView

            self._curves = CurvesView()
            self.curves_holder.layout().addWidget(self._curves)
        return self._curves

    def showEvent(self, event) -> None:  # noqa: ANN001
        self.curves  # noqa: B018 - build the plots when the page is first shown
        super().showEvent(event)

    # -- state --------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in (STARTING, RUNNING, PAUSED, STOPPING)

    def blockers(self) -> list[str]:
        """Why Start cannot be used now: [] when it can."""
        if self.running:
            return ["A run is training; stop it first."]
        return list(self.start_blockers()) if self.start_blockers is not None else []

    def refresh_start_button(self) -> None:
        """Enable Start only when a run can start; the tooltip says why it cannot."""
        reasons = self.blockers()
        self.start_button.setEnabled(not reasons)
        self.start_button.setToolTip("Start training in a separate process (your run file is not rewritten)"
                                     if not reasons else "Start is unavailable: " + " ".join(reasons))

    def _set_state(self, state: str) -> None:
        self.state = state
        running = self.running
        self.refresh_start_button()
        self.pause_button.setEnabled(state == RUNNING)
        self.resume_button.setEnabled(state == PAUSED)
        self.stop_button.setEnabled(state in (STARTING, RUNNING, PAUSED))
        self.kill_button.setEnabled(running)
        words = {IDLE: "Ready", STARTING: "Starting the trainer…", RUNNING: "Training", PAUSED: "Paused",
                 STOPPING: "Stopping (saving a checkpoint)…", FINISHED: "Finished", STOPPED: "Stopped",
                 FAILED: "Failed", INTERRUPTED: "Interrupted (no end recorded)"}
        colour = {FAILED: "#d9534f", FINISHED: "#1f7a3a", PAUSED: "#b8860b", INTERRUPTED: "#b8860b",
                  STOPPED: "#b8860b"}.get(state)
        text = words[state]
        if state == FAILED and self.failure is not None and self.failure[0] == "killed":
            text = "Killed"
        if state == STOPPED:
            text += f" at {_step_of(self.finished_event)}"
        if self.run_dir is not None and state not in (IDLE,):
            text += f" — {self.run_dir}"
        self.state_label.setText(f"<b style='color:{colour}'>{html.escape(text)}</b>" if colour else
                                 f"<b>{html.escape(text)}</b>")

    def _on_config_changed(self) -> None:
        if self.running:
            return
        out = Path(str(self.session.config.output_dir))
        if out != self.run_dir or self.state == IDLE:
            self.show_run_dir(out)

    # -- starting -----------------------------------------------------------------------------------------
    def _config_path(self) -> Path | None:
        if self.prepare_run_file is not None:
            return self.prepare_run_file()
        from core.config import save_run_config

        path = Path(tempfile.mkdtemp(prefix="sft-studio-")) / "run.yaml"
        save_run_config(self.session.config, path)
        return path

    def start(self, resume_dir: str | Path | None = None, overrides: Sequence[str] = ()) -> bool:
        """Start training the session's config (or resume the run in ``resume_dir``)."""
        if self.running:
            return False
        if resume_dir is None:
            reasons = self.blockers()
            if reasons:
                self.banner.show_message("error", "\n".join(reasons), "Training cannot start:")
                self.refresh_start_button()
                return False
            busy = _busy_reason(Path(str(self.session.config.output_dir)))
            if busy:
                self.banner.show_message("error", busy, "Training cannot start:")
                return False
        from app.workers.training_supervisor import TrainingSupervisor
        from core.config import validate_run_config

        if resume_dir is not None:
            run_dir = Path(resume_dir)
            config_path: Path | None = run_dir / "run.yaml"
        else:
            problems = validate_run_config(self.session.config)
            if problems:
                self.banner.show_message("error", "\n".join(p.message for p in problems[:6]),
                                         "The run file has problems (see Hyperparameters):")
                return False
            config_path = self._config_path()
            if config_path is None:
                return False
            run_dir = Path(str(self.session.config.output_dir))
        self._reset(run_dir)
        command = None
        if self.command_override is not None:
            command = list(self.command_override)
        elif not getattr(sys, "frozen", False):
            command = None  # the supervisor's own `python -m core.cli train --from-app`
        else:
            from core.launch import training_child_command

            command = training_child_command(config_path, ["--from-app"] + (["--resume", str(run_dir)]
                                                                             if resume_dir is not None else []))
        sup = TrainingSupervisor(config_path, resume=resume_dir is not None,
                                 run_dir=run_dir if resume_dir is not None else None, overrides=overrides,
                                 command=command)
        if resume_dir is None:
            sup.run_dir = run_dir
        sup.eventReceived.connect(self.apply_event)
        sup.logLineReceived.connect(self.append_log)
        sup.failed.connect(self._on_failed)
        sup.finished.connect(self._on_finished)
        self.supervisor = sup
        self.started_at = time.time()
        self._set_state(STARTING)
        self.append_log(f"$ {' '.join(sup.command)}")
        self.clock.start()
        sup.start()
        self.runStarted.emit()
        return True

    def pause(self) -> None:
        if self.supervisor is not None:
            self.supervisor.pause()

    def resume(self) -> None:
        if self.supervisor is not None:
            self.supervisor.resume()

    def stop(self) -> None:
        if self.supervisor is not None and self.running:
            self.supervisor.stop()
            self._set_state(STOPPING)

    def kill(self) -> None:
        if self.supervisor is not None and self.running:
            self.supervisor.kill()

    def shutdown(self, timeout_s: float = 120.0) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown(timeout_s)

    # -- events ---------------------------------------------------------------------------------------
    def _reset(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self.failure = None
        self.samples = []
        self.warnings = []
        self.started_event: dict = {}
        self.data_event: dict = {}
        self.finished_event: dict = {}
        self._progress_event = {}
        self._stage_event = {}
        self._progress_seen_at = None
        self.started_at = None
        self.last_event_time = None
        self.banner.clear()
        self.show_log_button.hide()
        self.samples_view.clear()
        self.log_view.clear()
        self.info_view.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText("Not started")
        if self._curves is not None:
            self._curves.clear()

    def apply_event(self, event: dict) -> None:
        """One event of the stream (live, or replayed from events.jsonl)."""
        kind = event.get("type")
        t = event.get("time")
        if isinstance(t, (int, float)):
            self.last_event_time = t
        if kind == "started":
            self.started_event = event
            device_kind = (event.get("device") or {}).get("kind")
            if isinstance(device_kind, str):
                self.curves.set_device_kind(device_kind)
            if isinstance(t, (int, float)) and not event.get("resumed"):
                self.started_at = t
            elif self.started_at is None and isinstance(t, (int, float)):
                self.started_at = t
            if self.state in (STARTING, IDLE):
                self._set_state(RUNNING)
            self._update_info()
        elif kind == "data":
            self.data_event = event
            self._update_info()
        elif kind == "stage":
            self._stage_event = event
            self.append_log(f"start-up {event.get('index')}/{event.get('total')}: {event.get('message')}")
            self._update_progress()
        elif kind == "progress":
            self._progress_event = event
            self._progress_seen_at = time.time()
            if self.state == STARTING:
                self._set_state(RUNNING)
            self._update_progress()
        elif kind == "metrics":
            self.curves.add_metrics(event)
        elif kind == "sample":
            self._add_samples(event)
        elif kind == "paused":
            self._set_state(PAUSED)
        elif kind == "resumed":
            self._set_state(RUNNING)
        elif kind == "stopping":
            self._set_state(STOPPING)
        elif kind == "warning":
            message = str(event.get("message", ""))
            self.warnings.append(message)
            if self.failure is None:
                self.banner.show_message("warning", "\n".join(self.warnings[-3:]), "Warning:")
        elif kind == "checkpoint":
            self.append_log(f"checkpoint saved at step {event.get('step')}: {event.get('path')}")
        elif kind == "finished":
            self.finished_event = event
            self._update_info()
        elif kind == "failed":
            tail = event.get("log_tail")
            tail = "\n".join(tail) if isinstance(tail, list) else str(tail or "")
            self.failure = (str(event.get("kind", "crash")), str(event.get("message", "")),
                            str(event.get("hint", "")), tail)

    def append_log(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    def _add_samples(self, event: dict) -> None:
        self.samples.append(event)
        dark_user, dark_answer = role_color("user"), role_color("assistant")
        step = event.get("step", "?")
        parts = [f"<p style='margin:6px 0 2px 0'><b>step {html.escape(str(step))}</b>"
                 f"{' (base model)' if step == 0 else ''}</p>"]
        for s in event.get("samples") or []:
            prompt = html.escape(str(s.get("prompt", "")))
            answer = html.escape(str(s.get("completion", ""))).replace("\n", "<br>") or "<i>(empty)</i>"
            parts.append(f"<div style='margin-left:8px'><span style='color:{dark_user}'>▸ {prompt}</span><br>"
                         f"<span style='color:{dark_answer}'>{answer}</span></div>")
        self.samples_view.append("".join(parts))

    def _elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        end = time.time() if self.running else (self.last_event_time or time.time())
        return end - self.started_at

    def _update_progress(self) -> None:
        e = self._progress_event
        if not e:
            self._update_startup()
            return
        step, total = e.get("step"), e.get("total")
        if isinstance(step, int) and isinstance(total, int) and total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(step, total))
            self.progress.setFormat(f"{100 * step / total:.0f} %")
        epoch = e.get("epoch")
        eta = e.get("eta_s") if self.running else None
        if isinstance(eta, (int, float)) and self._progress_seen_at is not None and self.state == RUNNING:
            eta = max(0.0, eta - (time.time() - self._progress_seen_at))  # counts down between steps
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        if isinstance(epoch, (int, float)):
            parts.append(f"epoch {epoch:.2f}")
        parts.append(f"elapsed {format_duration(self._elapsed())}")
        if self.running:
            parts.append(f"ETA {format_duration(eta)}")
        self.progress_label.setText("   ·   ".join(parts))

    def _update_startup(self) -> None:
        """Before the first step: the start-up stage the trainer reported, with elapsed time (the bar is busy)."""
        stage = self._stage_event
        if self.state in (STARTING, RUNNING):
            self.progress.setRange(0, 0)  # busy: the length of model loading / compiling is unknown
            what = (f"{stage.get('message')} (stage {stage.get('index')} of {stage.get('total')})" if stage
                    else "starting the trainer process")
            self.progress_label.setText(f"{what}   ·   elapsed {format_duration(self._elapsed())}")
        elif self.state in (FAILED, STOPPED, FINISHED, INTERRUPTED) and stage:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress_label.setText(f"ended before the first step, while {stage.get('message')}")

    def _tick(self) -> None:
        self._update_progress()

    def _update_info(self) -> None:
        s, d, f = self.started_event, self.data_event, self.finished_event
        rows = []
        if s:
            dev = s.get("device") or {}
            rows.append(("Model", s.get("model", "")))
            rows.append(("Device", f"{dev.get('kind', '?')}: {dev.get('name', '')} ({s.get('precision', '')})"))
            tp, tot = s.get("trainable_params"), s.get("total_params")
            if isinstance(tp, int) and isinstance(tot, int) and tot:
                rows.append(("Parameters", f"{tp:,} trainable of {tot:,} ({100 * tp / tot:.2f} %)"))
            if s.get("resumed_from"):
                rows.append(("Resumed from", str(s.get("resumed_from"))))
            for reason in s.get("auto_choices") or []:
                rows.append(("Auto", str(reason)))
        if d:
            rows.append(("Data", f"{d.get('train_rows')} training rows, {d.get('eval_rows')} eval rows, "
                                 f"{d.get('dropped_rows')} dropped; {d.get('supervised_tokens')} of "
                                 f"{d.get('tokens')} tokens carry loss"))
        if f:
            rows.append(("Adapter", str(f.get("adapter"))))
            if f.get("train_loss") is not None:
                rows.append(("Mean train loss", f"{f.get('train_loss'):.4f}"))
        self.info_view.setHtml("<table cellspacing=4>" + "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>")

    # -- endings ----------------------------------------------------------------------------------------
    def _on_failed(self, kind: str, message: str, hint: str, log_tail: str) -> None:
        self.failure = (kind, message, hint, log_tail)

    def _on_finished(self, code: int) -> None:
        self.clock.stop()
        sup = self.supervisor
        if sup is not None:
            sup.wait(5000)
        if self.failure is not None:
            self._show_failure()
            self._set_state(FAILED)
            self._notify("Training failed", self.failure[1])
        else:
            self._show_end()
            steps = self.finished_event.get("steps")
            early = " (stopped early)" if self.finished_event.get("stopped_early") else ""
            self._notify("Training stopped" if early else "Training finished",
                         f"{steps} steps{early}; adapter in {self.finished_event.get('adapter')}")
        self._update_progress()
        self.runEnded.emit(self.state)

    def _show_end(self) -> None:
        """Finished, or stopped before the last step: the label, and for a stop how to go on."""
        f = self.finished_event
        if f.get("stopped_early"):
            self._set_state(STOPPED)
            reason = f.get("stop_reason")
            text = (f"Stopped at {_step_of(f)}{' (' + str(reason) + ')' if reason else ''}. The adapter of step "
                    f"{f.get('steps')} is saved in {f.get('adapter')}. To train the remaining steps, resume it on the "
                    f"Runs page, or run `sft-studio train --config {Path(str(self.run_dir or '')) / 'run.yaml'} "
                    "--resume`.")
            if self.warnings:
                text += "\nWarnings: " + "\n".join(self.warnings[-3:])
            self.banner.show_message("warning", text, "Stopped early:")
        else:
            self._set_state(FINISHED)
            if not self.warnings:
                self.banner.clear()

    def _show_failure(self) -> None:
        assert self.failure is not None
        kind, message, hint, tail = self.failure
        titles = {"oom": "Out of memory:", "data": "Data problem:", "config": "Configuration problem:",
                  "crash": "The trainer crashed:", "internal": "Internal error:", "killed": "Killed:"}
        text = message + (f"\n{hint}" if hint else "")
        self.banner.show_message("error", text, titles.get(kind, "Failed:"))
        self.show_log_button.show()
        if tail and tail.strip() and tail.strip() not in self.log_view.toPlainText():
            self.append_log("--- last lines of the trainer's output ---")
            self.append_log(tail)

    def show_log(self) -> None:
        self.tabs.setCurrentWidget(self.log_view)
        self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())

    def _notify(self, title: str, message: str) -> None:
        if QApplication.platformName() == "offscreen" or os.environ.get("SFT_STUDIO_NO_NOTIFY"):
            return
        if not QSystemTrayIcon.isSystemTrayAvailable():
            QApplication.alert(self.window())  # the taskbar/dock entry asks for attention
            return
        if self.tray is None:
            self.tray = QSystemTrayIcon(self.window().windowIcon(), self)
        self.tray.show()
        self.tray.showMessage(title, message, QSystemTrayIcon.MessageIcon.Information, 8000)

    # -- a run on disk ------------------------------------------------------------------------------------
    def show_run_dir(self, run_dir: str | Path) -> bool:
        """Show the run recorded in ``run_dir`` (finished, failed or interrupted); False when there is none."""
        from core.training.events import read_events

        run_dir = Path(run_dir)
        events = read_events(run_dir / "events.jsonl")
        self._reset(run_dir)
        if not events:
            self.run_dir = run_dir
            self._set_state(IDLE)
            return False
        for event in events:
            if event.get("type") == "started":  # a resumed run starts again: keep the latest start's facts
                self.finished_event, self.failure = {}, None
            self.apply_event(event)
        log = run_dir / "train.log"
        if log.is_file():
            try:
                lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-2000:]
                self.log_view.setPlainText("\n".join(lines))
            except OSError:
                pass
        if self._curves is not None:
            self._curves.redraw()
        if self.finished_event:
            self._show_end()
        elif self.failure is not None:
            self._show_failure()
            self._set_state(FAILED)
        else:
            self._set_state(INTERRUPTED)
            self.banner.show_message("warning", "This run has no recorded end: the app or the machine stopped while "
                                     "it trained. Resume it from its last checkpoint on the Runs page.", "Interrupted:")
        self._update_progress()
        return True


def _busy_reason(output_dir: Path) -> str | None:
    """Why ``output_dir`` cannot be trained into now: another process (a terminal run, another window) holds its
    lock. None when it is free; the check takes the lock for an instant and gives it back."""
    if not (output_dir / ".lock").exists():
        return None
    from core.training.rundir import RunDirBusy, RunDirLock

    try:
        RunDirLock(output_dir).acquire().release()
    except RunDirBusy as exc:
        return str(exc)
    except OSError:
        return None  # unwritable: the trainer reports that with the folder's name
    return None


def _step_of(finished: dict) -> str:
    steps, total = finished.get("steps"), finished.get("total")
    return f"step {steps} of {total}" if isinstance(total, int) and total > 0 else f"step {steps}"

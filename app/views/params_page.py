"""Hyperparameters: the schema-generated form, presets, the model/device facts and the memory fit check.

Device, model and memory facts come from ``python -m core.probe`` run as a child (QProcess): the GUI process never
imports torch nor initialises CUDA. The optional dry run trains three steps in the child into a temporary folder and
reports measured tokens/s, peak memory and the ETA of the whole run."""

from __future__ import annotations

import copy
import html
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.session import StudioSession
from app.views.form_builder import ConfigForm
from app.views.style import Banner, is_dark
from core.config import RunConfig, get_value, save_run_config, set_value, validate_run_config

GiB = 2**30
RELOAD_SECTIONS = ("model.", "data.")  # changes that the Data/Template/Tokens pages must re-load for

PRESETS: dict[str, dict[str, Any]] = {
    "LoRA (recommended)": {
        "model.load_in_4bit": False, "lora.enabled": True, "lora.r": 16, "lora.lora_alpha": 32,
        "lora.lora_dropout": 0.05, "lora.target_modules": "all-linear", "lora.use_dora": False,
        "lora.use_rslora": False, "training.learning_rate": 2e-4, "training.gradient_checkpointing": None,
        "training.precision": "auto",
    },
    "QLoRA 4-bit (low memory, CUDA)": {
        "model.load_in_4bit": True, "lora.enabled": True, "lora.r": 16, "lora.lora_alpha": 32,
        "lora.lora_dropout": 0.05, "lora.target_modules": "all-linear", "lora.use_dora": False,
        "training.learning_rate": 2e-4, "training.gradient_checkpointing": True, "training.device": "auto",
        "training.precision": "auto",
    },
    "Full fine-tune": {
        "model.load_in_4bit": False, "lora.enabled": False, "training.learning_rate": 2e-5,
        "training.gradient_checkpointing": True, "training.precision": "auto",
    },
    "Quick CPU/MPS demo (small model)": {
        "model.name_or_path": "bundled:SmolLM2-135M-Instruct", "model.load_in_4bit": False, "lora.enabled": True,
        "lora.r": 8, "lora.lora_alpha": 16, "lora.target_modules": "all-linear", "data.max_length": 256,
        "training.per_device_train_batch_size": 2, "training.gradient_accumulation_steps": 1,
        "training.max_steps": 30, "training.learning_rate": 2e-4, "training.logging_steps": 1,
        "training.save_steps": 10, "training.device": "auto", "training.precision": "auto",
        "training.gradient_checkpointing": False,
    },
}
METHODS = {
    "LoRA": {"lora.enabled": True, "lora.use_dora": False, "lora.use_rslora": False, "model.load_in_4bit": False},
    "DoRA": {"lora.enabled": True, "lora.use_dora": True, "lora.use_rslora": False, "model.load_in_4bit": False},
    "rsLoRA": {"lora.enabled": True, "lora.use_dora": False, "lora.use_rslora": True, "model.load_in_4bit": False},
    "QLoRA (4-bit)": {"lora.enabled": True, "model.load_in_4bit": True},
    "Full fine-tune": {"lora.enabled": False, "model.load_in_4bit": False},
}
PARTS = ("weights", "adapter", "gradients", "optimizer", "activations", "loss", "transient", "overhead")
PART_COLORS = ("#4a90d9", "#8fdc9f", "#f0bd6e", "#c3aef0", "#e07b7b", "#7fc8c8", "#bbbbbb", "#888888")


def _several_gpus_hint(device: dict, num_processes: int) -> list[str]:
    """Offer the distributed section when the probe sees several GPUs (the form shows the fields themselves)."""
    count = int(device.get("count") or 1)
    if device.get("kind") != "cuda" or count < 2:
        return []
    if num_processes > 1:
        return [f"<b>GPUs:</b> {count} visible; this run trains on {num_processes} of them through accelerate."]
    return [f"<b>GPUs:</b> {count} visible; set Hardware › Advanced › num_processes to {count} to train on all of them "
            "(DDP, or FSDP to shard a model too big for one GPU)."]


def probe_command(config_path: str | Path) -> list[str]:
    if getattr(sys, "frozen", False):  # a bundle has no `-m`; see the report: core.cli needs a `probe` subcommand
        return [sys.executable, "probe", "--config", str(config_path)]
    return [sys.executable, "-m", "core.probe", "--config", str(config_path)]


def method_of(cfg: RunConfig) -> str:
    if not cfg.lora.enabled:
        return "Full fine-tune"
    if cfg.model.load_in_4bit:
        return "QLoRA (4-bit)"
    if cfg.lora.use_dora:
        return "DoRA"
    if cfg.lora.use_rslora:
        return "rsLoRA"
    return "LoRA"


def train_command_line(run_file: str | Path) -> str:
    return f"sft-studio train --config {shlex.quote(str(run_file))}"


class MemoryBar(QWidget):
    """One stacked bar: the estimate's parts against the device's memory (a marker at 100 %)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.parts: dict[str, int] = {}
        self.device_total: int | None = None
        self.setMinimumHeight(34)

    def set_data(self, parts: dict[str, int], device_total: int | None) -> None:
        self.parts, self.device_total = parts, device_total
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: ANN001, N802
        p = QPainter(self)
        w, h = self.width() - 2, self.height() - 14
        total = sum(self.parts.values())
        scale_total = max(total, self.device_total or 0) or 1
        p.fillRect(1, 1, w, h, QColor("#3a3d42" if is_dark() else "#eeeeee"))
        x = 1.0
        for name, color in zip(PARTS, PART_COLORS, strict=True):
            width = w * self.parts.get(name, 0) / scale_total
            if width > 0:
                p.fillRect(int(x), 1, max(1, int(math.ceil(width))), h, QColor(color))
                x += width
        if self.device_total:
            mx = 1 + int(w * self.device_total / scale_total)
            p.setPen(QColor("#d9534f"))
            p.drawLine(mx - 1, 0, mx - 1, h + 2)
            p.setPen(self.palette().text().color())
            p.drawText(max(0, mx - 160), h + 12, f"device {self.device_total / GiB:.1f} GiB")
        p.end()


class ParamsPage(QWidget):
    probed = Signal(dict)  # the probe's JSON (device, model, estimate, errors)
    dryRunFinished = Signal(dict)
    scriptSaved = Signal(dict)  # the script export's result (path, files, notes) or {"error": message}

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("ParamsPage")
        self.probe_result: dict | None = None
        self.dry_run_result: dict | None = None
        self._process: QProcess | None = None
        self._probe_dir = tempfile.TemporaryDirectory(prefix="sft-studio-probe-")
        self._dry = None
        self._dry_events: list[dict] = []
        self._filling = False

        # toolbar -------------------------------------------------------------------------------------
        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Apply a preset…")
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.activated.connect(self._on_preset)
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("How the model is trained: LoRA, DoRA, rsLoRA, QLoRA (4-bit, CUDA) or all weights")
        self.method_combo.activated.connect(lambda i: self.apply_method(self.method_combo.itemText(i)))
        self.copy_button = QPushButton("Copy command")
        self.copy_button.setToolTip("Copy the exact `sft-studio train` line for this run file to the clipboard")
        self.copy_button.clicked.connect(self.copy_command)
        self.script_button = QPushButton("Save as script…")
        self.script_button.setToolTip("A folder with a standalone TRL + PEFT train.py (+ its settings and data) that "
                                      "trains exactly the tokens this run trains, without SFT Studio")
        self.script_button.clicked.connect(self.save_script_dialog)
        self.choose_folder: Callable[[], str | None] | None = None  # tests: instead of the folder dialog
        self._script_job = None  # the `sft-studio export --script` child
        self.script_result: dict | None = None
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Preset:"))
        bar.addWidget(self.preset_combo)
        bar.addSpacing(8)
        bar.addWidget(QLabel("Method:"))
        bar.addWidget(self.method_combo)
        bar.addStretch(1)
        bar.addWidget(self.copy_button)
        bar.addWidget(self.script_button)

        self.banner = Banner()
        self.form = ConfigForm()
        self.form.edited.connect(self._on_edited)
        # the model library (local models with their fit for this run, Hub search and download), beside File…/Folder…
        self.library_dialog = None
        self.library_button = QPushButton("Library…")
        self.library_button.setToolTip("Choose a model on this machine or from the Hugging Face Hub, with its size "
                                       "and whether it fits this run")
        self.library_button.clicked.connect(self.open_library)
        self.form.editors["model.name_or_path"].widget.layout().addWidget(self.library_button)

        # side panel -------------------------------------------------------------------------------------
        self.model_label = QLabel("Model and device: checking…")
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_box = QGroupBox("Model and device")
        QVBoxLayout(model_box).addWidget(self.model_label)

        self.verdict_label = QLabel()
        self.verdict_label.setObjectName("verdict")
        self.memory_bar = MemoryBar()
        self.breakdown_label = QLabel()
        self.breakdown_label.setTextFormat(Qt.TextFormat.RichText)
        self.suggestions_label = QLabel()
        self.suggestions_label.setWordWrap(True)
        self.check_button = QPushButton("Check again")
        self.check_button.clicked.connect(self.request_probe)
        self.dry_button = QPushButton("Dry run (3 steps)")
        self.dry_button.setToolTip("Train 3 steps in a separate process into a temporary folder: measures the real "
                                   "peak memory and tokens/s and gives the ETA of the whole run")
        self.dry_button.clicked.connect(self.start_dry_run)
        self.dry_run_blocker: Callable[[], str | None] | None = None  # set by the main window: a training runs
        self._probe_started = 0.0
        self._probe_clock = QTimer(self)
        self._probe_clock.setInterval(1000)
        self._probe_clock.timeout.connect(self._show_probe_wait)
        self._dry_clock = QTimer(self)
        self._dry_clock.setInterval(1000)
        self._dry_clock.timeout.connect(self._show_dry_status)
        self._dry_cancelled = False
        self._dry_started = 0.0
        self._dry_status = ""
        self.dry_label = QLabel()
        self.dry_label.setWordWrap(True)
        self.dry_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        mem_box = QGroupBox("Memory fit check")
        mv = QVBoxLayout(mem_box)
        mv.addWidget(self.verdict_label)
        mv.addWidget(self.memory_bar)
        mv.addWidget(self.breakdown_label)
        mv.addWidget(self.suggestions_label)
        row = QHBoxLayout()
        row.addWidget(self.check_button)
        row.addWidget(self.dry_button)
        row.addStretch(1)
        mv.addLayout(row)
        mv.addWidget(self.dry_label)
        side = QWidget()
        sv = QVBoxLayout(side)
        sv.setContentsMargins(0, 0, 0, 0)
        sv.addWidget(model_box)
        sv.addWidget(mem_box)
        sv.addStretch(1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.form)
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([760, 480])
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2 style='margin:0'>Hyperparameters</h2>"))
        layout.addLayout(bar)
        layout.addWidget(self.banner)
        layout.addWidget(split, 1)

        self.probe_timer = QTimer(self)
        self.probe_timer.setSingleShot(True)
        self.probe_timer.setInterval(800)
        self.probe_timer.timeout.connect(self.request_probe)
        self._probe_stale = True
        session.config_changed.connect(self._on_config_changed)
        self._on_config_changed()

    # -- config <-> form ----------------------------------------------------------------------------------
    @property
    def config(self) -> RunConfig:
        return self.session.config

    def _on_config_changed(self) -> None:
        self._filling = True
        try:
            self.form.set_config(self.config)
            self.method_combo.setCurrentText(method_of(self.config))
        finally:
            self._filling = False
        self.validate()
        self._probe_stale = True
        if self.isVisible():
            self.probe_timer.start()

    def _on_edited(self, key: str, value: Any) -> None:
        if self._filling:
            return
        self.set_fields({key: value})

    def set_fields(self, changes: dict[str, Any]) -> None:
        """Change settings (dotted keys) in the window's run config, as the user would in the form."""
        reload = any(key.startswith(RELOAD_SECTIONS) for key in changes
                     if get_value(self.config, key) != changes[key])
        self.session.update_config(reload=reload, **{k.replace(".", "__"): v for k, v in changes.items()})

    def validate(self) -> list:
        problems = validate_run_config(self.config)
        loose = self.form.show_problems(problems)
        if problems:
            lines = [p.message for p in problems]
            self.banner.show_message("error", "\n".join(lines[:5]) + ("\n…" if len(lines) > 5 else ""),
                                     f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in the run file:")
        else:
            self.banner.clear()
        return loose

    def open_library(self) -> Any:
        """The model library dialog (created once: a download keeps running while it is closed)."""
        if self.library_dialog is None:
            from app.views.model_library_dialog import ModelLibraryDialog

            self.library_dialog = ModelLibraryDialog(
                self.session, self, choose=lambda spec: self.set_fields({"model.name_or_path": spec}))
        self.library_dialog.open_library()
        return self.library_dialog

    # -- presets and methods ----------------------------------------------------------------------------
    def device_kind(self) -> str | None:
        device = (self.probe_result or {}).get("device") or {}
        return device.get("kind")

    def _on_preset(self, index: int) -> None:
        if index > 0:
            self.apply_preset(self.preset_combo.itemText(index))
        self.preset_combo.setCurrentIndex(0)

    def _refuse_4bit(self) -> str | None:
        kind = self.device_kind()
        wanted = self.config.training.device
        if wanted in ("cpu", "mps") or kind in ("cpu", "mps"):
            where = wanted if wanted in ("cpu", "mps") else kind
            return (f"QLoRA loads the model in 4-bit through bitsandbytes, which needs a CUDA GPU; this run trains on "
                    f"{where.upper() if where == 'mps' else 'the CPU'}. Use LoRA (16/32-bit) with a smaller model or "
                    "a shorter max_length instead, or train this run file on a CUDA machine.")
        return None

    def apply_preset(self, name: str) -> bool:
        changes = dict(PRESETS[name])
        if changes.get("model.load_in_4bit"):
            refusal = self._refuse_4bit()
            if refusal:
                self._tell("QLoRA needs CUDA", refusal)
                return False
        if name.startswith("Quick") and self._small_model():
            changes.pop("model.name_or_path")  # already a small model: keep it
        self.set_fields(changes)
        return True

    def _small_model(self) -> bool:
        est = (self.probe_result or {}).get("estimate") or {}
        total = (est.get("params") or {}).get("total")
        return isinstance(total, int) and total < 600_000_000

    def apply_method(self, method: str) -> bool:
        changes = METHODS[method]
        if changes.get("model.load_in_4bit"):
            refusal = self._refuse_4bit()
            if refusal:
                self._tell("QLoRA needs CUDA", refusal)
                self.method_combo.setCurrentText(method_of(self.config))
                return False
        self.set_fields(changes)
        return True

    def _tell(self, title: str, text: str) -> None:
        self.banner.show_message("warning", text, title + ":")
        if QApplication.platformName() != "offscreen":
            QMessageBox.information(self, title, text)

    # -- command and script -------------------------------------------------------------------------------
    def command_line(self) -> str:
        path = self.session.run_file or Path("run.yaml")
        return train_command_line(path)

    def copy_command(self) -> str:
        if self.session.run_file is None or self.session.dirty:
            window = self.window()
            save = getattr(window, "save_run_file", None)
            if save is not None and QApplication.platformName() != "offscreen":
                save()
        line = self.command_line()
        QApplication.clipboard().setText(line)
        window = self.window()
        if hasattr(window, "statusBar"):
            window.statusBar().showMessage(f"Copied: {line}", 5000)
        return line

    def script_destination(self, chosen: str | Path) -> Path:
        """An empty (or new) folder is used as it is; a folder with files gets a new ``<run>-script`` sub-folder."""
        folder = Path(chosen).expanduser()
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder
        name = f"{Path(str(self.config.output_dir)).name or 'run'}-script"
        target, n = folder / name, 2
        while target.exists():
            target, n = folder / f"{name}-{n}", n + 1
        return target

    def save_script(self, dest: str | Path) -> bool:
        """Export the current settings as a script folder at ``dest`` through ``sft-studio export RUN --script``
        (core.script_export, in a child: the GUI process never imports torch). The result arrives as
        :attr:`scriptSaved`; False when an export is already running."""
        if self._script_job is not None:
            return False
        from app.workers.chat_client import StudioChild, studio_child_command
        from core.config import resolve_paths

        run_dir = Path(tempfile.mkdtemp(prefix="script-run-", dir=self._probe_dir.name))
        base = self.session.run_file.parent if self.session.run_file else Path.cwd()
        save_run_config(resolve_paths(self.config, base), run_dir / "run.yaml")
        job = StudioChild(studio_child_command("export", str(run_dir), "--script", str(dest), "--json"), self)
        job.lineReceived.connect(self._on_script_line)
        job.finished.connect(lambda code, j=job, d=str(dest): self._on_script_finished(j, code, d))
        self._script_job = job
        self.script_button.setEnabled(False)
        self._status("Save as script: building every trained row…")
        job.start()
        return True

    def _status(self, text: str, timeout_ms: int = 0) -> None:
        window = self.window()
        if hasattr(window, "statusBar"):
            window.statusBar().showMessage(text, timeout_ms)

    def _on_script_line(self, line: str) -> None:
        if line.startswith("export: "):
            self._status("Save as script: " + line.removeprefix("export: "))

    def _on_script_finished(self, job: Any, code: int, dest: str) -> None:
        if job is not self._script_job:
            return
        self._script_job = None
        self.script_button.setEnabled(True)
        try:
            results = json.loads("\n".join(job.stdout_lines))
            result = next((r for r in results if r.get("kind") == "script"), {})
        except (ValueError, AttributeError):
            result = {}
        if code != 0 or not result or result.get("error"):
            errors = [line.removeprefix("error: ") for line in job.stderr_tail if line.startswith("error: ")]
            message = result.get("error") or (errors[-1] if errors else "") or job.tail(3) or f"exit {code}"
            result = {"error": message}
            self.banner.show_message("error", result["error"], "Save as script failed:")
            self._status("")
        else:
            notes = [str(n) for n in result.get("notes", [])]
            self.banner.show_message("info", "\n".join(notes[:3]), f"Saved the script to {result.get('path', dest)}:")
            self._status(f"Saved {Path(str(result.get('path', dest))) / 'train.py'}", 8000)
        self.script_result = result
        job.deleteLater()
        self.scriptSaved.emit(result)

    def save_script_dialog(self) -> None:
        if self.choose_folder is not None:
            chosen = self.choose_folder()
        else:
            start = str(Path(str(self.config.output_dir)).expanduser().resolve().parent)
            chosen = QFileDialog.getExistingDirectory(self, "Save the training script into…", start)
        if chosen:
            self.save_script(self.script_destination(chosen))

    # -- probe (device, model, memory estimate) -------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: ANN001, N802
        super().showEvent(event)
        if self._probe_stale and self._process is None:
            self.request_probe()

    @property
    def busy(self) -> bool:
        return self._process is not None or self.probe_timer.isActive()

    def request_probe(self) -> None:
        """Ask the child for device, model facts and the memory estimate of the current config."""
        self.probe_timer.stop()
        if self._process is not None:
            proc, self._process = self._process, None
            proc.finished.disconnect()
            proc.kill()
            proc.waitForFinished(2000)
        path = Path(self._probe_dir.name) / "probe.yaml"
        cfg = copy.deepcopy(self.config)
        try:
            save_run_config(cfg, path)
        except OSError as exc:
            self.model_label.setText(f"Cannot write a temporary run file: {exc}")
            return
        self._probe_stale = False
        proc = QProcess(self)
        command = probe_command(path)
        proc.setProgram(command[0])
        proc.setArguments(command[1:])
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        proc.finished.connect(lambda code, _status, p=proc: self._on_probe_finished(p, code))
        self._process = proc
        self._probe_started = time.monotonic()
        self._show_probe_wait()
        self._probe_clock.start()
        proc.start()

    def _show_probe_wait(self) -> None:
        """While the child estimates: what it does and for how long (the form stays usable meanwhile)."""
        if self._process is None:
            self._probe_clock.stop()
            return
        elapsed = int(time.monotonic() - self._probe_started)
        self.verdict_label.setText(
            f"<i>Estimating memory in the background… {elapsed} s</i>"
            + ("<br><i>the first check of a GGUF model reads its whole header once; later checks are instant</i>"
               if elapsed >= 5 else ""))

    def _on_probe_finished(self, proc: QProcess, code: int) -> None:
        if proc is not self._process:
            return
        self._process = None
        self._probe_clock.stop()
        out = bytes(proc.readAllStandardOutput()).decode("utf-8", errors="replace").strip().splitlines()
        err = bytes(proc.readAllStandardError()).decode("utf-8", errors="replace")
        proc.deleteLater()
        try:
            result = json.loads(out[-1]) if out else {"error": err.strip().splitlines()[-1] if err.strip() else
                                                      f"exit {code}"}
        except ValueError:
            result = {"error": out[-1][:300]}
        self.show_probe(result)

    def show_probe(self, result: dict) -> None:
        self.probe_result = result
        if "error" in result:
            self.model_label.setText(f"<span style='color:#d9534f'>{html.escape(str(result['error']))}</span>")
            self.verdict_label.setText("")
            self.probed.emit(result)
            return
        errors = result.get("errors") or {}
        device, model, est = result.get("device"), result.get("model"), result.get("estimate")
        lines = []
        if device:
            mem = f", {device['total_memory'] / GiB:.1f} GiB" if device.get("total_memory") else ""
            lines.append(f"<b>Device:</b> {html.escape(device['kind'].upper())} — {html.escape(device['name'])}{mem}")
            several = _several_gpus_hint(device, self.config.distributed.num_processes)
            lines.extend(several)
            toggle = self.form.advanced_toggles.get("Hardware")
            if several and toggle is not None:
                toggle.setChecked(True)  # the multi-GPU settings are folded away on one-GPU machines only
        elif "device" in errors:
            lines.append(f"<b>Device:</b> unknown ({html.escape(errors['device'])})")
        if model:
            tmpl = {True: "has a chat template", False: "<b>no chat template</b> (choose one under Model)",
                    None: "chat template: not checked"}[model.get("chat_template")]
            lines.append(f"<b>Model:</b> {html.escape(model['architecture'])} · {model['layers']} layers · "
                         f"hidden {model['hidden']} · vocab {model['vocab']:,} · {tmpl}")
        elif "model" in errors:
            lines.append(f"<b>Model:</b> <span style='color:#d9534f'>{html.escape(errors['model'])}</span>")
        if est:
            params = est.get("params") or {}
            if params.get("total"):
                lines.append(f"<b>Parameters:</b> {_count(params['total'])} total, {_count(params['trainable'])} "
                             f"trainable ({100 * params['trainable'] / params['total']:.2f} %)")
        self.model_label.setText("<br>".join(lines))
        if est:
            self._show_estimate(est, device)
        else:
            self.verdict_label.setText(f"Memory estimate unavailable: {html.escape(errors.get('estimate', '?'))}")
            self.memory_bar.set_data({}, None)
            self.breakdown_label.clear()
            self.suggestions_label.clear()
        self.probed.emit(result)

    def _show_estimate(self, est: dict, device: dict | None) -> None:
        parts = {k: v for k, v in est["breakdown"].items() if k != "total"}
        total, dev_total = est["total"], est.get("device_total")
        verdict = est["verdict"]
        colour = {"fits": "#1f7a3a", "tight": "#b8860b", "won't fit": "#d9534f"}.get(verdict, "#888888")
        where = "system RAM" if (device or {}).get("kind") == "cpu" else "device memory"
        text = f"Estimated peak <b>{total / GiB:.2f} GiB</b>"
        if dev_total:
            text += f" of {dev_total / GiB:.1f} GiB {where}: <b style='color:{colour}'>{html.escape(verdict)}</b>"
        else:
            text += " (device memory unknown)"
        self.verdict_label.setText(text)
        self.memory_bar.set_data(parts, dev_total)
        cells = []
        for name, colour_ in zip(PARTS, PART_COLORS, strict=True):
            value = parts.get(name, 0)
            cells.append(f"<span style='color:{colour_}'>■</span> {name} {_gib(value)}")
        a = est.get("assumptions") or {}
        self.breakdown_label.setText(
            "&nbsp;&nbsp; ".join(cells[:4]) + "<br>" + "&nbsp;&nbsp; ".join(cells[4:]) +
            f"<br><small>{a.get('micro_batch')} × {self.config.data.max_length} tokens, {a.get('precision')}, "
            + ("activations recomputed in the compiled layers" if a.get("recompute_budget") is not None else
               f"gradient checkpointing {'on' if a.get('gradient_checkpointing') else 'off'}") +
            f"{', 4-bit' if a.get('load_in_4bit') else ''}{', padding-free' if a.get('padding_free') else ''}"
            f"{', compiled layers' if a.get('compiled') and a.get('recompute_budget') is None else ''}"
            + (f", saved activations offloaded to host RAM ({_gib(a.get('offloaded_to_host_bytes') or 0)})"
               if a.get("activation_offloading") else "") + "</small>")
        sugg = est.get("suggestions") or []
        self.suggestions_label.setText(("<b>To make it fit:</b><br>" + "<br>".join(f"• {html.escape(s)}" for s in sugg))
                                       if sugg else "")

    # -- dry run ----------------------------------------------------------------------------------------
    @property
    def dry_running(self) -> bool:
        return self._dry is not None

    def start_dry_run(self) -> bool:
        """Train three steps into a temporary folder under the supervisor; results in :attr:`dry_run_result`.
        While it runs the button cancels it and the label shows the elapsed time; it does not start while a real
        training runs (two trainers would share one GPU and both measure wrong)."""
        if self._dry is not None:
            self.cancel_dry_run()
            return False
        busy = self.dry_run_blocker() if self.dry_run_blocker is not None else None
        if busy:
            self.dry_label.setText(f"Dry run not started: {busy}")
            return False
        from app.workers.training_supervisor import TrainingSupervisor

        folder = Path(tempfile.mkdtemp(prefix="sft-studio-dry-run-"))
        cfg = copy.deepcopy(self.config)
        set_value(cfg, "output_dir", str(folder / "run"))
        set_value(cfg, "training.max_steps", 3)
        set_value(cfg, "training.save_steps", 1000)
        set_value(cfg, "training.logging_steps", 1)
        set_value(cfg, "training.probe_prompts", [])
        path = folder / "dry-run.yaml"
        save_run_config(cfg, path)
        sup = TrainingSupervisor(path, stop_grace_s=30)
        self._dry_events = []
        sup.eventReceived.connect(self._on_dry_event)
        sup.failed.connect(self._on_dry_failed)
        sup.finished.connect(self._on_dry_finished)
        self._dry = sup
        self._dry_failure: str | None = None
        self._dry_cancelled = False
        self._dry_started = time.monotonic()
        self._dry_status = "starting the trainer"
        self.dry_button.setText("Cancel dry run")
        self._dry_clock.start()
        self._show_dry_status()
        sup.start()
        return True

    def cancel_dry_run(self) -> None:
        """End the dry run now (it trains into a temporary folder: nothing is lost)."""
        if self._dry is not None:
            self._dry_cancelled = True
            self._dry_status = "cancelling"
            self._show_dry_status()
            self._dry.kill()

    def _show_dry_status(self) -> None:
        if self._dry is None:
            return
        elapsed = int(time.monotonic() - self._dry_started)
        self.dry_label.setText(f"Dry run: {self._dry_status}…   elapsed {elapsed // 60}:{elapsed % 60:02d}")

    def _on_dry_event(self, event: dict) -> None:
        self._dry_events.append(event)
        if event.get("type") == "progress":
            self._dry_status = f"step {event.get('step')}/{event.get('total')}"
        elif event.get("type") == "stage":
            self._dry_status = str(event.get("message") or self._dry_status)
        self._show_dry_status()

    def _on_dry_failed(self, kind: str, message: str, hint: str, _tail: str) -> None:
        self._dry_failure = f"{kind}: {message}" + (f" — {hint}" if hint else "")

    def _on_dry_finished(self, _code: int) -> None:
        sup, self._dry = self._dry, None
        if sup is not None:
            sup.wait(5000)
        self._dry_clock.stop()
        self.dry_button.setText("Dry run (3 steps)")
        if self._dry_cancelled:
            self.dry_label.setText("Dry run cancelled.")
            self.dry_run_result = None
            self.dryRunFinished.emit({"cancelled": True})
            return
        result = summarise_dry_run(self._dry_events, self.config)
        if self._dry_failure:
            result["error"] = self._dry_failure
        self.dry_run_result = result
        self.dry_label.setText(describe_dry_run(result, (self.probe_result or {}).get("estimate")))
        self.dryRunFinished.emit(result)

    def shutdown(self) -> None:
        if self.library_dialog is not None:
            self.library_dialog.shutdown()
        if self._script_job is not None:
            job, self._script_job = self._script_job, None
            job.kill()
            job.wait(5000)
        if self._dry is not None:
            self._dry.kill()
            self._dry.wait(10_000)
        if self._process is not None:
            self._process.kill()
            self._process.waitForFinished(2000)


def total_steps(cfg: RunConfig, train_rows: int | None) -> int | None:
    """Optimizer steps of the whole run (max_steps, else epochs over the rows)."""
    t = cfg.training
    if t.max_steps > 0:
        return t.max_steps
    if not train_rows:
        return None
    per_epoch = math.ceil(math.ceil(train_rows / t.per_device_train_batch_size) / t.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * t.num_train_epochs))


def summarise_dry_run(events: list[dict], cfg: RunConfig) -> dict:
    metrics = [e for e in events if e.get("type") == "metrics" and "loss" in e]
    data = next((e for e in events if e.get("type") == "data"), {})
    # the first step warms up (kernels, allocator): measure the later ones where there are any
    timed = metrics[1:] or metrics
    step_s = [m["step_seconds"] for m in timed if isinstance(m.get("step_seconds"), (int, float))]
    tps = [m["tokens_per_second"] for m in timed if isinstance(m.get("tokens_per_second"), (int, float))]
    peak = max((m.get("gpu_peak_gib") or 0 for m in metrics), default=0) or None
    steps = total_steps(cfg, data.get("train_rows"))
    mean_step = sum(step_s) / len(step_s) if step_s else None
    return {
        "steps_measured": len(metrics), "step_seconds": mean_step,
        "tokens_per_second": sum(tps) / len(tps) if tps else None, "peak_gib": peak,
        "total_steps": steps, "eta_s": mean_step * steps if mean_step and steps else None,
        "train_rows": data.get("train_rows"),
    }


def describe_dry_run(result: dict, estimate: dict | None) -> str:
    from app.views.train_page import format_duration

    if result.get("error") and not result.get("steps_measured"):
        return f"<span style='color:#d9534f'>Dry run failed: {html.escape(result['error'])}</span>"
    parts = [f"<b>Dry run</b> ({result['steps_measured']} steps):"]
    if result.get("tokens_per_second"):
        parts.append(f"{result['tokens_per_second']:,.0f} tokens/s")
    if result.get("step_seconds"):
        parts.append(f"{result['step_seconds']:.2f} s/step")
    if result.get("peak_gib"):
        peak = f"measured peak {result['peak_gib']:.2f} GiB"
        if estimate and estimate.get("peak_allocated"):
            peak += f" (estimate {estimate['peak_allocated'] / GiB:.2f} GiB)"
        parts.append(peak)
    if result.get("eta_s"):
        parts.append(f"whole run ≈ {format_duration(result['eta_s'])} for {result['total_steps']} steps")
    return " · ".join(parts)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.01 * GiB else f"{n / 2**20:.1f} MiB"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)

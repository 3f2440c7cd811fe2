"""Chat & Export: talk to the tuned model next to its base, evaluate the run, export it.

Everything heavy runs in child processes (``sft-studio chat-worker`` / ``evaluate`` / ``export``) so the GUI never
imports torch or touches CUDA. One chat worker loads the base model once and answers with the adapter on (tuned)
and off (base); it answers one request at a time, so a Send queues base then tuned and both stream in turn.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.session import StudioSession
from app.views.style import Banner, BusyBar, is_dark, mono_font, role_color
from app.workers.chat_client import ChatWorkerClient, StudioChild, studio_child_command

SIDES = ("base", "tuned")
SIDE_TITLES = {"base": "Base model", "tuned": "Tuned (base + adapter)"}
EXPORT_KINDS = {
    "adapter": ("Adapter…", "LoRA adapter in PEFT format, with the tokenizer, chat template and a model card. "
                "Small; loads with PEFT or vLLM --lora-modules."),
    "merged": ("Merged model…", "The adapter merged into the base weights (16-bit safetensors): a plain "
               "transformers model, no PEFT needed."),
    "gguf": ("GGUF…", "The merged model converted to GGUF (llama.cpp's converter, installed with the studio), with "
             "an Ollama Modelfile and the commands for Ollama, LM Studio and llama.cpp."),
    "script": ("Script…", "A standalone train.py (TRL + PEFT, no SFT Studio needed) with its settings and data, "
               "training exactly the tokens this run trains."),
}
GGUF_TYPES = (("q8_0", "q8_0 — 8-bit, ~half the size of f16, near-lossless"),
              ("f16", "f16 — 16-bit, exact for most models"),
              ("bf16", "bf16 — 16-bit, the training precision on recent GPUs"),
              ("f32", "f32 — full precision, largest"))
EVAL_COLUMNS = ("Prompt", "Reference", "Base answer", "Tuned answer", "Tuned loss")


def describe_parity(parity: object) -> tuple[str, bool]:
    """The export parity report (core.export_parity) as lines for the result banner, and whether all checks
    passed; ("", True) when the export carried none."""
    if not isinstance(parity, dict):
        return "", True
    checks = [c for c in parity.get("checks") or [] if isinstance(c, dict)]
    if not checks:
        return "", True
    ok = all(c.get("ok", True) for c in checks)
    lines = ["Prompted as trained (parity check):" if ok else "Parity check found differences:"]
    for c in checks:
        mark = "✓" if c.get("ok", True) else "✗"
        line = f"{mark} {c.get('name', '')}: {c.get('detail', '')}".rstrip(": ")
        if not c.get("ok", True) and c.get("fix"):
            line += f" — fix: {c.get('fix')}"
        lines.append(line)
    return "\n".join(lines), ok


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class ChatPane(QFrame):
    """One side of the comparison: a title, a Copy button, the transcript, and a stats line."""

    def __init__(self, side: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.side = side
        self.title = QLabel(f"<b>{SIDE_TITLES[side]}</b>")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy this side's last answer (Shift+click: the whole conversation)")
        self.copy_button.clicked.connect(self.copy)
        self.view = QTextBrowser()
        self.view.setOpenLinks(False)
        self.view.setObjectName(f"chat_{side}")
        self.view.setPlaceholderText("Load the models (top right), then ask something below: the base model "
                                     "answers here." if side == "base" else
                                     "…and the tuned model (base + your adapter) answers the same prompt here.")
        self.stats = QLabel("")
        self.stats.setObjectName("chatStats")
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.stats)
        self.messages: list[dict] = []
        self.streaming: str | None = None

    def render(self) -> None:
        dark = is_dark()
        user_c, bot_c = role_color("user", dark), role_color("assistant", dark)
        muted = "#8a8d91" if dark else "#777777"
        parts = []
        for m in self.messages:
            if m["role"] == "user":
                parts.append(f"<p style='margin:8px 0 2px 0'><b style='color:{user_c}'>You</b></p>"
                             f"<div style='white-space:pre-wrap'>{html.escape(m['content'])}</div>")
            else:
                note = m.get("note")
                body = html.escape(m["content"]) if m["content"] else ""
                suffix = f" <i style='color:{muted}'>({html.escape(note)})</i>" if note else ""
                parts.append(f"<p style='margin:8px 0 2px 0'><b style='color:{bot_c}'>{'Base' if self.side == 'base' else 'Tuned'}</b></p>"
                             f"<div style='white-space:pre-wrap'>{body}{suffix}</div>")
        if self.streaming is not None:
            cursor = f"<span style='color:{muted}'>▍</span>"
            waiting = "" if self.streaming else f"<i style='color:{muted}'>waiting…</i> "
            parts.append(f"<p style='margin:8px 0 2px 0'><b style='color:{bot_c}'>{'Base' if self.side == 'base' else 'Tuned'}</b></p>"
                         f"<div style='white-space:pre-wrap'>{html.escape(self.streaming)}{waiting}{cursor}</div>")
        self.view.setHtml("".join(parts))
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())

    def last_answer(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return self.streaming or ""

    def transcript(self) -> str:
        who = {"user": "You", "assistant": "Base" if self.side == "base" else "Tuned"}
        return "\n\n".join(f"{who[m['role']]}: {m['content']}" for m in self.messages)

    def copy(self) -> None:
        whole = bool(QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier)
        QApplication.clipboard().setText(self.transcript() if whole else self.last_answer())


class ChatPage(QWidget):
    """The Chat & Export page."""

    busyChanged = Signal(bool)

    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("ChatPage")
        self.chat: ChatWorkerClient | None = None
        self.chat_command: list[str] | None = None  # tests: another worker command line
        self.loaded_run: str | None = None
        self.loaded_info: dict = {}
        self.loading = False
        self.pending: dict[str, str] = {}  # request id -> side, in the order they were sent
        self.job: StudioChild | None = None  # an evaluate or export child
        self.job_kind: str | None = None
        self.last_export_path: str | None = None
        self.last_export_result: dict = {}
        self.choose_folder = None  # tests: callable(kind) -> str | None instead of the folder dialog
        self.extra_options: dict = {}  # more generate fields (min_new_tokens, seed), for tests and scripts
        self._turn = 0
        self._user_picked_run = False
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(40)  # streamed tokens are drawn at most ~25 times a second
        self._render_timer.timeout.connect(self._render_panes)

        # -- the run ---------------------------------------------------------------------------------
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("run folder (the run's output_dir: run.yaml + adapter/)")
        self.run_edit.editingFinished.connect(self._on_run_edited)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse_run)
        self.load_button = QPushButton("Load models")
        self.load_button.setToolTip("Load the base model and the run's adapter in a separate process")
        self.load_button.clicked.connect(self.load)
        self.busy_bar = BusyBar()
        self.status_label = QLabel("Not loaded")
        self.status_label.setObjectName("chatStatus")
        top = QHBoxLayout()
        top.addWidget(QLabel("Run:"))
        top.addWidget(self.run_edit, 1)
        top.addWidget(self.browse_button)
        top.addWidget(self.load_button)
        top.addWidget(self.busy_bar)
        top.addWidget(self.status_label)
        self.banner = Banner()

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_chat_tab(), "Chat && compare")
        self.tabs.addTab(self._build_eval_tab(), "Evaluate")
        self.tabs.addTab(self._build_export_tab(), "Export")

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2 style='margin:0'>Chat &amp; Export</h2>"))
        layout.addLayout(top)
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        session.config_changed.connect(self._on_config_changed)
        self._on_config_changed()
        self._update_buttons()

    # ---------------------------------------------------------------------------------------------- tabs
    def _build_chat_tab(self) -> QWidget:
        self.max_tokens_spin = QSpinBox()
        self.max_tokens_spin.setRange(1, 32768)
        self.max_tokens_spin.setValue(256)
        self.max_tokens_spin.setToolTip("The longest answer, in tokens")
        self.temperature_spin = QDoubleSpinBox()
        self.temperature_spin.setRange(0.0, 2.0)
        self.temperature_spin.setSingleStep(0.05)
        self.temperature_spin.setValue(0.7)
        self.temperature_spin.setToolTip("Sampling temperature (0 = greedy)")
        self.top_p_spin = QDoubleSpinBox()
        self.top_p_spin.setRange(0.01, 1.0)
        self.top_p_spin.setSingleStep(0.05)
        self.top_p_spin.setValue(0.9)
        self.top_p_spin.setToolTip("Nucleus sampling: keep the smallest set of tokens whose probability reaches top-p")
        self.greedy_check = QCheckBox("Greedy")
        self.greedy_check.setToolTip("Always take the most likely token: deterministic, best for comparing base and "
                                     "tuned")
        self.greedy_check.toggled.connect(self._update_buttons)
        self.clear_button = QPushButton("New conversation")
        self.clear_button.setToolTip("Forget the history of both sides")
        self.clear_button.clicked.connect(self.clear_conversation)
        settings = QHBoxLayout()
        for label, widget in (("Max new tokens", self.max_tokens_spin), ("Temperature", self.temperature_spin),
                              ("Top-p", self.top_p_spin)):
            settings.addWidget(QLabel(label))
            settings.addWidget(widget)
            settings.addSpacing(8)
        settings.addWidget(self.greedy_check)
        settings.addStretch(1)
        settings.addWidget(self.clear_button)

        self.panes = {side: ChatPane(side) for side in SIDES}
        split = QSplitter(Qt.Orientation.Horizontal)
        for side in SIDES:
            split.addWidget(self.panes[side])
        split.setSizes([500, 500])

        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Ask both models the same thing…  (Ctrl+Enter sends)")
        self.prompt_edit.setMaximumHeight(96)
        self.prompt_edit.textChanged.connect(self._update_buttons)
        self.send_button = QPushButton("Send")
        self.send_button.setToolTip("Answer with base and tuned (Ctrl+Enter)")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (keeps what was written so far)")
        self.stop_button.clicked.connect(self.stop)
        for seq in ("Ctrl+Return", "Ctrl+Enter"):
            shortcut = QShortcut(QKeySequence(seq), self.prompt_edit)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(self.send)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.prompt_edit, 1)
        prompt_row.addLayout(buttons)

        tab = QWidget()
        v = QVBoxLayout(tab)
        v.addLayout(settings)
        v.addWidget(split, 1)
        v.addLayout(prompt_row)
        return tab

    def _build_eval_tab(self) -> QWidget:
        self.eval_limit_spin = QSpinBox()
        self.eval_limit_spin.setRange(0, 100_000)
        self.eval_limit_spin.setValue(20)
        self.eval_limit_spin.setSpecialValueText("all")
        self.eval_limit_spin.setToolTip("How many eval rows to answer (0 = the whole eval split)")
        self.eval_tokens_spin = QSpinBox()
        self.eval_tokens_spin.setRange(1, 4096)
        self.eval_tokens_spin.setValue(128)
        self.eval_button = QPushButton("Evaluate")
        self.eval_button.setToolTip("Answer the eval split with base and tuned (greedy) and compute eval loss and "
                                    "perplexity; writes evaluation.jsonl into the run folder")
        self.eval_button.clicked.connect(self.evaluate)
        self.eval_cancel_button = QPushButton("Cancel")
        self.eval_cancel_button.clicked.connect(self.cancel_job)
        self.eval_progress = QProgressBar()
        self.eval_progress.setMaximumWidth(260)
        self.eval_progress.setFormat("%v / %m answers")
        self.eval_progress.hide()
        row = QHBoxLayout()
        row.addWidget(QLabel("Rows"))
        row.addWidget(self.eval_limit_spin)
        row.addSpacing(8)
        row.addWidget(QLabel("Max new tokens"))
        row.addWidget(self.eval_tokens_spin)
        row.addSpacing(8)
        row.addWidget(self.eval_button)
        row.addWidget(self.eval_cancel_button)
        row.addWidget(self.eval_progress)
        row.addStretch(1)
        self.eval_summary = QLabel("No evaluation yet.")
        self.eval_summary.setWordWrap(True)
        self.eval_summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.eval_table = QTableWidget(0, len(EVAL_COLUMNS))
        self.eval_table.setHorizontalHeaderLabels(EVAL_COLUMNS)
        self.eval_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.eval_table.setWordWrap(True)
        self.eval_table.setAlternatingRowColors(True)
        self.eval_table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        header = self.eval_table.horizontalHeader()
        for col in range(4):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.ResizeToContents)
        tab = QWidget()
        v = QVBoxLayout(tab)
        v.addLayout(row)
        v.addWidget(self.eval_summary)
        v.addWidget(self.eval_table, 1)
        return tab

    def _build_export_tab(self) -> QWidget:
        grid = QGridLayout()
        grid.setColumnStretch(1, 1)
        grid.setHorizontalSpacing(14)
        self.export_buttons: dict[str, QPushButton] = {}
        for row, (kind, (title, text)) in enumerate(EXPORT_KINDS.items()):
            button = QPushButton(title)
            button.setMinimumWidth(150)
            button.clicked.connect(lambda _c=False, k=kind: self.export_dialog(k))
            self.export_buttons[kind] = button
            label = QLabel(text)
            label.setWordWrap(True)
            grid.addWidget(button, row, 0)
            if kind == "gguf":
                self.gguf_type_combo = QComboBox()
                for value, title in GGUF_TYPES:
                    self.gguf_type_combo.addItem(title, value)
                self.gguf_type_combo.setToolTip("The GGUF tensor type: q8_0 is what most people run locally; f16/bf16 "
                                                "keep every bit of the merged 16-bit weights")
                cell = QVBoxLayout()
                cell.addWidget(label)
                type_row = QHBoxLayout()
                type_row.addWidget(QLabel("Type:"))
                type_row.addWidget(self.gguf_type_combo)
                type_row.addStretch(1)
                cell.addLayout(type_row)
                grid.addLayout(cell, row, 1)
            else:
                grid.addWidget(label, row, 1)
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("user/name")
        self.hub_edit.setMaximumWidth(260)
        self.hub_edit.textChanged.connect(self._update_buttons)
        self.hub_public_check = QCheckBox("Public")
        self.hub_public_check.setToolTip("Create the repository public (default: private)")
        hub_button = QPushButton("Push to Hub")
        hub_button.setMinimumWidth(150)
        hub_button.clicked.connect(lambda: self.export("hub", self.hub_edit.text().strip()))
        self.export_buttons["hub"] = hub_button
        hub_row = QHBoxLayout()
        hub_row.addWidget(self.hub_edit)
        hub_row.addWidget(self.hub_public_check)
        hub_label = QLabel("Upload the adapter to a Hugging Face Hub repository. Needs a login (HF_TOKEN or "
                           "`hf auth login`); the token is never written into the run.")
        hub_label.setWordWrap(True)
        hub_box = QVBoxLayout()
        hub_box.addLayout(hub_row)
        hub_box.addWidget(hub_label)
        grid.addWidget(hub_button, len(EXPORT_KINDS), 0, Qt.AlignmentFlag.AlignTop)
        grid.addLayout(hub_box, len(EXPORT_KINDS), 1)

        self.export_banner = Banner()
        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.clicked.connect(self.open_export_folder)
        self.open_folder_button.hide()
        self.export_banner.layout().addWidget(self.open_folder_button, 0, Qt.AlignmentFlag.AlignTop)
        self.export_busy = BusyBar()
        self.export_busy.setMaximumWidth(220)
        self.export_status = QLabel("")
        self.export_cancel_button = QPushButton("Cancel")
        self.export_cancel_button.clicked.connect(self.cancel_job)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.export_busy)
        progress_row.addWidget(self.export_status, 1)
        progress_row.addWidget(self.export_cancel_button)
        self.export_log = QPlainTextEdit()
        self.export_log.setReadOnly(True)
        self.export_log.setFont(mono_font())
        self.export_log.setPlaceholderText("Export progress appears here. Every export is written to a temporary "
                                           "folder, verified by reloading it, then moved into place.")
        tab = QWidget()
        v = QVBoxLayout(tab)
        v.addLayout(grid)
        v.addSpacing(6)
        v.addLayout(progress_row)
        v.addWidget(self.export_banner)
        v.addWidget(self.export_log, 1)
        return tab

    # ---------------------------------------------------------------------------------------------- run dir
    @property
    def run_dir(self) -> str:
        return self.run_edit.text().strip()

    def set_run_dir(self, path: str | Path, picked: bool = True) -> None:
        self._user_picked_run = self._user_picked_run or picked
        self.run_edit.setText(str(path))
        self._on_run_edited()

    def _on_config_changed(self, *_args: object) -> None:
        if self._user_picked_run:
            return
        out = str(self.session.config.output_dir or "")
        if out and out != self.run_edit.text():
            self.run_edit.setText(out)
            self._on_run_edited(picked=False)

    def _on_run_edited(self, picked: bool = True) -> None:
        if picked and self.run_edit.isModified():
            self._user_picked_run = True
        self.run_edit.setModified(False)
        self.show_evaluation()
        self._update_buttons()

    def _browse_run(self) -> None:
        start = self.run_dir or str(Path(str(self.session.config.output_dir)).parent)
        path = QFileDialog.getExistingDirectory(self, "Choose a run folder", start)
        if path:
            self.set_run_dir(path)

    def _check_run_dir(self) -> Path | None:
        if not self.run_dir:
            self.banner.show_message("warning", "Choose a run folder first (Browse…).")
            return None
        path = Path(self.run_dir).expanduser().resolve()
        if not (path / "run.yaml").is_file():
            self.banner.show_message(
                "warning", f"{path} is not a finished run: it has no run.yaml. Train the run first (Train page) or "
                "choose another run folder.", "No run here.")
            return None
        return path

    # ---------------------------------------------------------------------------------------------- state
    @property
    def generating(self) -> bool:
        return bool(self.pending)

    @property
    def busy(self) -> bool:
        """Something is under way (the main window's screenshot mode waits for it)."""
        return self.loading or self.generating or self.job is not None

    def _update_buttons(self) -> None:
        if not hasattr(self, "send_button"):
            return
        loaded = self.loaded_run is not None and self.chat is not None and not self.loading
        self.load_button.setEnabled(not self.loading and not self.generating and bool(self.run_dir))
        self.load_button.setText("Reload models" if loaded and self.loaded_run == self._resolved() else "Load models")
        self.send_button.setEnabled(loaded and not self.generating and bool(self.prompt_edit.toPlainText().strip()))
        self.stop_button.setEnabled(self.generating)
        self.clear_button.setEnabled(not self.generating)
        sampling = not self.greedy_check.isChecked()
        self.temperature_spin.setEnabled(sampling)
        self.top_p_spin.setEnabled(sampling)
        job = self.job is not None
        self.eval_button.setEnabled(not job and bool(self.run_dir))
        self.eval_cancel_button.setVisible(job and self.job_kind == "evaluate")
        self.export_cancel_button.setVisible(job and self.job_kind not in (None, "evaluate"))
        for kind, button in self.export_buttons.items():
            button.setEnabled(not job and bool(self.run_dir) and (kind != "hub" or "/" in self.hub_edit.text()))
        self.busy_bar.set_busy(self.loading or self.generating)
        busy = self.busy
        if busy != getattr(self, "_was_busy", False):
            self._was_busy = busy
            self.busyChanged.emit(busy)

    def _resolved(self) -> str:
        return str(Path(self.run_dir).expanduser().resolve()) if self.run_dir else ""

    # ---------------------------------------------------------------------------------------------- chat
    def _ensure_worker(self) -> ChatWorkerClient:
        if self.chat is not None and self.chat.is_running():
            return self.chat
        chat = ChatWorkerClient(self.chat_command, self)
        chat.loaded.connect(self._on_loaded)
        chat.tokenReceived.connect(self._on_token)
        chat.answered.connect(lambda e: self._on_answer_end(e, None))
        chat.stopped.connect(lambda e: self._on_answer_end(e, "stopped"))
        chat.failed.connect(self._on_chat_error)
        chat.finished.connect(lambda code, c=chat: self._on_worker_exit(c, code))
        self.chat = chat
        chat.start()
        return chat

    def load(self) -> None:
        """Start the chat worker (once) and load the base model + the run's adapter."""
        if self.loading or self.generating:
            return
        path = self._check_run_dir()
        if path is None:
            return
        self.banner.clear()
        if self.loaded_run != str(path):  # another run: the old conversation belongs to other models
            self.clear_conversation()
            for side in SIDES:
                self.panes[side].title.setText(f"<b>{SIDE_TITLES[side]}</b>")
        self.loading = True
        self.loaded_run = None
        self.status_label.setText("Loading base model and adapter…")
        self._ensure_worker().load(str(path))
        self._update_buttons()

    def _on_loaded(self, event: dict) -> None:
        self.loading = False
        self.loaded_run = str(Path(event.get("run_dir") or self.run_dir).resolve())
        self.loaded_info = event
        name = Path(self.loaded_run).name
        base = str(event.get("base_model", ""))
        self.status_label.setText(f"Loaded {name} on {event.get('device')} ({event.get('dtype')}) in "
                                  f"{event.get('seconds', 0):.1f} s")
        self.status_label.setToolTip(f"run: {self.loaded_run}\nbase model: {base}")
        self.panes["base"].title.setText(f"<b>Base model</b> <span style='color:#888'>{html.escape(Path(base).name)}</span>")
        self.panes["tuned"].title.setText(f"<b>Tuned</b> <span style='color:#888'>{html.escape(name)} "
                                          "(base + adapter)</span>")
        if not event.get("chat_template"):
            self.banner.show_message("warning", "This tokenizer has no chat template: prompts are sent as a plain "
                                     "'User: … Assistant:' transcript.", "No chat template.")
        self._update_buttons()

    def _messages_for(self, side: str) -> list[dict]:
        """The side's history as the worker wants it: turns whose answer failed are left out."""
        out: list[dict] = []
        msgs = self.panes[side].messages
        for i, m in enumerate(msgs):
            if m["role"] == "user" and i + 1 < len(msgs) and msgs[i + 1].get("note") == "error":
                continue
            if m.get("note") == "error":
                continue
            out.append({"role": m["role"], "content": m["content"]})
        return out

    def generation_options(self) -> dict:
        greedy = self.greedy_check.isChecked() or self.temperature_spin.value() <= 0
        return {"max_new_tokens": self.max_tokens_spin.value(), "temperature": self.temperature_spin.value(),
                "top_p": self.top_p_spin.value(), "greedy": greedy, **self.extra_options}

    def send(self, text: str | None = None) -> bool:
        """Ask both models the prompt (the prompt box's text by default); False when it cannot be sent now."""
        prompt = (text if isinstance(text, str) else self.prompt_edit.toPlainText()).strip()
        if not prompt or self.generating or self.loading or self.chat is None or self.loaded_run is None:
            return False
        self.banner.clear()
        self._turn += 1
        options = self.generation_options()
        for side in SIDES:
            pane = self.panes[side]
            pane.messages.append({"role": "user", "content": prompt})
            pane.streaming = ""
            pane.stats.setText("waiting for the other side…" if side == "tuned" else "generating…")
            request_id = f"{self._turn}-{side}"
            self.pending[request_id] = side
            self.chat.generate(request_id, side, self._messages_for(side), **options)
        self.prompt_edit.clear()
        self._render_panes()
        self._update_buttons()
        return True

    def stop(self) -> None:
        if self.chat is None:
            return
        for request_id in list(self.pending):
            self.chat.stop(request_id)

    def clear_conversation(self) -> None:
        if self.generating:
            return
        for pane in self.panes.values():
            pane.messages.clear()
            pane.streaming = None
            pane.stats.setText("")
        self._render_panes()
        self._update_buttons()

    def _schedule_render(self) -> None:
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_panes(self) -> None:
        for pane in self.panes.values():
            pane.render()

    def _on_token(self, event: dict) -> None:
        side = self.pending.get(str(event.get("id")))
        if side is None:
            return
        pane = self.panes[side]
        pane.streaming = (pane.streaming or "") + str(event.get("text", ""))
        pane.stats.setText(f"{event.get('n_tokens', 0)} tokens…")
        self._schedule_render()

    def _on_answer_end(self, event: dict, note: str | None) -> None:
        side = self.pending.pop(str(event.get("id")), None)
        if side is None:
            return
        pane = self.panes[side]
        pane.streaming = None
        pane.messages.append({"role": "assistant", "content": str(event.get("text", "")), "note": note})
        n, seconds = event.get("n_tokens", 0), event.get("seconds") or 0
        rate = f" · {n / seconds:.1f} tokens/s" if seconds else ""
        how = "stopped" if note else {"eos": "finished", "length": "hit the max new tokens"}.get(
            str(event.get("finish_reason")), "finished")
        pane.stats.setText(f"{n} tokens in {seconds:.1f} s{rate} · {how}")
        self._render_panes()
        self._update_buttons()

    def _on_chat_error(self, event: dict) -> None:
        message = str(event.get("message", "unknown error"))
        request_id = event.get("id")
        side = self.pending.pop(str(request_id), None) if request_id is not None else None
        if side is not None:
            pane = self.panes[side]
            pane.streaming = None
            pane.messages.append({"role": "assistant", "content": "", "note": "error"})
            pane.stats.setText("failed")
            self.banner.show_message("error", message, f"The {side} answer failed.")
            self._render_panes()
        elif self.loading:
            self.loading = False
            self.status_label.setText("Not loaded")
            self.banner.show_message("error", message, "The models could not be loaded.")
        else:
            self.banner.show_message("error", message, "Chat worker:")
        self._update_buttons()

    def _on_worker_exit(self, chat: ChatWorkerClient, code: int) -> None:
        if chat is not self.chat:
            return
        expected = getattr(chat, "_quitting", False)
        self.chat = None
        was_busy = self.loading or self.generating
        self.loading = False
        self.loaded_run = None
        for side in set(self.pending.values()):
            pane = self.panes[side]
            pane.messages.append({"role": "assistant", "content": pane.streaming or "", "note": "error"})
            pane.streaming = None
        self.pending.clear()
        self.status_label.setText("Not loaded")
        if not expected:
            tail = chat.tail()
            what = "while working" if was_busy else "unexpectedly"
            self.banner.show_message("error", (tail or f"exit code {code}") + "\n\nLoad the models again to go on.",
                                     f"The chat process ended {what} (exit code {code}).")
        self._render_panes()
        self._update_buttons()

    # ---------------------------------------------------------------------------------------------- jobs
    def _start_job(self, kind: str, args: list[str]) -> StudioChild:
        job = StudioChild(studio_child_command(*args), self)
        job.eventReceived.connect(self._on_job_event)
        job.lineReceived.connect(self._on_job_line)
        job.finished.connect(lambda code, j=job: self._on_job_finished(j, code))
        self.job, self.job_kind = job, kind
        job.start()
        self._update_buttons()
        return job

    def cancel_job(self) -> None:
        job = self.job
        if job is None:
            return
        if self.job_kind == "evaluate":
            job.write_line("stop")  # --from-app: the evaluation stops at the next batch, writing nothing
            QTimer.singleShot(30_000, job.kill)
        else:
            job.kill()  # exports stage into a temporary folder; killing leaves at most that folder behind
        self.export_status.setText("Cancelling…")

    def _on_job_line(self, line: str) -> None:
        if self.job_kind == "evaluate":
            return
        # the log shows our own stages and errors; library chatter (progress bars, warnings) stays in the tail
        if line.startswith("export: "):
            self.export_status.setText(line[len("export: "):])
            self.export_log.appendPlainText(line[len("export: "):])
        elif line.startswith("error: "):
            self.export_log.appendPlainText(line)

    def _on_job_event(self, event: dict) -> None:
        if self.job_kind == "evaluate" and event.get("type") == "progress":
            total = int(event.get("total") or 0)
            self.eval_progress.setRange(0, max(total, 1))
            self.eval_progress.setValue(int(event.get("done") or 0))

    def _on_job_finished(self, job: StudioChild, code: int) -> None:
        if job is not self.job:
            return
        kind = self.job_kind
        self.job, self.job_kind = None, None
        if kind == "evaluate":
            self._evaluation_finished(job, code)
        else:
            self._export_finished(kind or "", job, code)
        self._update_buttons()

    # ---------------------------------------------------------------------------------------------- evaluate
    def evaluate(self) -> None:
        if self.job is not None:
            return
        path = self._check_run_dir()
        if path is None:
            return
        self.banner.clear()
        self.tabs.setCurrentIndex(1)
        self.eval_progress.setRange(0, 0)
        self.eval_progress.show()
        self.eval_summary.setText("Evaluating: loading the model and the eval split…")
        self._start_job("evaluate", ["evaluate", str(path), "--from-app", "--limit", str(self.eval_limit_spin.value()),
                                     "--max-new-tokens", str(self.eval_tokens_spin.value())])

    def _evaluation_finished(self, job: StudioChild, code: int) -> None:
        self.eval_progress.hide()
        if code == 0:
            self.show_evaluation()
            return
        if code == 130:
            self.show_evaluation()
            self.banner.show_message("info", "The evaluation was cancelled; nothing was written.")
            return
        failed = next((e for e in reversed(job.events) if e.get("type") == "failed"), None)
        message = str(failed.get("message")) if failed else (_last_line(job.tail()) or f"exit code {code}")
        message = message.removeprefix("error: ")
        self.show_evaluation()
        self.banner.show_message("error", message, "The evaluation failed.")

    def show_evaluation(self) -> None:
        """Fill the table from the run folder's evaluation.jsonl / evaluation.json (if any)."""
        from core.evaluate import read_evaluation

        rows: list[dict] = []
        summary = None
        if self.run_dir:
            try:
                rows, summary = read_evaluation(Path(self.run_dir).expanduser())
            except (OSError, ValueError) as exc:
                self.eval_summary.setText(f"The saved evaluation cannot be read: {exc}")
                rows, summary = [], None
        table = self.eval_table
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            loss = row.get("tuned_loss")
            base_loss = row.get("base_loss")
            values = [row.get("prompt", ""), row.get("reference", ""), row.get("base", ""), row.get("tuned", ""),
                      f"{loss:.3f}" if isinstance(loss, (int, float)) else "–"]
            for c, value in enumerate(values):
                item = QTableWidgetItem(str(value).strip())
                item.setToolTip(str(value)[:2000])
                if c == 0:
                    item.setFont(mono_font())
                if c == 4 and isinstance(base_loss, (int, float)):
                    item.setToolTip(f"tuned loss {values[4]} · base loss {base_loss:.3f}")
                table.setItem(r, c, item)
        table.resizeRowsToContents()
        for r in range(table.rowCount()):
            table.setRowHeight(r, min(table.rowHeight(r), 160))
        if summary is None:
            if self.job_kind != "evaluate":
                self.eval_summary.setText("No evaluation yet. Evaluate answers the run's eval split (or sampled "
                                          "training rows) with base and tuned and computes eval loss and perplexity.")
            return
        self.eval_summary.setText(self.summary_text(summary))

    @staticmethod
    def summary_text(summary: dict) -> str:
        def num(value: object, fmt: str = ".4f") -> str:
            return format(value, fmt) if isinstance(value, (int, float)) else "–"

        text = (f"<b>Eval loss</b> tuned {num(summary.get('eval_loss'))} · base {num(summary.get('base_eval_loss'))}"
                f" &nbsp;&nbsp; <b>Perplexity</b> tuned {num(summary.get('perplexity'), '.3g')} · base "
                f"{num(summary.get('base_perplexity'), '.3g')} &nbsp;&nbsp; {summary.get('rows', 0)} rows "
                f"({html.escape(str(summary.get('source', '')))}), {summary.get('supervised_tokens', 0)} supervised "
                f"tokens, {num(summary.get('seconds'), '.1f')} s on {html.escape(str(summary.get('device', '')))}")
        notes = summary.get("notes") or []
        if notes:
            text += "<br><i>" + html.escape("; ".join(map(str, notes))) + "</i>"
        return text

    # ---------------------------------------------------------------------------------------------- export
    def export_dialog(self, kind: str) -> None:
        """Ask for a destination folder, then export (GGUF without a converter explains what is needed)."""
        if kind == "gguf":
            from core.gguf_convert import find_converter, missing_converter_message

            if find_converter() is None:  # the package is part of the install; a broken one is explained
                self.export_log.clear()
                self._show_export_result("warning", missing_converter_message(), "GGUF export needs llama.cpp's "
                                         "converter.", None)
                return
        if self._check_run_dir() is None:
            return
        if self.choose_folder is not None:
            dest = self.choose_folder(kind)
        else:
            start = str(Path(self.run_dir).expanduser().resolve().parent)
            dest = QFileDialog.getExistingDirectory(self, f"Export the {kind} into…", start)
        if dest:
            self.export(kind, self.destination_for(kind, dest))

    def destination_for(self, kind: str, chosen: str | Path) -> str:
        """An empty (or new) folder is used as it is; a folder with files gets a new ``<run>-<kind>`` sub-folder."""
        folder = Path(chosen).expanduser()
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return str(folder)
        name = f"{Path(self.run_dir).name}-{kind}"
        target, n = folder / name, 2
        while target.exists():
            target, n = folder / f"{name}-{n}", n + 1
        return str(target)

    def export(self, kind: str, dest: str | Path) -> bool:
        """Run ``sft-studio export RUN --<kind> DEST --json`` as a child; False when it cannot start now."""
        if self.job is not None or not str(dest):
            return False
        path = self._check_run_dir()
        if path is None:
            return False
        self.tabs.setCurrentIndex(2)
        self.export_banner.clear()
        self.open_folder_button.hide()
        self.export_log.clear()
        what = {"adapter": "the adapter", "merged": "the merged model", "gguf": "GGUF", "hub": "to the Hub",
                "script": "the training script"}[kind]
        self.export_log.appendPlainText(f"Exporting {what} → {dest}")
        self.export_status.setText("Starting…")
        self.export_busy.set_busy(True)
        args = ["export", str(path), f"--{kind}", str(dest), "--json"]
        if kind == "gguf":
            args += ["--gguf-type", str(self.gguf_type_combo.currentData())]
        if kind == "hub" and self.hub_public_check.isChecked():
            args.append("--public")
        self._start_job(kind, args)
        return True

    def _export_finished(self, kind: str, job: StudioChild, code: int) -> None:
        self.export_busy.set_busy(False)
        self.export_status.setText("")
        if code == 0:
            try:
                results = json.loads("\n".join(job.stdout_lines))
            except ValueError:
                results = []
            result = results[0] if results else {}
            where = str(result.get("path", ""))
            notes = [str(n) for n in result.get("notes", [])]
            check = result.get("max_abs_diff")
            detail = f"{len(result.get('files', []))} files"
            if isinstance(check, (int, float)):
                detail += f"; verified by reloading (max |Δlogit| {check:.2g})"
            text = f"{where}\n{detail}" + ("".join(f"\n· {n}" for n in notes) if notes else "")
            parity_text, parity_ok = describe_parity(result.get("parity"))
            if parity_text:
                text += "\n\n" + parity_text
            commands = result.get("commands") or []
            if commands:
                text += "\n\nRun it locally:" + "".join(f"\n  {c.get('tool')}: {c.get('command')}" for c in commands
                                                         if isinstance(c, dict))
            self.last_export_path = where if kind != "hub" else None
            self.last_export_result = result
            self._show_export_result("info" if parity_ok else "warning", text,
                                     "Exported." if parity_ok else "Exported, but it will not be prompted as trained:",
                                     self.last_export_path)
            return
        errors = [line.removeprefix("error: ") for line in job.stderr_tail if line.startswith("error: ")]
        message = "\n".join(errors) or job.tail() or f"exit code {code}"
        title = "Export cancelled; nothing was kept." if code in (-1, 9, 137) and not errors else "Export failed."
        self._show_export_result("error", message, title, None)

    def _show_export_result(self, kind: str, text: str, title: str, folder: str | None) -> None:
        self.tabs.setCurrentIndex(2)
        self.export_banner.show_message(kind, text, title)
        self.open_folder_button.setVisible(folder is not None)
        self._fit_banner()
        QTimer.singleShot(0, self._fit_banner)

    def _fit_banner(self) -> None:
        """A word-wrapped label's height is not passed up through the tab widget's layouts: size it ourselves so
        that long messages (the llama.cpp instructions) are shown whole."""
        banner = self.export_banner
        if not banner.isVisible():
            banner.setMinimumHeight(0)
            return
        label_width = max(banner.label.width(), 300)
        margins = banner.layout().contentsMargins()
        banner.setMinimumHeight(banner.label.heightForWidth(label_width) + margins.top() + margins.bottom() + 2)

    def resizeEvent(self, event) -> None:  # noqa: ANN001
        super().resizeEvent(event)
        if hasattr(self, "export_banner"):
            QTimer.singleShot(0, self._fit_banner)

    def open_export_folder(self) -> None:
        if self.last_export_path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.last_export_path))

    # ---------------------------------------------------------------------------------------------- closing
    def shutdown(self) -> None:
        """The app is closing: end the chat worker and any evaluate/export child."""
        if self.chat is not None:
            chat = self.chat
            chat._quitting = True  # noqa: SLF001 - marks the exit as expected
            chat.quit()
        if self.job is not None:
            job = self.job
            if self.job_kind == "evaluate":
                job.write_line("stop")
                job.close_stdin()
                if not job.wait(5000):
                    job.kill()
            else:
                job.kill()
            job.wait(5000)

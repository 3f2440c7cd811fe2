"""Template: the chat template's source, the selected row rendered through it, and the template doctor."""

from __future__ import annotations

import difflib
import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.session import StudioSession
from app.views.highlighters import DiffHighlighter, JinjaHighlighter
from app.views.style import Banner, is_dark, mono_font
from app.workers.tasks import LoadedRun, RowView
from core.templates import BUILTIN_TEMPLATES

MODEL_OWN = "model's own"
FROM_FILE = "from a .jinja file…"

METHOD_TEXT = {
    "markers": "The template marks assistant answers with <code>{% generation %}</code> blocks. transformers "
               "returns the assistant mask from them, exactly as TRL does with <code>assistant_only_loss</code>.",
    "trl-patched": "The template has no <code>{% generation %}</code> markers, but TRL ships a training version of "
                   "this exact template. Training uses the patched copy (the diff below): it adds the markers and can "
                   "render some turns differently (Qwen3 keeps every answer's reasoning block); Training vs inference "
                   "shows what that means for the selected row.",
    "render-diff": "The template has no <code>{% generation %}</code> markers and TRL has no patched version of it. "
                   "The studio finds each assistant turn by rendering the conversation up to that turn with and "
                   "without it, and checks for every row that the template is prefix-preserving; rows where it is "
                   "not are read by full-render search (below), never mis-masked.",
    "render-search": "The template reorders or rewrites earlier turns (Mistral v0.3 moves the system prompt into the "
                     "last user turn), so each answer is located in the full rendering: the row is rendered again with "
                     "that answer replaced by a sentinel, and only the answer's own characters may change. Rows where "
                     "that is ambiguous are refused (reported), never mis-masked.",
}


def template_diff(original: str, patched: str) -> str:
    return "".join(difflib.unified_diff(
        original.splitlines(keepends=True), patched.splitlines(keepends=True),
        fromfile="model's template", tofile="training template (TRL patch)", n=2,
    ))


class TemplatePage(QWidget):
    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("TemplatePage")
        self._updating = False

        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("Hub id, model folder, .gguf file, or bundled:SmolLM2-135M-Instruct")
        self.model_edit.setToolTip("The tokenizer and the model's own chat template come from here.")
        self.model_apply = QPushButton("Use model")
        self.model_browse = QPushButton("Folder…")
        self.template_combo = QComboBox()
        self.template_combo.addItems([MODEL_OWN, *BUILTIN_TEMPLATES, FROM_FILE])
        self.template_combo.setToolTip("null keeps the model's own template; a built-in or a .jinja file replaces it")
        header = QHBoxLayout()
        header.addWidget(QLabel("Model"))
        header.addWidget(self.model_edit, 1)
        header.addWidget(self.model_apply)
        header.addWidget(self.model_browse)
        header.addSpacing(16)
        header.addWidget(QLabel("Chat template"))
        header.addWidget(self.template_combo)

        self.banner = Banner()
        self.source_label = QLabel("")
        self.source = QPlainTextEdit()
        self.source.setObjectName("templateSource")
        self.source.setReadOnly(True)
        self.source.setFont(mono_font())
        self.source.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.source.setPlaceholderText("No template loaded. Pick a built-in above, or a model that has one.")
        self.highlighter = JinjaHighlighter(self.source.document())

        self.doctor = QLabel("")
        self.doctor.setObjectName("doctor")
        self.doctor.setWordWrap(True)
        self.doctor.setTextFormat(Qt.TextFormat.RichText)
        self.doctor.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.parity = QLabel("")
        self.parity.setObjectName("parity")
        self.parity.setWordWrap(True)
        self.parity.setTextFormat(Qt.TextFormat.RichText)
        self.diff = QPlainTextEdit()
        self.diff.setObjectName("templateDiff")
        self.diff.setReadOnly(True)
        self.diff.setFont(mono_font())
        self.diff_highlighter = DiffHighlighter(self.diff.document())
        self.diff_box = QGroupBox("The patch TRL applies for training")
        QVBoxLayout(self.diff_box).addWidget(self.diff)
        self.diff_box.hide()
        self.rendered = QTextEdit()
        self.rendered.setObjectName("renderedRow")
        self.rendered.setReadOnly(True)
        self.rendered.setFont(mono_font())
        self.rendered.setPlaceholderText("The selected row appears here once a template is available.")
        self.rendered_box = QGroupBox("Selected row rendered (special tokens boxed)")
        QVBoxLayout(self.rendered_box).addWidget(self.rendered)
        # what the model trains on next to what it sees at inference (Qwen3 drops earlier reasoning, Mistral v0.3
        # moves the system prompt, ...): shown side by side with the difference in words
        self.inference_note = QLabel("")
        self.inference_note.setObjectName("inferenceNote")
        self.inference_note.setWordWrap(True)
        self.inference_note.setTextFormat(Qt.TextFormat.RichText)
        self.training_text = QPlainTextEdit()
        self.inference_text = QPlainTextEdit()
        for view, tip in ((self.training_text, "The conversation as training renders it (the loss is on its answers)"),
                          (self.inference_text, "The prompt the model gets at inference before it writes the final "
                                                "answer (the model's own template, with the generation prompt)")):
            view.setReadOnly(True)
            view.setFont(mono_font())
            view.setToolTip(tip)
        sides = QHBoxLayout()  # two equal columns
        for title, view in (("Training", self.training_text), ("Inference, before the last answer",
                                                                self.inference_text)):
            view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
            column = QVBoxLayout()
            heading = QLabel(f"<b>{title}</b>")
            heading.setWordWrap(True)  # a long heading must not claim the width of the other column
            heading.setToolTip(view.toolTip())
            column.addWidget(heading)
            column.addWidget(view, 1)
            sides.addLayout(column, 1)
        self.inference_box = QGroupBox("Training vs inference")
        ib = QVBoxLayout(self.inference_box)
        ib.addWidget(self.inference_note)
        ib.addLayout(sides, 1)
        self.inference_box.hide()

        doctor_box = QGroupBox("Template doctor")
        doctor_layout = QVBoxLayout(doctor_box)
        doctor_layout.addWidget(self.doctor)
        doctor_layout.addWidget(self.parity)
        left = QGroupBox("Template source")
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.source_label)
        left_layout.addWidget(self.source, 1)
        right_split = QSplitter(Qt.Orientation.Vertical)
        right_split.addWidget(self.diff_box)
        right_split.addWidget(self.rendered_box)
        right_split.addWidget(self.inference_box)
        right_split.setStretchFactor(0, 1)
        right_split.setStretchFactor(1, 2)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(doctor_box)
        right_layout.addWidget(right_split, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(8)
        layout.addWidget(QLabel("<h2 style='margin:0'>Template</h2>"))
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)

        self.model_apply.clicked.connect(self._apply_model)
        self.model_edit.returnPressed.connect(self._apply_model)
        self.model_browse.clicked.connect(self._browse_model)
        self.template_combo.currentTextChanged.connect(self._on_template_chosen)
        session.config_changed.connect(self._sync_from_config)
        session.load_started.connect(lambda: self.doctor.setText("<i>Loading the tokenizer and template…</i>"))
        session.run_loaded.connect(self._on_run_loaded)
        session.load_failed.connect(self._on_load_failed)
        session.row_built.connect(self._on_row_built)
        self._sync_from_config()

    # -- user actions -----------------------------------------------------------------------------------
    def _apply_model(self) -> None:
        text = self.model_edit.text().strip()
        if text:
            self.session.update_config(model__name_or_path=text)

    def _browse_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder (with config.json and tokenizer files)")
        if path:
            self.model_edit.setText(path)
            self._apply_model()

    def _on_template_chosen(self, choice: str) -> None:
        if self._updating:
            return
        if choice == FROM_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Chat template", "", "Jinja templates (*.jinja *.j2 *.txt)")
            if not path:
                self._sync_from_config()
                return
            value: str | None = path
        else:
            value = None if choice == MODEL_OWN else choice
        self.session.update_config(model__chat_template=value)

    # -- session → widgets ------------------------------------------------------------------------------
    def _sync_from_config(self) -> None:
        model = self.session.config.model
        self._updating = True
        self.model_edit.setText(model.name_or_path)
        spec = model.chat_template
        if spec is None or spec == "":
            self.template_combo.setCurrentText(MODEL_OWN)
        elif spec in BUILTIN_TEMPLATES:
            self.template_combo.setCurrentText(spec)
        else:
            if self.template_combo.findText(spec) < 0:
                self.template_combo.insertItem(self.template_combo.count() - 1, spec)
            self.template_combo.setCurrentText(spec)
        self._updating = False

    def _on_load_failed(self, message: str) -> None:
        self.banner.show_message("error", message, "Nothing loaded:")
        self.doctor.setText("")
        self.parity.setText("")

    def _on_run_loaded(self, loaded: LoadedRun) -> None:
        run = loaded.run
        self.diff_box.hide()
        self.parity.setText("")
        self.rendered.clear()
        if run is None:
            titles = {"model": "The model cannot be loaded:", "template": "No chat template:",
                      "format": "The data format does not fit:"}
            message = loaded.error or ""
            if loaded.error_kind == "template":
                message += "\nPick a built-in template above to go on."
            self.banner.show_message("error", message, titles.get(loaded.error_kind or "", "Problem:"))
            self.source.setPlainText("")
            self.source_label.setText("")
            self.doctor.setText("")
            return
        notes = list(run.notes)
        if notes:
            self.banner.show_message("warning", "\n".join(notes), "Note:")
        else:
            self.banner.clear()
        template = run.template
        if template is None:
            self.source.setPlainText("")
            self.source_label.setText("No chat template: plain text and text prompt/completion rows need none.")
            self.doctor.setText("This dataset does not use a chat template.")
            return
        self.source.setPlainText(template.text)
        where = {"model": "the model's own template", "builtin": f"built-in template '{template.name}'",
                 "file": f"file {template.name}"}.get(template.source, template.name)
        markers = "has" if template.has_markers else "has no"
        self.source_label.setText(f"{where} · {len(template.text)} characters · {markers} "
                                  "{% generation %} markers")
        self._show_doctor(loaded)

    def _show_doctor(self, loaded: LoadedRun) -> None:
        run = loaded.run
        assert run is not None and run.template is not None
        lines = []
        if run.dataset.format == "text":
            lines.append("Plain-text rows are trained on every token; the template is not used.")
        elif loaded.training is not None:
            method = loaded.training.method
            lines.append(f"<b>Assistant-only loss: {html.escape(method)}.</b> {METHOD_TEXT.get(method, '')}")
            if method == "trl-patched":
                self.diff.setPlainText(template_diff(run.template.text, loaded.training.text))
                self.diff_box.show()
        elif loaded.training_error:
            lines.append(f"<b>Assistant-only loss is not possible:</b> {html.escape(loaded.training_error)}")
        lines.append(f"train_on is <b>{html.escape(self.session.config.data.train_on)}</b> "
                     "(change it on the Tokens page).")
        self.doctor.setText("<br>".join(lines))

    def _on_row_built(self, view: RowView) -> None:
        built = view.result.built
        dark = is_dark()
        ok = "#8fdc9f" if dark else "#1f7a3a"
        bad = "#ff7b72" if dark else "#c62828"
        differs = view.inference is not None and not view.inference[2].startswith(
            "At inference the model sees the same text")
        if view.parity_checked and differs and not view.parity:
            warn = "#ffb86b" if dark else "#a35200"
            self.parity.setText(f"<span style='color:{warn}'><b>Parity (row {view.row}):</b> the model's own template "
                                "is prefix-consistent, but training renders this row differently from what the model "
                                "sees at inference: see Training vs inference below.</span>")
        elif view.parity_checked:
            if view.parity:
                self.parity.setText(f"<span style='color:{bad}'><b>Parity (row {view.row}):</b> "
                                    f"{html.escape(view.parity)}</span>")
            else:
                self.parity.setText(f"<span style='color:{ok}'><b>Parity (row {view.row}):</b> ✓ the prompt the "
                                    "model sees at inference is a token-exact prefix of the training tokens.</span>")
        else:
            self.parity.setText("Parity: checked for conversations only.")
        self._show_inference(view)
        self.rendered_box.setTitle(f"Row {view.row} rendered (special tokens boxed)")
        self.rendered.clear()
        if built is None:
            errors = "; ".join(p.message for p in view.result.problems) or "not built"
            self.rendered.setPlainText(f"Row {view.row} cannot be rendered: {errors}")
            return
        self._render_text(built)

    def _show_inference(self, view: RowView) -> None:
        """Training vs inference for this row: side by side, with the difference in words (a warning colour when
        the model will see something else at inference than it trained with)."""
        if view.inference is None:
            self.inference_box.hide()
            return
        training, inference, note = view.inference
        same = note.startswith("At inference the model sees the same text")
        dark = is_dark()
        colour = ("#8fdc9f" if dark else "#1f7a3a") if same else ("#ffb86b" if dark else "#a35200")
        self.inference_note.setText(f"<span style='color:{colour}'><b>Row {view.row}:</b> {html.escape(note)}</span>")
        self.training_text.setPlainText(training)
        self.inference_text.setPlainText(inference)
        self.inference_box.setTitle("Training vs inference" + ("" if same else " — they differ"))
        self.inference_box.show()

    def _render_text(self, built) -> None:  # noqa: ANN001 - BuiltExample
        dark = is_dark()
        plain = QTextCharFormat()
        special = QTextCharFormat()
        special.setBackground(QColor("#5a4a12" if dark else "#fde9a8"))
        special.setForeground(QColor("#ffd866" if dark else "#7a1fa2"))
        special.setFontWeight(700)
        text = built.text
        spans = sorted((t.start, t.end) for t in built.tokens if t.special and t.end > t.start)
        cursor = QTextCursor(self.rendered.document())
        cursor.beginEditBlock()
        pos = 0
        for s, e in spans:
            if s < pos:
                continue
            cursor.insertText(text[pos:s], plain)
            cursor.insertText(text[s:e], special)
            pos = e
        cursor.insertText(text[pos:], plain)
        cursor.endEditBlock()
        self.rendered.moveCursor(QTextCursor.MoveOperation.Start)

"""Tokens & masks: every token of the selected row coloured by what training does with it."""

from __future__ import annotations

import html

from PySide6.QtCore import QEvent, QItemSelectionModel, QObject, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.models.next_token_model import NextTokenModel
from app.session import StudioSession
from app.views.style import CATEGORIES, LEGEND_ORDER, Banner, category_color, is_dark, token_category
from app.views.token_view import TokenTextView
from app.workers.tasks import RowView
from core.masks import TRAIN_ON_CHOICES, BuiltExample

METHOD_WORDS = {
    "all": "every token carries loss",
    "completion": "loss only after the prompt",
    "markers": "assistant tokens from the template's {% generation %} markers",
    "trl-patched": "assistant tokens from TRL's patched training template",
    "render-diff": "assistant tokens found by rendering each turn (render-diff)",
}

# (key, Alt held) -> row step
ROW_KEYS = {
    (Qt.Key.Key_PageUp, False): -1,
    (Qt.Key.Key_PageDown, False): 1,
    (Qt.Key.Key_Left, True): -1,
    (Qt.Key.Key_Right, True): 1,
}


class TokensPage(QWidget):
    def __init__(self, session: StudioSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setObjectName("TokensPage")

        # controls -------------------------------------------------------------------------------------
        self.row_spin = QSpinBox()
        self.row_spin.setRange(0, 0)
        self.row_spin.setKeyboardTracking(False)
        self.row_spin.setToolTip("Row of the dataset (0-based). PgUp/PgDn or Alt+←/→ step through rows.")
        self.prev_button = QPushButton("◀ Prev")
        self.next_button = QPushButton("Next ▶")
        self.prev_button.setToolTip("Previous row (PgUp, Alt+Left)")
        self.next_button.setToolTip("Next row (PgDn, Alt+Right)")
        self.row_total = QLabel("of 0")
        self.train_on_combo = QComboBox()
        self.train_on_combo.addItems(list(TRAIN_ON_CHOICES))
        self.train_on_combo.setToolTip(
            "Which tokens carry the loss: all, only the completion, only assistant turns, or auto "
            "(completion for prompt/completion rows, assistant for conversations, all for plain text)."
        )
        self.max_length_spin = QSpinBox()
        self.max_length_spin.setRange(16, 1_048_576)
        self.max_length_spin.setSingleStep(64)
        self.max_length_spin.setKeyboardTracking(False)
        self.max_length_spin.setToolTip("Longest example in tokens; tokens beyond it are cut off.")

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Row"))
        controls.addWidget(self.row_spin)
        controls.addWidget(self.row_total)
        controls.addWidget(self.prev_button)
        controls.addWidget(self.next_button)
        controls.addSpacing(18)
        controls.addWidget(QLabel("Train on"))
        controls.addWidget(self.train_on_combo)
        controls.addSpacing(12)
        controls.addWidget(QLabel("max_length"))
        controls.addWidget(self.max_length_spin)
        controls.addStretch(1)

        self.banner = Banner()
        self.counts = QLabel("No row built yet.")
        self.counts.setObjectName("counts")
        self.counts.setWordWrap(True)
        self.counts.setTextFormat(Qt.TextFormat.RichText)
        self.legend = QLabel()
        self.legend.setObjectName("legend")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)

        self.view = TokenTextView()
        self.view.setObjectName("tokenView")
        self.token_info = QLabel("Hover a token for its id, label, position, role and why it is (not) trained; "
                                 "click it to find it in the table below.")
        self.token_info.setWordWrap(True)
        self.token_info.setTextFormat(Qt.TextFormat.RichText)

        self.next_model = NextTokenModel(self)
        self.next_table = QTableView()
        self.next_table.setModel(self.next_model)
        self.next_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.next_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.next_table.verticalHeader().hide()
        self.next_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.next_table.verticalHeader().setDefaultSectionSize(22)
        header = self.next_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(2, 160)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(4, 200)
        next_help = QLabel(
            "<b>Next-token view.</b> At position <i>i</i> the model reads tokens 0…<i>i</i> and is scored on "
            "predicting token <i>i</i>+1 — labels are shifted by one inside the model. A row is trained when "
            "the target's label is not −100. The first token is never a target."
        )
        next_help.setWordWrap(True)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.view, 1)
        top_layout.addWidget(self.token_info)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(next_help)
        bottom_layout.addWidget(self.next_table, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.setSpacing(8)
        title = QLabel("<h2 style='margin:0'>Tokens &amp; masks</h2>")
        layout.addWidget(title)
        layout.addLayout(controls)
        layout.addWidget(self.banner)
        layout.addWidget(self.counts)
        layout.addWidget(self.legend)
        layout.addWidget(splitter, 1)
        self._update_legend(None)

        # wiring ---------------------------------------------------------------------------------------
        self.row_spin.valueChanged.connect(self.session.set_row)
        self.prev_button.clicked.connect(lambda: self.session.step_row(-1))
        self.next_button.clicked.connect(lambda: self.session.step_row(1))
        self.train_on_combo.currentTextChanged.connect(lambda v: self.session.set_masking(train_on=v))
        self.max_length_spin.valueChanged.connect(lambda v: self.session.set_masking(max_length=v))
        for widget in (self.view, self.next_table, self.row_spin, self.train_on_combo, self.max_length_spin):
            widget.installEventFilter(self)
        self.view.token_clicked.connect(self._on_token_clicked)
        self.next_table.clicked.connect(lambda idx: self.view.select_token(idx.row() + 1))
        session.config_changed.connect(self._sync_controls)
        session.run_loaded.connect(self._on_run_loaded)
        session.load_failed.connect(self._on_load_failed)
        session.load_started.connect(self._on_load_started)
        session.row_changed.connect(self._on_row_changed)
        session.row_built.connect(self._on_row_built)
        session.row_failed.connect(lambda m: self.banner.show_message("error", m, "This row cannot be built:"))
        self._sync_controls()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """PgUp/PgDn and Alt+←/→ step through rows from anywhere on the page (the text view would scroll)."""
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            delta = ROW_KEYS.get((event.key(), bool(event.modifiers() & Qt.KeyboardModifier.AltModifier)))
            if delta is not None:
                self.session.step_row(delta)
                return True
        return super().eventFilter(watched, event)

    # -- session → widgets ------------------------------------------------------------------------------
    def _sync_controls(self) -> None:
        data = self.session.config.data
        for widget, value in ((self.train_on_combo, data.train_on), (self.max_length_spin, data.max_length)):
            widget.blockSignals(True)
            if isinstance(widget, QComboBox):
                widget.setCurrentText(str(value))
            else:
                widget.setValue(int(value))
            widget.blockSignals(False)

    def _on_load_started(self) -> None:
        if self.view.built is None:
            self.counts.setText("Loading the dataset and tokenizer…")

    def _on_run_loaded(self, loaded) -> None:  # noqa: ANN001 - LoadedRun
        count = self.session.row_count
        self.row_spin.blockSignals(True)
        self.row_spin.setRange(0, max(0, count - 1))
        self.row_spin.setValue(self.session.row)
        self.row_spin.blockSignals(False)
        self.row_total.setText(f"of {count}")
        if loaded.run is None:
            self._show_nothing(loaded.error or "not loaded")
        else:
            self.banner.clear()

    def _on_load_failed(self, message: str) -> None:
        self._show_nothing(message)

    def _show_nothing(self, message: str) -> None:
        self.banner.show_message("error", message, "Nothing to show:")
        self.view.set_example(None)
        self.next_model.set_example(None)
        self.counts.setText("")
        self._update_legend(None)

    def _on_row_changed(self, row: int) -> None:
        self.row_spin.blockSignals(True)
        self.row_spin.setValue(row)
        self.row_spin.blockSignals(False)

    def _on_row_built(self, view: RowView) -> None:
        result = view.result
        built = result.built
        self._on_row_changed(view.row)
        messages: list[tuple[str, str]] = []
        errors = [p for p in result.problems if p.severity == "error"]
        if errors:
            messages.append(("error", "\n".join(str(p) for p in errors)))
        elif built is not None and built.dropped:
            messages.append(("warning", f"This row will not be trained: {built.dropped}"))
        if built is not None and built.eos_lost:
            messages.append(("warning", "max_length cuts off the end-of-turn token of a trained answer: "
                                        "the model does not learn to stop here."))
        if built is not None and built.notes:
            messages.append(("info", "\n".join(built.notes)))
        if messages:
            kind = next(k for k in ("error", "warning", "info") if any(m[0] == k for m in messages))
            self.banner.show_message(kind, "\n".join(m[1] for m in messages))
        else:
            self.banner.clear()
        self.view.set_example(built)
        self.next_model.set_example(built)
        self._update_counts(view, built)
        self._update_legend(built)

    def _update_counts(self, view: RowView, built: BuiltExample | None) -> None:
        if built is None:
            self.counts.setText(f"Row {view.row}: not built.")
            return
        kept = len(built.input_ids)
        trained = built.n_trained
        share = 100.0 * trained / kept if kept else 0.0
        cut = (f" · <b>{built.n_tokens - kept}</b> cut off by max_length={view.max_length}"
               if built.truncated else "")
        mode = built.train_on if self.session.config.data.train_on == built.train_on else \
            f"{built.train_on} ({self.session.config.data.train_on})"
        method = METHOD_WORDS.get(built.method, built.method)
        self.counts.setText(
            f"Row {view.row} · <b>{built.n_tokens}</b> tokens · <b>{trained}</b> trained "
            f"(<b>{share:.1f}%</b> of {kept} kept){cut} · train on: <b>{html.escape(mode)}</b> · "
            f"{html.escape(method)}"
        )

    def _update_legend(self, built: BuiltExample | None) -> None:
        counts: dict[str, int] = {}
        specials = 0
        if built is not None:
            for tok in built.tokens:
                c = token_category(tok.trained, tok.reason)
                counts[c] = counts.get(c, 0) + 1
                specials += tok.special
        dark = is_dark(self.palette())
        text_color = "#f0f0f0" if dark else "#111111"
        parts = []
        for cat in LEGEND_ORDER:
            if built is not None and cat not in counts and cat not in ("trained",):
                continue
            if cat == "prompt" and "user" in counts and "prompt" not in counts:
                continue
            name = CATEGORIES[cat][0]
            style = f"background:{category_color(cat, dark).name()}; color:{text_color};"
            if cat == "trained":
                style += " text-decoration: underline;"
            if cat == "truncated":
                style += " text-decoration: line-through;"
            count = f" {counts.get(cat, 0)}" if built is not None else ""
            parts.append(f"<span style='{style}'>&nbsp;{html.escape(name)}&nbsp;</span>{count}")
        special_color = "#ffd866" if dark else "#7a1fa2"
        parts.append(f"<b style='color:{special_color}'>&lt;special&gt;</b> special token"
                     + (f" {specials}" if built is not None else ""))
        parts.append("<span style='color:gray'>↵ = line break</span>")
        self.legend.setText("Legend: " + " &nbsp; ".join(parts))

    def _on_token_clicked(self, k: int) -> None:
        self.token_info.setText(self.view.describe(k).replace("<br>", " · "))
        if k >= 1:
            index = self.next_model.index(k - 1, 0)
            self.next_table.selectionModel().select(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
            )
            self.next_table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

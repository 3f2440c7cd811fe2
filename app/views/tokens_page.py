"""Tokens & masks: every token of the selected row coloured by what training does with it."""

from __future__ import annotations

import html

from PySide6.QtCore import QEvent, QItemSelectionModel, QObject, Qt
from PySide6.QtGui import QKeyEvent, QShowEvent
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
from app.views.loss_scale import delta_color, delta_legend, delta_tip, loss_color, loss_legend, loss_tip
from app.views.style import CATEGORIES, LEGEND_ORDER, Banner, BusyBar, category_color, is_dark, token_category
from app.views.token_view import TokenOverlay, TokenTextView
from app.workers.loss_client import (
    LossJob,
    LossStore,
    ModelEntry,
    fingerprint,
    model_entries,
    session_run_config,
)
from app.workers.tasks import RowView
from core.masks import TRAIN_ON_CHOICES, BuiltExample

METHOD_WORDS = {
    "all": "every token carries loss",
    "completion": "loss only after the prompt",
    "markers": "assistant tokens from the template's {% generation %} markers",
    "trl-patched": "assistant tokens from TRL's patched training template",
    "render-diff": "assistant tokens found by rendering each turn (render-diff)",
    "render-search": "assistant tokens found in the full rendering (render-search: the template reorders turns)",
}

LOSS_WINDOW = 16  # rows scored per request, from the shown row on: the next rows then show at once


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

        # the per-token loss view: the model picker, its progress and the summary of the shown row
        self.loss_store = LossStore()
        self.loss_job: LossJob | None = None
        self._job_keys: tuple[str, ...] = ()
        self._job_rows: range = range(0)
        self._unanswered: set[tuple[tuple[str, ...], int, str]] = set()  # asked, answered without this row
        self._entries: list[ModelEntry] = model_entries([])
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("lossModel")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.setToolTip(
            "Colour the trained tokens by their loss under a model: the base, a checkpoint of the run, or the final "
            "adapter — or by how the loss changed from base to tuned. Computed in a separate process and cached "
            "in the run folder (token_losses/).")
        self.loss_busy = BusyBar()
        self.loss_status = QLabel("")
        self.loss_status.setObjectName("lossStatus")
        self.loss_cancel = QPushButton("Cancel")
        self.loss_cancel.setToolTip("Stop computing losses (the rows done so far are kept)")
        self.loss_cancel.hide()
        self.loss_cancel.clicked.connect(self.cancel_losses)
        loss_row = QHBoxLayout()
        loss_row.addWidget(QLabel("Colour by"))
        loss_row.addWidget(self.model_combo)
        loss_row.addWidget(self.loss_busy)
        loss_row.addWidget(self.loss_status, 1)
        loss_row.addWidget(self.loss_cancel)
        self._fill_models()

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
        layout.addLayout(loss_row)
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
        self.model_combo.currentIndexChanged.connect(self._on_model_picked)
        session.config_changed.connect(self._fill_models)
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
        self._fill_models()
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
        self.next_model.set_example(built)
        self._update_counts(view, built)
        self._show_losses(view)

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

    def _update_legend(self, built: BuiltExample | None, scale: str = "") -> None:
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
            if scale and cat == "trained":
                continue  # the loss scale colours them
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
        head = f"{scale}<br>Masked: " if scale else "Legend: "
        self.legend.setText(head + " &nbsp; ".join(parts))

    def _on_token_clicked(self, k: int) -> None:
        text = self.view.describe(k)
        extra = self.view.overlay.tips.get(k) if self.view.overlay is not None else None
        if extra and text.endswith("<br>" + extra):  # the loss facts keep their own lines
            text = text[: -len(extra) - 4].replace("<br>", " · ") + "<br>" + extra
        else:
            text = text.replace("<br>", " · ")
        self.token_info.setText(text)
        # a word-wrapped label inside the splitter does not grow by itself: ask for the height its text needs
        self.token_info.setMinimumHeight(self.token_info.heightForWidth(max(self.token_info.width(), 300)))
        if k >= 1:
            index = self.next_model.index(k - 1, 0)
            self.next_table.selectionModel().select(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
            )
            self.next_table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    # -- the per-token loss view ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A loss computation is running (screenshots wait for it)."""
        return self.loss_job is not None and self.loss_job.is_running()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._fill_models()  # a run may have written checkpoints since

    def _fill_models(self) -> None:
        """Offer the run's models (base, each complete checkpoint, the final adapter); keep the current choice."""
        from core.token_losses import run_models

        try:
            models = run_models(session_run_config(self.session))
        except Exception:  # noqa: BLE001 - an unusable output_dir: masks only
            models = []
        entries = model_entries(models)
        current = self.current_model()
        if [(e.id, [c.key for c in e.choices]) for e in entries] == \
                [(e.id, [c.key for c in e.choices]) for e in self._entries] and self.model_combo.count():
            return
        self._entries = entries
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in entries:
            self.model_combo.addItem(entry.text, entry.id)
        ids = [e.id for e in entries]
        self.model_combo.setCurrentIndex(ids.index(current) if current in ids else 0)
        self.model_combo.blockSignals(False)
        if current not in ids or current != "masks":
            self._show_losses()

    def current_model(self) -> str:
        """The picked entry: ``masks``, ``base``, ``checkpoint-N``, ``adapter`` or ``compare``."""
        data = self.model_combo.currentData()
        return str(data) if data else "masks"

    def model_ids(self) -> list[str]:
        return [e.id for e in self._entries]

    def set_model(self, model_id: str) -> bool:
        """Pick an entry by id (see :meth:`current_model`); False when the run does not offer it."""
        self._fill_models()
        ids = self.model_ids()
        if model_id not in ids:
            return False
        self.model_combo.setCurrentIndex(ids.index(model_id))
        return True

    def _on_model_picked(self, _index: int) -> None:
        self._unanswered.clear()
        self._show_losses()

    def _entry(self) -> ModelEntry:
        ids = self.model_ids()
        current = self.current_model()
        return self._entries[ids.index(current)] if current in ids else self._entries[0]

    def _show_losses(self, view: RowView | None = None) -> None:
        """Render the shown row: mask colours, or its trained tokens coloured by loss when a model is picked and
        its results are known (else ask the child for them and show the masks meanwhile)."""
        view = view or self.session.row_view
        built = view.result.built if view is not None else None
        entry = self._entry()
        overlay, scale, summary = None, "", ""
        if entry.mode != "masks" and view is not None and built is not None:
            overlay, scale, summary = self._loss_overlay(entry, view.row, built)
        if built is not self.view.built or overlay is not None or self.view.overlay is not None:
            self.view.set_example(built, overlay)
        self._update_legend(built, scale if overlay is not None else "")
        if summary:  # the row's mean loss, or why it has none; else the job's progress stays on show
            self.loss_status.setText(summary)
        elif entry.mode == "masks" and not self.busy:
            self.loss_status.setText("")

    def _loss_overlay(self, entry: ModelEntry, row: int, built: BuiltExample) -> tuple[TokenOverlay | None, str, str]:
        if built.dropped:
            return None, "", "This row is not trained, so it has no loss."
        config = session_run_config(self.session)
        fp = fingerprint(built)
        records = [self.loss_store.get(config.output_dir, c, row, fp) for c in entry.choices]
        if any(r is None for r in records):
            if (tuple(c.key for c in entry.choices), row, fp) in self._unanswered:
                return None, "", "The loss process scored other tokens than these (were the settings changed "
                "meanwhile?); pick the model again."
            self._request(entry, row)
            return None, "", ""
        if any("dropped" in r for r in records if r is not None):
            return None, "", "This row is not trained, so it has no loss."
        dark = is_dark(self.palette())
        overlay = TokenOverlay()
        if entry.mode == "loss":
            record = records[0]
            assert record is not None
            name = entry.choices[0].label
            for tok in record["tokens"]:
                overlay.colors[tok["index"]] = loss_color(tok["loss"], dark)
                overlay.tips[tok["index"]] = loss_tip(tok, name)
            hardest = sorted(record["tokens"], key=lambda t: -t["loss"])[:3]
            words = ", ".join(f"{html.escape(repr(t['token']))} {t['loss']:.2f}" for t in hardest)
            mean = record.get("mean_loss")
            summary = (f"mean loss <b>{mean:.3f}</b> over {record['n_trained']} trained tokens under "
                       f"<b>{html.escape(name)}</b>" + (f" · hardest: {words}" if words else "")) if mean is not None \
                else "no trained token to score"
            return overlay, loss_legend(name, dark), summary
        base, tuned = records
        assert base is not None and tuned is not None
        base_name, tuned_name = entry.choices[0].label, entry.choices[1].label
        by_index = {t["index"]: t for t in base["tokens"]}
        easier = worse = 0
        for tok in tuned["tokens"]:
            before = by_index.get(tok["index"])
            if before is None:
                continue
            delta = tok["loss"] - before["loss"]
            easier += delta < 0
            worse += delta > 0
            overlay.colors[tok["index"]] = delta_color(delta, dark)
            overlay.tips[tok["index"]] = delta_tip(before, tok, base_name, tuned_name)
        summary = "no trained token to score"
        if base.get("mean_loss") is not None and tuned.get("mean_loss") is not None:
            change = tuned["mean_loss"] - base["mean_loss"]
            summary = (f"mean loss {base['mean_loss']:.3f} → <b>{tuned['mean_loss']:.3f}</b> ({change:+.3f}) · "
                       f"<b>{easier}</b> tokens easier, <b>{worse}</b> worse")
        return overlay, delta_legend(base_name, tuned_name, dark), summary

    def _request(self, entry: ModelEntry, row: int) -> None:
        """Score ``LOSS_WINDOW`` rows from ``row`` on under the entry's models, unless a running job already will."""
        keys = tuple(c.key for c in entry.choices)
        job = self.loss_job
        if job is not None and job.is_running() and not job.cancelled and keys == self._job_keys \
                and row in self._job_rows:
            return
        if job is not None and job.is_running():
            job.cancel()  # its results still land in the store and the cache
        last = min(max(self.session.row_count, 1) - 1, row + LOSS_WINDOW - 1)
        job = LossJob(session_run_config(self.session), [c.spec for c in entry.choices], f"{row}-{last}", self)
        job.resultReceived.connect(self._on_loss_result)
        job.progressed.connect(lambda stage, done, total, j=job: self._on_loss_progress(j, stage, done, total))
        job.ended.connect(lambda code, message, j=job: self._on_loss_ended(j, code, message))
        self.loss_job, self._job_keys, self._job_rows = job, keys, range(row, last + 1)
        names = " and ".join(c.label for c in entry.choices)
        self.loss_status.setText(f"Computing the loss of rows {row}–{last} under {html.escape(names)}…")
        self.loss_busy.set_busy(True)
        self.loss_cancel.show()
        job.start()

    def cancel_losses(self) -> None:
        if self.loss_job is not None:
            self.loss_job.cancel()
            self.loss_status.setText("Cancelling…")

    def _on_loss_result(self, record: dict) -> None:
        self.loss_store.put(record)
        view = self.session.row_view
        if view is not None and record.get("row") == view.row and \
                record.get("key") in {c.key for c in self._entry().choices}:
            self._show_losses()

    def _on_loss_progress(self, job: LossJob, stage: str, done: int, total: int) -> None:
        if job is not self.loss_job or job.cancelled:
            return
        self.loss_busy.set_progress(done, total if stage.startswith("scoring") else 0)
        if self.view.overlay is not None:
            return  # the shown row is done: its summary stays, the bar tells how the next rows go
        words = {"reading the data and the tokenizer": "Reading the data…", "loading the model": "Loading the model…"}
        text = words.get(stage) or (f"{stage[0].upper()}{stage[1:]}: {done}/{total} rows" if total else stage)
        self.loss_status.setText(html.escape(text))

    def _on_loss_ended(self, job: LossJob, code: int, message: str) -> None:
        job.deleteLater()
        if job is not self.loss_job:
            return
        self.loss_job = None
        self.loss_busy.set_busy(False)
        self.loss_cancel.hide()
        if code == 130:  # the user cancelled: back to the masks, pick a model to go on
            self.model_combo.setCurrentIndex(0)
            self.loss_status.setText("Cancelled (the rows already scored are kept).")
            return
        if code != 0:
            self.loss_status.setText("")
            self.model_combo.setCurrentIndex(0)
            self.banner.show_message("error", message or f"exit code {code}", "The losses could not be computed:")
            return
        self.loss_status.setText("")
        view = self.session.row_view
        entry = self._entry()
        if entry.mode != "masks" and view is not None and view.result.built is not None and \
                tuple(c.key for c in entry.choices) == self._job_keys and view.row in self._job_rows:
            self._unanswered.add((self._job_keys, view.row, fingerprint(view.result.built)))
        self._show_losses()

    def shutdown(self) -> None:
        """Stop a running loss computation (the window is closing)."""
        job = self.loss_job
        if job is not None and job.is_running():
            job.cancel()
            if not job.child.wait(3000):
                job.child.kill()
                job.child.wait(2000)

"""Every token of one example as a coloured run of text, with a tooltip per token.

A read-only QTextEdit filled through one QTextCursor edit block: it lays out 10k+ tokens in well under a
second and scrolls smoothly. Token boundaries show as alternating shades; trained tokens are also
underlined, special tokens bold with a contrasting colour, cut-off tokens struck through — the meaning
never rests on colour alone.
"""

from __future__ import annotations

import bisect
import html
from dataclasses import dataclass, field

from PySide6.QtCore import QEvent, Signal
from PySide6.QtGui import QColor, QHelpEvent, QMouseEvent, QTextCharFormat, QTextCursor, QTextOption
from PySide6.QtWidgets import QTextEdit, QToolTip, QWidget

from app.views.loss_scale import text_on
from app.views.style import category_color, is_dark, mono_font, token_category, visible_whitespace
from core.masks import IGNORE_INDEX, REASONS, BuiltExample


@dataclass
class TokenOverlay:
    """Colours that replace a token's mask colour (the per-token loss view) and lines added to its hover text."""

    colors: dict[int, QColor] = field(default_factory=dict)
    tips: dict[int, str] = field(default_factory=dict)


class TokenTextView(QTextEdit):
    token_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setUndoRedoEnabled(False)
        self.setFont(mono_font())
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setMouseTracking(True)
        self.viewport().setMouseTracking(True)
        self._built: BuiltExample | None = None
        self._starts: list[int] = []  # document position where each token's run starts
        self.selected: int | None = None
        self.overlay: TokenOverlay | None = None

    @property
    def built(self) -> BuiltExample | None:
        return self._built

    def set_example(self, built: BuiltExample | None, overlay: TokenOverlay | None = None) -> None:
        """Show ``built``; ``overlay`` colours some tokens by something else (their loss) and adds to their hover
        text. Re-showing the same example (a new overlay) keeps the scroll position."""
        same = built is not None and built is self._built
        scroll = self.verticalScrollBar().value() if same else 0
        self._built = built
        self.overlay = overlay
        self.selected = None
        self._starts = []
        doc = self.document()
        self.clear()
        if built is None:
            return
        dark = is_dark(self.palette())
        formats: dict[tuple[str, bool, bool], QTextCharFormat] = {}
        text_color = QColor("#f0f0f0" if dark else "#111111")
        special_color = QColor("#ffd866" if dark else "#7a1fa2")

        def fmt(category: str, odd: bool, special: bool) -> QTextCharFormat:
            key = (category, odd, special)
            if key not in formats:
                f = QTextCharFormat()
                color = category_color(category, dark)
                if odd:
                    color = color.lighter(118) if dark else color.darker(110)
                f.setBackground(color)
                f.setForeground(special_color if special else text_color)
                if special:
                    f.setFontWeight(700)
                if category == "trained":
                    f.setFontUnderline(True)
                if category == "truncated":
                    f.setFontStrikeOut(True)
                formats[key] = f
            return formats[key]

        overlay_formats: dict[tuple[int, bool, bool, str], QTextCharFormat] = {}

        def overlay_fmt(color: QColor, category: str, odd: bool, special: bool) -> QTextCharFormat:
            key = (color.rgb(), odd, special, category)
            if key not in overlay_formats:
                f = QTextCharFormat(fmt(category, odd, special))
                shade = (color.lighter(112) if dark else color.darker(106)) if odd else color
                f.setBackground(shade)
                f.setForeground(text_on(shade))
                overlay_formats[key] = f
            return overlay_formats[key]

        cursor = QTextCursor(doc)
        cursor.beginEditBlock()
        pos = 0
        for k, tok in enumerate(built.tokens):
            shown = visible_whitespace(tok.text) or "∅"
            if tok.start == tok.end and not tok.text:
                shown = "∅"
            self._starts.append(pos)
            category = token_category(tok.trained, tok.reason)
            color = overlay.colors.get(k) if overlay is not None else None
            if color is not None:
                cursor.insertText(shown, overlay_fmt(color, category, bool(k % 2), tok.special))
            else:
                cursor.insertText(shown, fmt(category, bool(k % 2), tok.special))
            pos += len(shown)
        cursor.endEditBlock()
        self.moveCursor(QTextCursor.MoveOperation.Start)
        if same:
            self.verticalScrollBar().setValue(scroll)

    def token_at(self, doc_position: int) -> int | None:
        if not self._starts:
            return None
        k = bisect.bisect_right(self._starts, doc_position) - 1
        return k if 0 <= k < len(self._starts) else None

    def token_index_at_point(self, point) -> int | None:  # noqa: ANN001 - QPoint
        cursor = self.cursorForPosition(point)
        rect = self.cursorRect(cursor)
        pos = cursor.position()
        # cursorForPosition returns the nearest gap; step back when the pointer is left of it
        if point.x() < rect.x() and pos > 0:
            pos -= 1
        return self.token_at(pos)

    def describe(self, k: int) -> str:
        built = self._built
        assert built is not None
        tok = built.tokens[k]
        kept = k < len(built.labels)
        label = built.labels[k] if kept else None
        if tok.reason == "truncated":
            status = "cut off: beyond max_length, the model never sees it"
        elif tok.trained:
            status = "<b>trained</b> — the loss is computed on predicting this token"
        else:
            status = "masked — " + html.escape(REASONS.get(tok.reason or "", tok.reason or "no loss"))
        role = tok.role or "—"
        if tok.turn is not None:
            role += f" (message {tok.turn})"
        label_text = "—" if label is None else ("−100 (ignored)" if label == IGNORE_INDEX else str(label))
        extra = self.overlay.tips.get(k) if self.overlay is not None else None
        return (
            f"<b>{html.escape(repr(tok.text))}</b><br>position {k} · token id {tok.id} · label {label_text}<br>"
            f"role: {html.escape(role)}{' · special token' if tok.special else ''}<br>{status}"
        ) + (f"<br>{extra}" if extra else "")

    def viewportEvent(self, e: QEvent) -> bool:
        if e.type() == QEvent.Type.ToolTip and self._built is not None and isinstance(e, QHelpEvent):
            k = self.token_index_at_point(e.pos())
            if k is not None:
                QToolTip.showText(e.globalPos(), self.describe(k), self.viewport())
                return True
        return super().viewportEvent(e)

    def mouseReleaseEvent(self, e: QMouseEvent) -> None:
        super().mouseReleaseEvent(e)
        if self._built is None or self.textCursor().hasSelection():
            return
        k = self.token_index_at_point(e.position().toPoint())
        if k is not None:
            self.select_token(k)
            self.token_clicked.emit(k)

    def select_token(self, k: int) -> None:
        """Outline one token (as the table's selection does) without changing its colours."""
        self.selected = k
        if not self._starts:
            return
        start = self._starts[k]
        end = self._starts[k + 1] if k + 1 < len(self._starts) else self.document().characterCount() - 1
        sel = QTextEdit.ExtraSelection()
        cursor = QTextCursor(self.document())
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        sel.cursor = cursor
        f = QTextCharFormat()
        f.setBackground(self.palette().highlight())
        f.setForeground(self.palette().highlightedText())
        sel.format = f
        self.setExtraSelections([sel])
        here = QTextCursor(self.document())
        here.setPosition(start)
        self.setTextCursor(here)
        self.ensureCursorVisible()
